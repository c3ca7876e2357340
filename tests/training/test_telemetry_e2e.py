"""Telemetry driven by the real training loop: megadfm's Trainer (DeepSpeed ZeRO-0, one gloo process)
with its built-in callbacks, fed by a data source that corrupts chosen steps so a real loss jumps; a
spike event whose sample identities and replay keys rebuild that exact batch and its noise;
validation per bucket; the sinks (JSONL always, W&B offline, TensorBoard skipped with a reason).

``run_tiny_training`` is also what the dashboard test renders."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence

import pytest
import torch

from megadfm.config import CheckpointConfig, DataConfig, MegaDFMConfig, ModelConfig, TrainingConfig
from megadfm.data.batch import batch_from_documents
from megadfm.dfm.loss import dfm_loss
from megadfm.dfm.schedulers import make_scheduler
from megadfm.training.callbacks import Callback
from megadfm.training.telemetry.config import TelemetryConfig
from megadfm.training.telemetry.recorder import Telemetry
from tests.conftest import REPO
from tests.training.dist_helpers import run_distributed
from tests.training.telemetry_helpers import record

VOCAB, MASK, PAD, SEQ_LEN, MICRO_BATCH, ACCUM = 512, 500, 0, 32, 8, 2
CLEAN, NOISE = 0, 1  # dataset_index of the two sources


def document(dataset_index: int, sample: int) -> List[int]:
    """Dataset 0: arithmetic progressions over 32 token ids (learnable within a few steps); dataset 1: uniform
    random tokens over the whole vocabulary (the corruption: a shard of binary garbage in a real corpus)."""
    if dataset_index == CLEAN:
        start, stride = (sample * 7) % 32, 1 + sample % 5
        return [(start + stride * i) % 32 + 20 for i in range(SEQ_LEN)]
    g = torch.Generator().manual_seed(10_000 + sample)
    return torch.randint(1, MASK, (SEQ_LEN,), generator=g).tolist()


def make_batch(identities: Sequence[tuple]) -> Dict[str, torch.Tensor]:
    """A batch from (dataset_index, dataset_sample_index) pairs, as a blended loader would build it."""
    batch = batch_from_documents([document(d, s) for d, s in identities], SEQ_LEN, PAD,
                                 sample_index=[d * 1_000_000 + s for d, s in identities])
    batch["dataset_index"] = torch.tensor([d for d, _ in identities])
    batch["dataset_sample_index"] = torch.tensor([s for _, s in identities])
    return batch


class CorruptibleData:
    """The trainer's data interface (TrainingData's), serving clean batches except on ``corrupt_steps``."""

    def __init__(self, corrupt_steps: Sequence[int], consumed_samples: int):
        assert consumed_samples == 0, "this source does not resume"
        self.corrupt_steps = set(corrupt_steps)
        self.calls = 0

    def next_train_batch(self, device) -> Dict[str, torch.Tensor]:
        step, micro = self.calls // ACCUM + 1, self.calls % ACCUM
        self.calls += 1
        source = NOISE if step in self.corrupt_steps else CLEAN
        return make_batch([(source, (step * ACCUM + micro) * MICRO_BATCH + i) for i in range(MICRO_BATCH)])

    def valid_batches(self, device, max_batches: int) -> Iterator[Dict[str, torch.Tensor]]:
        for b in range(max_batches):
            yield make_batch([(CLEAN, 5000 + b * MICRO_BATCH + i) for i in range(MICRO_BATCH)])

    def manifest(self) -> Dict[str, Any]:
        return {"source": "tests/training/test_telemetry_e2e.py CorruptibleData", "corrupt_steps": sorted(self.corrupt_steps)}


class Observer(Callback):
    """What the tests check against: each step's spike decision and LR, the batches, pre-step weights."""

    def __init__(self, snapshot_steps: Sequence[int]):
        self.snapshot_steps = set(snapshot_steps)
        self.out: Dict[str, Any] = {"batches": {}, "snapshots": {}, "decisions": {}, "lr": {}}

    def pre_step(self, trainer, state) -> None:
        if state.step in self.snapshot_steps:
            self.out["snapshots"][state.step] = {k: v.detach().clone() for k, v in trainer.module.model.state_dict().items()}

    def post_micro_batch(self, trainer, micro) -> None:
        self.out["batches"][(micro.step, micro.micro)] = micro.batch["input_ids"].clone()

    def pre_optim_step(self, trainer, state) -> None:  # runs after the built-in callbacks: the spike is judged
        self.out["decisions"][state.step] = (state.spike.action, state.spike.label)
        self.out["lr"][state.step] = state.lr


def tiny_run_config(run_dir: str, steps: int, cfg: TelemetryConfig, log_interval: int, eval_interval: int) -> MegaDFMConfig:
    return MegaDFMConfig(
        model=ModelConfig(vocab_size=VOCAB, mask_token_id=MASK, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, kernels="torch", time_embedding_dim=32,
                          max_position_embeddings=64),
        data=DataConfig(seq_len=SEQ_LEN, eod_token_id=PAD, pad_token_id=PAD),
        training=TrainingConfig(output_dir=run_dir, train_steps=steps, micro_batch_size=MICRO_BATCH, grad_accum_steps=ACCUM,
                                lr=1e-2, min_lr=1e-3, warmup_steps=5, weight_decay=0.0, grad_clip=1.0, zero_stage=0,
                                ds_config=os.path.join(REPO, "ds_configs", "cpu_zero0.json"), log_interval=log_interval,
                                eval_interval=eval_interval, eval_batches=1, seed=1234),
        checkpoint=CheckpointConfig(save_interval=0),
        telemetry=cfg)


def _train_worker(rank: int, world_size: int, run_cfg: MegaDFMConfig, corrupt_steps, snapshot_steps, extra_callbacks) -> dict:
    from megadfm.training.run import setup_logging
    from megadfm.training.trainer import Trainer

    setup_logging(rank)
    observer = Observer(snapshot_steps)
    trainer = Trainer(run_cfg, rank, world_size, callbacks=[observer, *extra_callbacks],
                      data_factory=lambda cfg, r, w, consumed: CorruptibleData(corrupt_steps, consumed))
    try:
        status = trainer.train()
    finally:
        trainer.close()
    return dict(observer.out, status=status, extra=extra_callbacks)


def run_tiny_training(run_dir: str, steps: int = 40, corrupt_steps: Sequence[int] = (), cfg: Optional[TelemetryConfig] = None,
                      log_interval: int = 5, eval_interval: int = 0, snapshot_steps: Sequence[int] = (),
                      extra_callbacks: Sequence[Callback] = (), dfm: Optional[dict] = None, **training) -> dict:
    """Train the tiny model with the real Trainer in one spawned gloo process; returns what the tests check
    against (plus the metrics.jsonl records as ``records`` / ``val``, and ``extra``: the extra callbacks as
    they were at the end of the run). ``training`` overrides TrainingConfig fields, ``dfm`` DFMConfig fields."""
    cfg = cfg or TelemetryConfig(wandb="disabled", log_spaced_low_buckets=2, spike_window=30, spike_warmup=10,
                                 spike_action="skip_step", spike_min_bucket_tokens=16)
    run_cfg = tiny_run_config(run_dir, steps, cfg, log_interval, eval_interval)
    run_cfg.training = dataclasses.replace(run_cfg.training, **training)
    run_cfg.dfm = dataclasses.replace(run_cfg.dfm, **(dfm or {}))
    (out,) = run_distributed(_train_worker, world_size=1, args=(run_cfg, list(corrupt_steps), list(snapshot_steps),
                                                                list(extra_callbacks)), timeout=600)
    assert out["status"] == 0
    lines = read_jsonl(os.path.join(run_dir, "telemetry", "metrics.jsonl"))
    out["records"] = [r for r in lines if r["kind"] == "train"]
    out["val"] = [r for r in lines if r["kind"] == "val"]
    out["run_config"] = run_cfg
    return out


@contextlib.contextmanager
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def read_jsonl(path) -> List[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_corrupted_batch_is_a_replayable_instability_spike(tmp_path):
    corrupt = 22
    run = run_tiny_training(str(tmp_path), steps=26, corrupt_steps=[corrupt], snapshot_steps=[corrupt], eval_interval=26)
    fired = {s: d for s, d in run["decisions"].items() if d[0] != "none"}
    assert fired == {corrupt: ("skip_step", "instability")}, fired
    records = run["records"]
    assert records[0]["train/loss"] > records[-1]["train/loss"] or records[-2]["train/loss"] > 0  # it trained
    assert records[-2]["train/skipped_steps"] == 1  # window 21..25 holds the skipped step

    (event,) = read_jsonl(tmp_path / "telemetry" / "spikes.jsonl")
    assert event["step"] == corrupt and event["label"] == "instability" and event["skipped"]
    assert event["ce"] > event["ce_expected"][1] and event["grad_norms"]["grad/total"] > 0
    assert event["lr"] == run["lr"][corrupt] > 0

    # replay: the identities rebuild the exact input batch; the replay keys (step, global offset) rebuild the exact
    # t and masks through the trainer's own noise function; with the pre-step weights the losses come out the same
    from megadfm.model.qwen3_dfm import Qwen3DFM
    from megadfm.training.trainer import training_noise

    run_cfg = run["run_config"]
    model = Qwen3DFM(run_cfg.model, seed=0)
    model.load_state_dict(run["snapshots"][corrupt])
    scheduler = make_scheduler(run_cfg.dfm)
    keys = {r["micro_batch"]: r for r in event["replay"]}
    for micro in range(ACCUM):
        rows = sorted((s for s in event["sequences"] if s["micro_batch"] == micro), key=lambda s: s["row"])
        batch = make_batch([(s["dataset_index"], s["dataset_sample_index"]) for s in rows])
        assert torch.equal(batch["input_ids"], run["batches"][(corrupt, micro)])
        assert batch["sample_index"].tolist() == [s["sample_index"] for s in rows]
        key = keys[micro]
        assert key["step"] == corrupt and key["micro"] == micro
        t, gen = training_noise(run_cfg, scheduler, key["step"] - 1, key["global_offset"], MICRO_BATCH, MICRO_BATCH * ACCUM,
                                torch.device("cpu"))
        assert torch.equal(t, torch.tensor([s["t"] for s in rows], dtype=t.dtype))
        with torch.no_grad(), single_thread():  # as in training (one thread), so the float sums agree
            res = dfm_loss(model, batch, t, run_cfg.dfm, scheduler, gen, pad_token_id=PAD)
        assert res.per_seq_masked_count.tolist() == [s["masked_tokens"] for s in rows]
        assert res.per_seq_unweighted_sum.tolist() == pytest.approx([s["unweighted_sum"] for s in rows], rel=1e-6)

    # validation: one line per pass, every bucket evaluated at its mid mask ratio, t from the scheduler
    (val,) = [r for r in read_jsonl(tmp_path / "telemetry" / "metrics.jsonl") if r["kind"] == "val"]
    assert val == run["val"][0] and val["step"] == 26
    meta = json.loads((tmp_path / "telemetry" / "run_meta.json").read_text())
    assert meta["bucket_edges"][0] == 0 and len(meta["buckets"]) == 12 and "PolynomialConvex" in meta["scheduler"]
    scored = 0
    for b in meta["buckets"]:
        name = b["name"]
        assert val[f"val/{name}/mask_ratio"] == pytest.approx(b["mask_ratio_mid"])
        assert val[f"val/{name}/t"] == pytest.approx(1 - b["mask_ratio_mid"])  # linear scheduler
        assert val[f"val/{name}/sequences"] == MICRO_BATCH
        if val[f"val/{name}/masked_tokens"] > 0:  # r = 0.0023 masks nothing in 8 x 32 tokens: its CE is null, not 0
            scored += 1
            assert 0 < val[f"val/{name}/ce"] < 8 and val[f"val/{name}/loss"] > 0
        else:
            assert val[f"val/{name}/ce"] is None
    assert scored >= 10 and val["val/ce"] < math.log(VOCAB)


def test_state_dict_resumes_detector_and_emas(tmp_path):
    from tests.training.test_telemetry_reduction import micro_batch

    cfg = TelemetryConfig(wandb="disabled")
    with Telemetry(cfg, str(tmp_path / "a"), log_interval=2) as tel:
        for step in range(1, 9):
            record(tel, micro_batch(step, batch_size=16))
            tel.end_step(step)
        state = json.loads(json.dumps(tel.state_dict()))  # what a checkpoint stores
    with Telemetry(cfg, str(tmp_path / "b"), log_interval=2) as fresh:
        fresh.load_state_dict(state)
        assert fresh.window.ema == tel.window.ema
        assert fresh.monitor.detector.state_dict() == tel.monitor.detector.state_dict()
        # the resumed instance continues the same EMAs as one that never stopped
        for t in (tel, fresh):
            record(t, micro_batch(9, batch_size=16))
        assert fresh.end_step(10)["train/loss_ema"] == tel.end_step(10)["train/loss_ema"]


def test_sinks_wandb_offline_tensorboard_reason_and_no_wandb_import_when_disabled(tmp_path):
    script = f"""
import json, logging, os, sys, torch
logging.basicConfig(level=logging.INFO)
from megadfm.training.telemetry.recorder import Telemetry
from megadfm.training.telemetry.config import TelemetryConfig
from tests.training.telemetry_helpers import record
from tests.training.test_telemetry_reduction import micro_batch
run = sys.argv[1]
with Telemetry(TelemetryConfig(wandb="disabled", tensorboard=True), os.path.join(run, "off"), log_interval=1) as tel:
    record(tel, micro_batch(0))
    tel.end_step(1)
assert "wandb" not in sys.modules, "wandb was imported although telemetry.wandb is disabled"
with Telemetry(TelemetryConfig(wandb="offline", wandb_project="megadfm-test"), os.path.join(run, "on"), log_interval=1) as tel:
    for step in (1, 2):
        record(tel, micro_batch(step))
        tel.end_step(step)
print("SINKS-OK")
"""
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env, cwd=REPO, timeout=180)
    assert proc.returncode == 0 and "SINKS-OK" in proc.stdout, proc.stdout + proc.stderr
    tb_available = subprocess.run([sys.executable, "-c", "import tensorboard"], capture_output=True).returncode == 0
    meta = json.loads((tmp_path / "off" / "telemetry" / "run_meta.json").read_text())
    assert meta["sinks"]["wandb"].startswith("off")
    if not tb_available:
        assert "tensorboard package is not installed" in meta["sinks"]["tensorboard"]
        assert "TensorBoard sink skipped" in proc.stderr
    # W&B wrote an offline run under RUN_DIR/wandb with the bucket metrics, no account, no network
    runs = [d for d in os.listdir(tmp_path / "on" / "wandb") if d.startswith("offline-run-")]
    assert len(runs) == 1
    logs = [f for f in os.listdir(tmp_path / "on" / "wandb" / runs[0]) if f.endswith(".wandb")]
    blob = (tmp_path / "on" / "wandb" / runs[0] / logs[0]).read_bytes()
    assert b"train/bucket_00/loss" in blob and b"train/loss_ema" in blob
    assert len(read_jsonl(tmp_path / "on" / "telemetry" / "metrics.jsonl")) == 2
