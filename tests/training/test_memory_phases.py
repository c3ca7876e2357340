"""Per-phase memory records (megadfm/training/memory.py) and the host allocator setting (host_allocator.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from megadfm.config_base import ConfigError
from megadfm.training.config import TrainingConfig
from megadfm.training.memory import MemoryPhases, read_memory_log, reset_resident_peak
from tests.conftest import REPO

MIB = 2**20


def test_a_phase_peak_sees_its_own_allocation_and_the_next_phase_starts_afresh(tmp_path):
    assert reset_resident_peak(), "this Linux kernel refuses /proc/self/clear_refs; the phase peaks would be since start"
    path = str(tmp_path / "telemetry" / "memory_rank0.jsonl")
    phases = MemoryPhases(torch.device("cpu"), path)
    phases.mark("start")
    block = torch.ones(256 * MIB // 4)  # 256 MiB, touched
    del block
    alloc = phases.mark("allocated and freed")
    idle = phases.mark("idle")
    assert alloc.peak_scope == idle.peak_scope == "phase"
    assert alloc.peak_bytes - alloc.end_bytes > 200 * MIB  # the block is in the peak, not in the level after it
    assert idle.peak_bytes < alloc.peak_bytes - 200 * MIB  # the reset at the mark: the next phase does not see it
    assert idle.peak_bytes >= idle.end_bytes
    # the marks reset the kernel's high-water mark (ru_maxrss with it); the peak since start still has the block
    assert phases.peak_since_start_bytes() >= alloc.peak_bytes > idle.peak_bytes + 200 * MIB
    logged = read_memory_log(path)
    assert [r["phase"] for r in logged] == ["start", "allocated and freed", "idle"]
    assert logged[1]["peak_bytes"] == alloc.peak_bytes and logged[0]["peak_scope"] == "process"


FRAGMENT = textwrap.dedent("""
    import sys, torch
    from megadfm.training.host_allocator import set_mmap_threshold
    from megadfm.training.memory import resident_bytes
    assert set_mmap_threshold(int(sys.argv[1])) == (sys.argv[1] != "0")
    M = 2**20
    big = torch.ones(16 * M // 4); del big     # freeing a 16 MiB mmapped block raises glibc's dynamic threshold
    blocks = [torch.ones(8 * M // 4) for _ in range(64)]   # 512 MiB in 8 MiB blocks
    keep = torch.ones(8 * M // 4)                           # a live block above them
    before = resident_bytes()
    del blocks
    print((before - resident_bytes()) // M)
""")


@pytest.mark.parametrize("threshold_kib, returned", [(0, False), (64, True)])
def test_freed_blocks_go_back_to_the_os_only_with_the_fixed_threshold(threshold_kib, returned):
    """The fragmentation the 0.6B run met, in miniature: with glibc's dynamic threshold, 512 MiB of freed
    8 MiB tensors stay resident; with training.host_mmap_threshold_kib's 64 KiB they are returned."""
    out = subprocess.run([sys.executable, "-c", FRAGMENT, str(threshold_kib)], cwd=REPO, capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    freed_mib = int(out.stdout.strip().splitlines()[-1])
    if returned:
        assert freed_mib >= 500, freed_mib
    else:
        assert freed_mib < 100, freed_mib


def test_mmap_threshold_out_of_glibc_range_is_refused():
    with pytest.raises(ConfigError, match="host_mmap_threshold_kib"):
        TrainingConfig(output_dir="x", host_mmap_threshold_kib=40000)
