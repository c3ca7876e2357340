"""Exact resume on the real engine: an interrupted 2-process run continues bitwise, on the same or
another world size (via a universal checkpoint), and torchrun without zero.Init trains as the spawned
reference (built under zero.Init, the default) does. One uninterrupted reference launch is shared by the three tests. (Split from
test_engine.py so that the two files can run on different test workers.)"""

from __future__ import annotations

import pytest

from tests.training.engine_helpers import assert_ok, complete_steps, run, step_records, tiny_config, write_config

RESUME_K = 4
"""Steps before the interruption in the resume tests (the reference runs 2 x RESUME_K)."""


def _resume_config(run_dir, stdlib_prefix, tokenizer_dir, grad_accum_steps, save_interval, **training):
    return tiny_config(run_dir, stdlib_prefix, tokenizer_dir,
                       training=dict(train_steps=2 * RESUME_K, micro_batch_size=2, global_batch_size=4,
                                     grad_accum_steps=grad_accum_steps, **training),
                       checkpoint={"save_interval": save_interval})


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, stdlib_prefix, tokenizer_dir):
    """The uninterrupted 2-process run (2 x RESUME_K steps, accumulation 1) that the resume and launcher
    tests compare against: one launch shared by three tests."""
    work = tmp_path_factory.mktemp("reference")
    run_dir = str(work / "run")
    cfg = _resume_config(run_dir, stdlib_prefix, tokenizer_dir, grad_accum_steps=1, save_interval=0)
    assert_ok(run(write_config(str(work / "c.yaml"), cfg), nproc=2))
    return step_records(run_dir)


def _resume_pair(tmp_path, stdlib_prefix, tokenizer_dir, first_nproc, accum_first):
    """RESUME_K steps on ``first_nproc`` processes, then a 2-process resume (accumulation 1) to 2 x RESUME_K;
    returns (resumed run's records, the resume's process)."""
    k = RESUME_K
    part_dir = str(tmp_path / "part")
    part_path = write_config(str(tmp_path / "part.yaml"),
                             _resume_config(part_dir, stdlib_prefix, tokenizer_dir, grad_accum_steps=accum_first, save_interval=k))
    assert_ok(run(part_path, nproc=first_nproc,
                  overrides=[f"training.exit_after_steps={k}"]))
    assert complete_steps(part_dir) == [k]
    resumed = run(part_path, nproc=2, overrides=["training.grad_accum_steps=1"])
    assert_ok(resumed)
    assert "resumed from" in resumed.stdout and f"step {k}" in resumed.stdout
    return step_records(part_dir), resumed


def test_exact_resume_is_bitwise(tmp_path, stdlib_prefix, tokenizer_dir, reference_run):
    full = reference_run
    part, _ = _resume_pair(tmp_path, stdlib_prefix, tokenizer_dir, first_nproc=2, accum_first=1)
    assert sorted(full) == sorted(part) == list(range(1, 9))
    for s in range(1, 9):
        assert part[s]["batch_hash"] == full[s]["batch_hash"], s
        assert part[s]["loss"] == full[s]["loss"], (s, part[s]["loss"], full[s]["loss"])  # bitwise on CPU
        assert part[s]["lr"] == full[s]["lr"]


def test_resume_on_another_world_size(tmp_path, stdlib_prefix, tokenizer_dir, reference_run):
    """1 process (accumulation 2) for k steps, then 2 processes (accumulation 1) via a universal checkpoint:
    the data order is exact, the losses equal to float-reduction-order tolerance."""
    full = reference_run
    part, resumed = _resume_pair(tmp_path, stdlib_prefix, tokenizer_dir, first_nproc=1, accum_first=2)
    assert "converting to a universal checkpoint" in resumed.stdout
    for s in range(1, 9):
        assert part[s]["batch_hash"] == full[s]["batch_hash"], s
        assert part[s]["loss"] == pytest.approx(full[s]["loss"], rel=1e-4, abs=1e-4), s


def test_torchrun_without_zero_init_matches_the_spawned_reference(tmp_path, stdlib_prefix, tokenizer_dir, reference_run):
    """The reference run's config (its ranks started directly, the model built inside deepspeed.zero.Init)
    under torchrun, with every rank building the whole model and DeepSpeed partitioning it at start-up
    (training.zero_init false; stopped after 3 steps): the launcher changes nothing and the seeded init does
    not depend on partitioning (the step-1 loss is bitwise equal);
    later steps agree to float tolerance (zero.Init changes how DeepSpeed lays out the flat partitions,
    hence the summation order)."""
    run_dir = str(tmp_path / "torchrun")
    cfg = _resume_config(run_dir, stdlib_prefix, tokenizer_dir, grad_accum_steps=1, save_interval=0, zero_init=False)
    assert_ok(run(write_config(str(tmp_path / "tr.yaml"), cfg), nproc=2, launcher="torchrun",
                  overrides=["training.exit_after_steps=3"]))
    torchrun = step_records(run_dir)
    assert sorted(torchrun) == [1, 2, 3]
    assert torchrun[1]["loss"] == reference_run[1]["loss"]
    for s in (2, 3):
        assert torchrun[s]["loss"] == pytest.approx(reference_run[s]["loss"], rel=1e-5), s
