"""Verified checkpoints with fallback, and full disks, on real 2-process ZeRO-3 runs.

Corruption: a truncated optimizer shard, a deleted model_states file and binary garbage in
``latest`` are reported by file and reason, set aside as ``.corrupt-*``, and the newest good
checkpoint is used, by a resume and by every reader (open_source). Disk full: a real small tmpfs
(mounted here as root; where mounting is impossible the tests fall back to the fill_disk fault's
simulated ENOSPC and checkpoint.min_free_bytes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.training.engine_helpers import assert_ok, run, step_records, tiny_config, write_config

CKPT = "checkpoints"


def tag(step):
    return f"step_{step:08d}"


def entries(run_dir):
    return sorted(os.listdir(os.path.join(run_dir, CKPT)))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, stdlib_prefix, tokenizer_dir):
    """6 steps with checkpoints at 2, 4 and 6 (uninterrupted: the reference for bitwise comparisons)."""
    tmp = tmp_path_factory.mktemp("base")
    run_dir = str(tmp / "run")
    cfg = tiny_config(run_dir, stdlib_prefix, tokenizer_dir, training={"train_steps": 6},
                      checkpoint={"save_interval": 2, "keep_last": 3})
    path = write_config(str(tmp / "c.yaml"), cfg)
    assert_ok(run(path, nproc=2))
    assert [n for n in entries(run_dir) if n.startswith("step_")] == [tag(2), tag(4), tag(6)]
    return run_dir, path


def copy_run(base_run, dest):
    shutil.copytree(base_run[0], dest)
    return str(dest)


def test_corrupt_checkpoints_are_set_aside_and_the_newest_good_one_used(base_run, tmp_path):
    from megadfm.checkpoints.source import open_source

    run_dir = copy_run(base_run, tmp_path / "run")
    root = os.path.join(run_dir, CKPT)
    with open(os.path.join(root, tag(6), "zero_pp_rank_1_mp_rank_00_optim_states.pt"), "r+b") as f:
        f.truncate(1_000_000)  # was "failed finding central directory", naming no file
    # step 4 looks like a checkpoint from before manifests (nothing to verify against), with a deleted
    # model_states (was a bare AssertionError) and a truncated shard: only loading it can tell, and that
    # failure falls back too (a deleted model_states with a manifest: tests/checkpoints/test_layout.py)
    meta_path = os.path.join(root, tag(4), "megadfm_meta.json")
    meta = json.load(open(meta_path))
    del meta["manifest"]
    json.dump(meta, open(meta_path, "w"))
    os.remove(os.path.join(root, tag(4), "megadfm_manifest.json"))
    os.remove(os.path.join(root, tag(4), "zero_pp_rank_0_mp_rank_00_model_states.pt"))
    with open(os.path.join(root, tag(4), "zero_pp_rank_1_mp_rank_00_optim_states.pt"), "r+b") as f:
        f.truncate(2_000_000)
    with open(os.path.join(root, "latest"), "wb") as f:
        f.write(b"\x89\xff\x00\xfe garbage")  # was a UnicodeDecodeError (also in generate.py)

    # readers (export, generate, evaluation, init_from): the same rule, nothing renamed
    source = open_source(run_dir)
    assert source.step == 2
    assert sorted(os.listdir(root)) == sorted(os.listdir(os.path.join(base_run[0], CKPT)))

    resumed = run(base_run[1], nproc=2, overrides=[f"training.output_dir={run_dir}"])
    assert_ok(resumed)
    out = resumed.stdout
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt: 1000000 bytes, the manifest says" in out
    assert f"moved to {os.path.join(root, '.corrupt-' + tag(6))}" in out
    assert "has no manifest" in out and f"{os.path.join(root, tag(4))}: loading failed" in out
    assert f"moved to {os.path.join(root, '.corrupt-' + tag(4))}" in out
    assert "not a step tag" in out
    assert f"resumed from {os.path.join(root, tag(2))}: step 2" in out
    assert {".corrupt-" + tag(6), ".corrupt-" + tag(4), tag(2), tag(4), tag(6)} <= set(entries(run_dir))
    ref, got = step_records(base_run[0]), step_records(run_dir)
    for s in range(3, 7):  # redone from step 2: bitwise what the uninterrupted run computed
        assert (got[s]["loss"], got[s]["batch_hash"]) == (ref[s]["loss"], ref[s]["batch_hash"]), s


def test_no_usable_checkpoint_refuses_unless_resume_false(base_run, tmp_path):
    run_dir = copy_run(base_run, tmp_path / "run")
    root = os.path.join(run_dir, CKPT)
    for s in (2, 4, 6):
        with open(os.path.join(root, tag(s), "zero_pp_rank_0_mp_rank_00_optim_states.pt"), "r+b") as f:
            f.seek(12345)
            f.write(b"\x00\x01bitrot")  # same size: only sha256 sees it
    refused = run(base_run[1], nproc=2, overrides=[f"training.output_dir={run_dir}"])
    text = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "differs from the manifest" in text and "Refusing to start from scratch" in text
    assert "training from step" not in text
    assert sorted(n for n in entries(run_dir) if n.startswith(".corrupt-")) == [".corrupt-" + tag(s) for s in (2, 4, 6)]
    again = run(base_run[1], nproc=2, overrides=[f"training.output_dir={run_dir}"])  # set aside: still refused
    assert again.returncode != 0 and "Refusing to start from scratch" in again.stdout + again.stderr
    fresh = run(base_run[1], nproc=2, overrides=[f"training.output_dir={run_dir}", "checkpoint.resume=false",
                                                 "training.train_steps=2", "checkpoint.save_interval=0"])
    assert_ok(fresh)
    assert "training from step 0 to 2" in fresh.stdout


# ---- full disks ---------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """mount(size_mb) -> a directory on a tmpfs of that size, or None where mounting is impossible."""
    mounted = []

    def mount(size_mb):
        d = tmp_path / f"disk{size_mb}"
        d.mkdir()
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(d)], capture_output=True).returncode == 0
        if ok:
            mounted.append(str(d))
        return str(d) if ok else None

    yield mount
    for d in mounted:
        subprocess.run(["umount", d], check=True)


def disk_config(tmp_path, run_dir, stdlib_prefix, tokenizer_dir, steps, interval):
    cfg = tiny_config(run_dir, stdlib_prefix, tokenizer_dir, training={"train_steps": steps},
                      checkpoint={"save_interval": interval, "keep_last": 1})
    return write_config(str(tmp_path / "c.yaml"), cfg)


def assert_save_failed(proc, run_dir, *says):
    text = proc.stdout + proc.stderr
    assert proc.returncode == 4, f"exit {proc.returncode}\n{text[-4000:]}"  # trainer.EXIT_SAVE_FAILED
    assert "done:" not in text
    for s in says:
        assert s in text, s
    assert not [n for n in entries(run_dir) if n.startswith(".incomplete-")]


def test_checkpoint_larger_than_the_disk_is_refused_every_time(tmp_path, small_disk, stdlib_prefix, tokenizer_dir):
    disk = small_disk(30)  # the tiny model's checkpoint is 59 MB, its first-save estimate 79 MB
    run_dir = os.path.join(disk or str(tmp_path), "run")
    path = disk_config(tmp_path, run_dir, stdlib_prefix, tokenizer_dir, steps=2, interval=0)
    overrides = [] if disk else ["checkpoint.min_free_bytes=1000000000000000"]
    for attempt in range(2):  # the rerun meets the same clean refusal (was: died writing config.yaml)
        proc = run(path, nproc=2, overrides=overrides)  # rank 0's exit 4
        assert_save_failed(proc, run_dir, "disk full (", "bytes needed", "the save was refused before writing",
                           "final checkpoint at step 2 not saved")
        assert entries(run_dir) == []


def test_room_for_one_checkpoint_refuses_the_second_and_exits_nonzero(tmp_path, small_disk, stdlib_prefix, tokenizer_dir):
    disk = small_disk(100)
    run_dir = os.path.join(disk or str(tmp_path), "run")
    path = disk_config(tmp_path, run_dir, stdlib_prefix, tokenizer_dir, steps=4, interval=2)
    overrides = [] if disk else [f"checkpoint.min_free_bytes={shutil.disk_usage(str(tmp_path)).free - 100_000_000}"]
    proc = run(path, nproc=2, overrides=overrides, launcher="deepspeed")  # the README's launcher passes exit 4 through
    assert_save_failed(proc, run_dir, "disk full (", "final checkpoint at step 4 not saved", "the newest checkpoint is step 2")
    assert [n for n in entries(run_dir) if n.startswith("step_")] == [tag(2)]  # the last good one is kept

    from megadfm.checkpoints.layout import verify_step_dir

    verify_step_dir(os.path.join(run_dir, CKPT, tag(2)))


def test_disk_filling_up_during_a_save_removes_it_with_one_error(tmp_path, small_disk, stdlib_prefix, tokenizer_dir):
    disk = small_disk(150)
    run_dir = os.path.join(disk or str(tmp_path), "run")
    path = disk_config(tmp_path, run_dir, stdlib_prefix, tokenizer_dir, steps=6, interval=2)
    proc = run(path, nproc=2, faults={"fill_disk_at_step": 4})  # exit 4, no traceback
    assert_save_failed(proc, run_dir, "disk full (", f"at {os.path.join(run_dir, CKPT, '.incomplete-' + tag(4))}",
                       "the newest checkpoint is still step_00000002")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert [n for n in entries(run_dir) if n.startswith("step_")] == [tag(2)]
    if disk:
        assert shutil.disk_usage(disk).free > 80_000_000  # the failed save's bytes are gone
