"""The trainer's callback protocol, seen from a callback inside the real loop: every hook, in its fixed
order, with the step's state filled in where the docs say; callback state travels in checkpoints;
duplicate names are refused; the step log's per-step all_gather is off when the step log is."""

from __future__ import annotations

import json
import os

import pytest

from megadfm.training.callbacks import Callback, CallbackList
from tests.training.test_telemetry_e2e import ACCUM, run_tiny_training


class HookRecorder(Callback):
    name = "hook_recorder"

    def __init__(self):
        self.seen = []
        self.restored = None

    def on_train_start(self, trainer): self.seen.append(("on_train_start", trainer.step))
    def pre_step(self, trainer, state): self.seen.append(("pre_step", state.step, state.loss))
    def post_forward(self, trainer, micro): self.seen.append(("post_forward", micro.step, micro.micro))
    def post_micro_batch(self, trainer, micro): self.seen.append(("post_micro_batch", micro.step, micro.micro))

    def pre_optim_step(self, trainer, state):
        self.seen.append(("pre_optim_step", state.step, state.loss is not None and state.grad_norms is not None,
                          state.spike is not None, trainer.step))

    def post_step(self, trainer, state):
        self.seen.append(("post_step", state.step, trainer.step, "tokens_per_s" in state.scalars, state.record.get("step")))

    def on_validation(self, trainer, step, record): self.seen.append(("on_validation", step, record["kind"]))

    def pre_checkpoint_publish(self, trainer, step, directory):
        self.seen.append(("pre_checkpoint_publish", step, os.path.basename(directory)))

    def on_train_end(self, trainer, status): self.seen.append(("on_train_end", status))
    def close(self, trainer): self.seen.append(("close",))

    def state_dict(self):
        return {"hooks_seen": len(self.seen)}

    def load_state_dict(self, state):
        self.restored = state


def test_hooks_run_in_order_with_the_step_state(tmp_path):
    run = run_tiny_training(str(tmp_path / "run"), steps=2, log_interval=1, eval_interval=2, extra_callbacks=[HookRecorder()])
    seen = run["extra"][0].seen
    micro = [(h, s, m) for s in (1, 2) for m in range(ACCUM) for h in ("post_forward", "post_micro_batch")]
    step1 = [("pre_step", 1, None)] + micro[:2 * ACCUM] + [("pre_optim_step", 1, True, True, 0), ("post_step", 1, 1, True, 1)]
    step2 = [("pre_step", 2, None)] + micro[2 * ACCUM:] + [
        ("pre_optim_step", 2, True, True, 1),
        ("on_validation", 2, "val"),           # the validation callback's pass, inside post_step, before later callbacks
        ("post_step", 2, 2, True, 2)]
    assert seen == [("on_train_start", 0)] + step1 + step2 + [
        ("pre_checkpoint_publish", 2, ".incomplete-step_00000002"),    # the final save, not yet published
        ("on_train_end", "done"), ("close",)]
    # the callback's state is in the checkpoint, under its name
    from megadfm.checkpoints.source import open_source

    import torch

    step_dir = open_source(str(tmp_path / "run")).path
    client = torch.load(os.path.join(step_dir, "mp_rank_00_model_states.pt"), map_location="cpu", weights_only=False)
    saved = client["callbacks"]
    assert saved["hook_recorder"] == {"hooks_seen": len(seen) - 3}  # taken as the final save began
    assert set(saved["telemetry"]) >= {"ema", "detector", "bucket_edges"} and client["step"] == 2


def test_duplicate_callback_names_are_refused():
    with pytest.raises(ValueError, match="hook_recorder"):
        CallbackList([HookRecorder(), HookRecorder()])


def test_step_log_off_writes_no_step_file(tmp_path):
    run_tiny_training(str(tmp_path / "run"), steps=1, log_interval=1, step_log=False)
    assert not os.path.exists(tmp_path / "run" / "telemetry" / "train_steps.jsonl")
    assert json.loads((tmp_path / "run" / "telemetry" / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1


def test_attention_annealing_runs_in_the_real_trainer(tmp_path):
    """dfm.attention_anneal_steps: 2 in a real (1-process DeepSpeed) run: the fraction of visible future keys is
    0, 0.5, then bidirectional (logged as attention/future_fraction), and training proceeds."""
    run = run_tiny_training(str(tmp_path / "run"), steps=3, log_interval=1, dfm={"attention_anneal_steps": 2})
    assert [r["attention/future_fraction"] for r in run["records"]] == [0.0, 0.5, 1.0]
    assert all(r["train/loss"] > 0 for r in run["records"])
