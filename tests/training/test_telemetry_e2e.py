"""Telemetry driven by a real tiny training loop: megadfm's Qwen3DFM and dfm_loss, a batch of corrupted
tokens that makes a real loss jump, a spike event whose sample identities replay that exact batch,
validation per bucket, and the sinks (JSONL always, W&B offline, TensorBoard skipped with a reason).

``run_tiny_training`` is also what the dashboard test renders."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import pytest
import torch

from megadfm.data.batch import batch_from_documents
from megadfm.dfm.config import DFMConfig
from megadfm.dfm.loss import dfm_loss
from megadfm.dfm.schedulers import make_scheduler
from megadfm.dfm.time_sampling import sample_times, step_seed
from megadfm.model.config import ModelConfig
from megadfm.model.qwen3_dfm import Qwen3DFM
from megadfm.training.grad_norms import compute_grad_norms
from megadfm.training.telemetry.legacy import Telemetry
from megadfm.training.telemetry.config import TelemetryConfig
from tests.conftest import REPO

VOCAB, MASK, PAD, SEQ_LEN, MICRO_BATCH, ACCUM = 512, 500, 0, 32, 8, 2
CLEAN, NOISE = 0, 1  # dataset_index of the two blend sources


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


def tiny_model() -> Qwen3DFM:
    cfg = ModelConfig(vocab_size=VOCAB, mask_token_id=MASK, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, kernels="torch", time_embedding_dim=32,
                      max_position_embeddings=64)
    return Qwen3DFM(cfg, seed=0)


def lr_at(step: int, steps: int, peak: float = 1e-2, warmup: int = 5) -> float:
    if step <= warmup:
        return peak * step / warmup
    return 0.1 * peak + 0.9 * peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def run_tiny_training(run_dir: str, steps: int = 40, corrupt_steps: Sequence[int] = (), cfg: Optional[TelemetryConfig] = None,
                      log_interval: int = 5, eval_interval: int = 0, snapshot_steps: Sequence[int] = ()) -> dict:
    """Train the tiny model with the engine's telemetry call sequence; returns what the tests check against.

    Runs single-threaded: on a shared 2-core machine torch's second OpenMP thread spin-waits and makes
    this tiny model ~20x slower."""
    with single_thread():
        return _run_tiny_training(run_dir, steps, corrupt_steps, cfg, log_interval, eval_interval, snapshot_steps)


@contextlib.contextmanager
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run_tiny_training(run_dir, steps, corrupt_steps, cfg, log_interval, eval_interval, snapshot_steps) -> dict:
    torch.manual_seed(0)
    cfg = cfg or TelemetryConfig(wandb="disabled", log_spaced_low_buckets=2, spike_window=30, spike_warmup=10,
                                 spike_action="skip_step", spike_min_bucket_tokens=16)
    dfm_cfg = DFMConfig()
    scheduler = make_scheduler(dfm_cfg)
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=lr_at(1, steps), weight_decay=0.0)
    tel = Telemetry(cfg, run_dir, log_interval=log_interval, grad_clip=1.0, scheduler=scheduler,
                    run_config={"test": "run_tiny_training", "steps": steps})
    out = {"batches": {}, "snapshots": {}, "decisions": {}, "records": [], "val": []}
    heldout = make_batch([(CLEAN, 5000 + i) for i in range(MICRO_BATCH)])

    def loss_at_t(t: float):
        with torch.no_grad():
            return dfm_loss(model, heldout, torch.full((MICRO_BATCH,), t), dfm_cfg, scheduler,
                            torch.Generator().manual_seed(99), pad_token_id=PAD)

    for step in range(1, steps + 1):
        started = time.perf_counter()
        if step in snapshot_steps:
            out["snapshots"][step] = copy.deepcopy(model.state_dict())
        lr = lr_at(step, steps)
        for group in opt.param_groups:
            group["lr"] = lr
        for micro in range(ACCUM):
            source = NOISE if step in corrupt_steps else CLEAN
            ids = [(source, (step * ACCUM + micro) * MICRO_BATCH + i) for i in range(MICRO_BATCH)]
            batch = make_batch(ids)
            seed = step_seed(1234, step, micro)
            t = sample_times(MICRO_BATCH, dfm_cfg, scheduler, seed=seed)
            res = dfm_loss(model, batch, t, dfm_cfg, scheduler, torch.Generator().manual_seed(seed), pad_token_id=PAD)
            (res.loss / ACCUM).backward()
            tel.record_loss_output(res, batch, replay={"seed": seed})
            out["batches"][(step, micro)] = batch["input_ids"].clone()
        tel.record_grad_norms(compute_grad_norms(model, model.parameter_group, clip=1.0))
        tokens = ACCUM * MICRO_BATCH * SEQ_LEN
        tel.record_scalars(lr=lr, tokens_per_s=tokens / (time.perf_counter() - started), mem_rss_gb=0.0)
        decision = tel.check_spike(step)
        out["decisions"][step] = (decision.action, decision.label)
        if not decision.skip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        opt.zero_grad(set_to_none=True)
        record = tel.end_step(step, force_log=step == steps)
        if record is not None:
            out["records"].append(record)
        if eval_interval and step % eval_interval == 0:
            out["val"].append(tel.log_validation(step, loss_at_t))
    tel.close()
    out["telemetry"] = tel
    return out


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
    assert event["lr"] == pytest.approx(lr_at(corrupt, 26))

    # replay: the identities rebuild the exact input batch, and the replay seed + the pre-step weights give the same losses
    model = tiny_model()
    model.load_state_dict(run["snapshots"][corrupt])
    dfm_cfg, scheduler = DFMConfig(), make_scheduler(DFMConfig())
    seeds = {r["micro_batch"]: r["seed"] for r in event["replay"]}
    for micro in range(ACCUM):
        rows = sorted((s for s in event["sequences"] if s["micro_batch"] == micro), key=lambda s: s["row"])
        batch = make_batch([(s["dataset_index"], s["dataset_sample_index"]) for s in rows])
        assert torch.equal(batch["input_ids"], run["batches"][(corrupt, micro)])
        assert batch["sample_index"].tolist() == [s["sample_index"] for s in rows]
        t = torch.tensor([s["t"] for s in rows], dtype=torch.float32)
        assert torch.equal(t, sample_times(MICRO_BATCH, dfm_cfg, scheduler, seed=seeds[micro]))
        with torch.no_grad(), single_thread():  # as in training, so the float sums are bit-identical
            res = dfm_loss(model, batch, t, dfm_cfg, scheduler, torch.Generator().manual_seed(seeds[micro]), pad_token_id=PAD)
        assert res.per_seq_unweighted_sum.tolist() == [s["unweighted_sum"] for s in rows]
        assert res.per_seq_masked_count.tolist() == [s["masked_tokens"] for s in rows]

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
            tel.record_micro_batch(**micro_batch(step, batch_size=16))
            tel.end_step(step)
        state = json.loads(json.dumps(tel.state_dict()))  # what a checkpoint stores
    with Telemetry(cfg, str(tmp_path / "b"), log_interval=2) as fresh:
        fresh.load_state_dict(state)
        assert fresh.ema == tel.ema and fresh.detector.state_dict() == tel.detector.state_dict()
        # the resumed instance continues the same EMAs as one that never stopped
        for t in (tel, fresh):
            t.record_micro_batch(**micro_batch(9, batch_size=16))
        assert fresh.end_step(10)["train/loss_ema"] == tel.end_step(10)["train/loss_ema"]


def test_sinks_wandb_offline_tensorboard_reason_and_no_wandb_import_when_disabled(tmp_path):
    script = f"""
import json, logging, os, sys, torch
logging.basicConfig(level=logging.INFO)
from megadfm.training.telemetry.legacy import Telemetry
from megadfm.training.telemetry.config import TelemetryConfig
from tests.training.test_telemetry_reduction import micro_batch
run = sys.argv[1]
with Telemetry(TelemetryConfig(wandb="disabled", tensorboard=True), os.path.join(run, "off"), log_interval=1) as tel:
    tel.record_micro_batch(**micro_batch(0))
    tel.end_step(1)
assert "wandb" not in sys.modules, "wandb was imported although telemetry.wandb is disabled"
with Telemetry(TelemetryConfig(wandb="offline", wandb_project="megadfm-test"), os.path.join(run, "on"), log_interval=1) as tel:
    for step in (1, 2):
        tel.record_micro_batch(**micro_batch(step))
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
