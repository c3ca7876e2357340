"""The host (CPU) allocator: return freed tensor memory to the operating system.

glibc serves an allocation above its mmap threshold with its own ``mmap`` and unmaps it on free; below
it, from heaps that shrink only from the top. Its threshold starts at 128 KiB and grows, up to 32 MiB,
to the size of every mmapped block that is freed. A run frees many blocks of megabytes while it
builds and partitions the model (a layer's weights, DeepSpeed's flattening copies), so the threshold
rises and later blocks of that size land in the heaps, where freed memory stays resident. At the
Qwen3-0.6B shape on 2 CPU ranks with ZeRO-3 that cost 2.2 GiB per rank of memory the process no longer
used (bench/bench_memory.py: 5.96 GiB resident after the engine was initialised, 3.76 GiB with a fixed
64 KiB threshold; docs/MEMORY.md).

Setting the threshold once, before anything large is allocated, fixes it and stops the growth. The
cost is one mmap and munmap (and fresh zeroed pages) per large block. Measured on the demo's tiny
shape (examples/tiny_cpu.yaml, 2 CPU ranks, median tokens/s of steps 6-30, two pairs of runs): 739 and
891 tokens/s with the threshold against 749 and 912 without, about 2 % slower, inside the 20 %
run-to-run spread.
Only glibc has this knob (``mallopt``); elsewhere nothing is changed and the log says why.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Optional

logger = logging.getLogger("megadfm.memory")

M_MMAP_THRESHOLD = -3  # glibc malloc.h: setting it also turns the dynamic threshold off


def _glibc() -> Optional[ctypes.CDLL]:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def set_mmap_threshold(threshold_kib: int) -> bool:
    """Fix glibc's mmap threshold at ``threshold_kib`` KiB (0: leave glibc's dynamic default); True if set."""
    if threshold_kib == 0:
        logger.info("host allocator: glibc's dynamic mmap threshold left as is (training.host_mmap_threshold_kib=0)")
        return False
    libc = _glibc()
    if libc is None:
        logger.info("host allocator: not glibc, training.host_mmap_threshold_kib=%d not applied", threshold_kib)
        return False
    if libc.mallopt(M_MMAP_THRESHOLD, threshold_kib * 1024) != 1:
        raise RuntimeError(f"glibc mallopt(M_MMAP_THRESHOLD, {threshold_kib} KiB) failed: "
                           "training.host_mmap_threshold_kib must be at most 32768 on 64-bit glibc")
    logger.info("host allocator: glibc mmap threshold fixed at %d KiB (freed blocks above it go back to the OS)", threshold_kib)
    return True
