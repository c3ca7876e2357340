"""dfm.mode: block in the real trainer: a 2-process ZeRO-3 DeepSpeed run (per-block times, packed documents, a
block-size curriculum, a validation pass) that is interrupted and resumed equals the uninterrupted run bitwise."""

from __future__ import annotations

import json
import os

from tests.training.engine_helpers import interrupted_run_equals_reference, step_records, tiny_config

K = 2  # steps before the interruption; the reference runs 2 K


def _config(run_dir, stdlib_prefix, tokenizer_dir, save_interval):
    return tiny_config(run_dir, stdlib_prefix, tokenizer_dir,
                       dfm={"mode": "block", "block_size": 8, "block_t": "block", "block_size_warmup": [[1, 4]]},
                       training={"train_steps": 2 * K, "micro_batch_size": 2, "eval_interval": 2 * K, "eval_batches": 1},
                       checkpoint={"save_interval": save_interval})


def test_block_mode_two_processes_resume_bitwise(tmp_path, stdlib_prefix, tokenizer_dir):
    ref_dir, part_dir, resumed = interrupted_run_equals_reference(
        tmp_path, lambda run_dir, save: _config(run_dir, stdlib_prefix, tokenizer_dir, save), K)
    full = step_records(ref_dir)
    assert all(full[s]["loss"] > 0 for s in full)
    for run_dir in (ref_dir, part_dir):  # the curriculum (telemetry's train records), the resumed half included
        sizes, validated = {}, []
        with open(os.path.join(run_dir, "telemetry", "metrics.jsonl"), encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                if rec.get("kind") == "train":
                    sizes[rec["step"]] = rec["block/size"]
                elif rec.get("kind") == "val":
                    validated.append(rec["step"])
        assert [sizes[s] for s in sorted(sizes)] == [4.0] + [8.0] * (2 * K - 1), (run_dir, sizes)
        assert validated == [2 * K], (run_dir, validated)  # the block-mode validation pass ran (t per row)
    assert f"validation at step {2 * K}" in resumed.stdout + resumed.stderr
