"""The DeepSpeed engine end to end: real launchers, real ZeRO-3 over gloo, real corpus and tokenizer."""

from __future__ import annotations

import os

from tests.training.engine_helpers import assert_ok, complete_steps, run, step_records, tiny_config, write_config


def latest_tag(run_dir):
    with open(os.path.join(run_dir, "checkpoints", "latest")) as f:
        return f.read().strip()


def test_zero3_two_processes_loss_decreases(tmp_path, stdlib_prefix, tokenizer_dir):
    run_dir = str(tmp_path / "run")
    cfg = tiny_config(run_dir, stdlib_prefix, tokenizer_dir,
                      training={"train_steps": 30, "lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 3, "micro_batch_size": 4},
                      checkpoint={"save_interval": 0})
    proc = run(write_config(str(tmp_path / "c.yaml"), cfg), nproc=2)
    assert_ok(proc)
    assert "world size 2" in proc.stdout and "ZeRO stage 3" in proc.stdout
    recs = step_records(run_dir)
    assert sorted(recs) == list(range(1, 31))
    first = sum(recs[s]["loss"] for s in range(1, 6)) / 5
    last = sum(recs[s]["loss"] for s in range(26, 31)) / 5
    assert last < first - 1.0, (first, last)
    assert all(recs[s]["grad_norm"] > 0 for s in recs)
    assert complete_steps(run_dir) == [30]


def test_failed_save_keeps_previous_latest_and_retention(tmp_path, stdlib_prefix, tokenizer_dir):
    run_dir = str(tmp_path / "run")
    cfg = tiny_config(run_dir, stdlib_prefix, tokenizer_dir, training={"train_steps": 7},
                      checkpoint={"save_interval": 1, "keep_last": 2, "keep_every": 3})
    path = write_config(str(tmp_path / "c.yaml"), cfg)
    crashed = run(path, nproc=2, faults={"fail_save_at_step": 5})
    assert crashed.returncode != 0
    assert "simulated write failure" in crashed.stdout + crashed.stderr
    assert latest_tag(run_dir) == "step_00000004"
    assert complete_steps(run_dir) == [3, 4]  # keep_last 2 plus every 3rd
    # the failed save removed its own .incomplete-* directory (it would otherwise fill a disk)
    assert not os.path.exists(os.path.join(run_dir, "checkpoints", ".incomplete-step_00000005"))
    again = run(path, nproc=2)
    assert_ok(again)
    assert "resumed from" in again.stdout and "step 4," in again.stdout
    assert complete_steps(run_dir) == [3, 6, 7]
    assert latest_tag(run_dir) == "step_00000007"
    assert not any(n.startswith(".incomplete") for n in os.listdir(os.path.join(run_dir, "checkpoints")))

    # the crash window between publishing step 7 and rewriting 'latest', and a 'latest' naming a missing step:
    # resume and every reader of weights (init_from, export, generate) pick the same checkpoint
    from megadfm.checkpoints.source import open_source
    from megadfm.config import CheckpointConfig
    from megadfm.training.checkpoint import CheckpointManager

    root = os.path.join(run_dir, "checkpoints")
    for stale in ("step_00000006", "step_00000042"):
        with open(os.path.join(root, "latest"), "w") as f:
            f.write(stale)
        assert CheckpointManager(root, CheckpointConfig()).latest_step() == 7
        assert open_source(run_dir).step == 7


def test_batch_arithmetic_error_is_explained(tmp_path, stdlib_prefix, tokenizer_dir):
    cfg = tiny_config(str(tmp_path / "run"), stdlib_prefix, tokenizer_dir,
                      training={"micro_batch_size": 2, "grad_accum_steps": 1, "global_batch_size": 8})
    proc = run(write_config(str(tmp_path / "c.yaml"), cfg), nproc=1, launcher="python")
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "training.global_batch_size" in text and "8 != micro_batch_size 2 x grad_accum_steps 1 x data-parallel size 1 = 2" in text
    assert "grad_accum_steps=4" in text


def _consolidated(run_dir, step):
    from megadfm.checkpoints.zero import consolidated_state_dict

    return consolidated_state_dict(os.path.join(run_dir, "checkpoints"), f"step_{step:08d}")


def test_nonfinite_loss_stops_with_last_good_checkpoint(tmp_path, stdlib_prefix, tokenizer_dir):
    run_dir = str(tmp_path / "run")
    cfg = tiny_config(run_dir, stdlib_prefix, tokenizer_dir, training={"train_steps": 6}, checkpoint={"save_interval": 0})
    proc = run(write_config(str(tmp_path / "c.yaml"), cfg), nproc=1, launcher="python",
               faults={"nan_loss_at_step": 3})
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "step 3: loss nan" in proc.stdout and "is not finite" in proc.stdout
    assert complete_steps(run_dir) == [2]  # the last good state, loadable
    assert max(step_records(run_dir)) == 2


def test_nonfinite_loss_skip_leaves_weights_unchanged(tmp_path, stdlib_prefix, tokenizer_dir):
    import torch

    run_dir = str(tmp_path / "run")
    cfg = tiny_config(run_dir, stdlib_prefix, tokenizer_dir, training={"train_steps": 5, "nonfinite_policy": "skip"},
                      checkpoint={"save_interval": 1, "keep_last": 10})
    proc = run(write_config(str(tmp_path / "c.yaml"), cfg), nproc=1, launcher="python",
               faults={"nan_loss_at_step": 3})
    assert_ok(proc)
    recs = step_records(run_dir)
    assert recs[3]["skipped"] is True and all(not recs[s]["skipped"] for s in (1, 2, 4, 5))
    assert all(recs[s]["loss"] == recs[s]["loss"] for s in (4, 5))  # finite again (not NaN)
    before, after, later = _consolidated(run_dir, 2), _consolidated(run_dir, 3), _consolidated(run_dir, 4)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the skipped update changed nothing
    assert any(not torch.equal(after[k], later[k]) for k in after)  # the next one did
