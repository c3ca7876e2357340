"""dfm.mode: block in the real trainer: a 2-process ZeRO-3 DeepSpeed run (per-block times, packed documents, a
block-size curriculum, a validation pass) that is interrupted and resumed equals the uninterrupted run bitwise."""

from __future__ import annotations

import json
import os

from tests.training.engine_helpers import assert_ok, complete_steps, run, step_records, tiny_config, write_config

K = 2  # steps before the interruption; the reference runs 2 K


def _config(run_dir, stdlib_prefix, tokenizer_dir, save_interval):
    return tiny_config(run_dir, stdlib_prefix, tokenizer_dir,
                       dfm={"mode": "block", "block_size": 8, "block_t": "block", "block_size_warmup": [[1, 4]]},
                       training={"train_steps": 2 * K, "micro_batch_size": 2, "eval_interval": 2 * K, "eval_batches": 1},
                       checkpoint={"save_interval": save_interval})


def test_block_mode_two_processes_resume_bitwise(tmp_path, stdlib_prefix, tokenizer_dir):
    ref_dir = str(tmp_path / "reference")
    ref = run(write_config(str(tmp_path / "ref.yaml"), _config(ref_dir, stdlib_prefix, tokenizer_dir, 0)), nproc=2)
    assert_ok(ref)
    part_dir = str(tmp_path / "part")
    part_path = write_config(str(tmp_path / "part.yaml"), _config(part_dir, stdlib_prefix, tokenizer_dir, K))
    assert_ok(run(part_path, nproc=2, overrides=[f"training.exit_after_steps={K}"]))
    assert complete_steps(part_dir) == [K]
    resumed = run(part_path, nproc=2)
    assert_ok(resumed)
    assert "resumed from" in resumed.stdout and f"step {K}" in resumed.stdout
    full, part = step_records(ref_dir), step_records(part_dir)
    assert sorted(full) == sorted(part) == list(range(1, 2 * K + 1))
    for s in full:
        assert part[s]["batch_hash"] == full[s]["batch_hash"], s
        assert part[s]["loss"] == full[s]["loss"], (s, part[s]["loss"], full[s]["loss"])  # bitwise on CPU
    assert all(full[s]["loss"] > 0 for s in full)
    for run_dir in (ref_dir, part_dir):  # the curriculum (telemetry's train records), the resumed half included
        sizes = {}
        with open(os.path.join(run_dir, "telemetry", "metrics.jsonl"), encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                if rec.get("kind") == "train":
                    sizes[rec["step"]] = rec["block/size"]
        assert [sizes[s] for s in sorted(sizes)] == [4.0] + [8.0] * (2 * K - 1), (run_dir, sizes)
    for proc in (ref, resumed):
        assert f"validation at step {2 * K}" in proc.stdout + proc.stderr
