"""This process's memory at the named phases of a run: the peak within each phase, and the level at its end.

A phase runs from the previous mark to this one (the first from process start). Its peak is:

- CPU: the resident set's high-water mark (Linux ``VmHWM``), reset at every mark by writing ``5`` to
  ``/proc/self/clear_refs``. Where that file cannot be written, the peak is the high-water mark since
  the process started, and the record says so (``peak_scope: "process"``), never passed off as the phase's.
- CUDA: ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved``, reset with
  ``reset_peak_memory_stats`` at every mark.

The trainer marks "imports" (the runtime: Python, torch, DeepSpeed, the process group), "model built",
"init_from loaded", "engine initialised" and "checkpoint resumed"; :class:`MemoryCallback`
marks the first step's "forward", "backward" and "optimizer step", the "later steps" (the peak of every
step after the first, written when training ends) and the first checkpoint's "save".
Each mark is one log line, and one JSON line appended to ``telemetry/memory_rank{R}.jsonl`` in the run
folder (one write per line, flushed): a rank killed by the kernel's OOM killer leaves on disk how far
it got and what it held. A resumed run appends to the same file; ``pid`` tells invocations apart.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import torch

logger = logging.getLogger("megadfm.memory")

GIB = 2**30
_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


@dataclass(frozen=True)
class PhaseMemory:
    """Memory of one phase of this process."""

    phase: str
    peak_bytes: int                       # CPU: resident set high-water mark; CUDA: max allocated by torch
    end_bytes: int                        # CPU: resident set at the mark; CUDA: allocated at the mark
    peak_scope: str                       # "phase" (reset at the previous mark) or "process" (since start)
    device: str                           # "cpu" or "cuda"
    reserved_peak_bytes: Optional[int] = None   # CUDA only: max reserved by the caching allocator
    rss_peak_bytes: Optional[int] = None        # CUDA only: the host process's resident-set peak too

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


def memory_log_path(run_dir: str, rank: int) -> str:
    """Where rank ``rank`` of the run in ``run_dir`` appends its phase records."""
    return os.path.join(run_dir, "telemetry", f"memory_rank{rank}.jsonl")


def read_memory_log(path: str) -> List[Dict[str, object]]:
    """The records of one rank's memory log, oldest first."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _status_kib(field: str) -> Optional[int]:
    """A ``kB`` field of /proc/self/status, or None where there is no such file (not Linux)."""
    if not os.path.exists(_STATUS):
        return None
    with open(_STATUS, encoding="ascii") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    return int(m.group(1)) if m else None


def resident_bytes() -> Optional[int]:
    """The resident set now (VmRSS), or None off Linux."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def resident_peak_bytes() -> Optional[int]:
    """The resident set's high-water mark (VmHWM) since start or the last reset, or None off Linux."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def reset_resident_peak() -> bool:
    """Reset VmHWM to the current resident set; False where the kernel does not allow it."""
    if not os.access(_CLEAR_REFS, os.W_OK):
        return False
    with open(_CLEAR_REFS, "w", encoding="ascii") as f:
        f.write("5")
    return True


class MemoryPhases:
    """Marks phases and keeps one :class:`PhaseMemory` per mark (``records``)."""

    def __init__(self, device: torch.device, path: Optional[str] = None):
        """``path``: the JSONL file each mark is appended to (None: log lines only)."""
        self.device_type = device.type
        self.path = path
        self.records: List[PhaseMemory] = []
        self._scope = "process"  # the first phase starts at process start
        if self.device_type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def _open_phase_peak(self) -> int:
        """The peak of the phase now running: torch's max allocated on CUDA, the resident high-water mark on CPU."""
        if self.device_type == "cuda":
            return torch.cuda.max_memory_allocated()
        return resident_peak_bytes() or 0

    def peak_since_start_bytes(self) -> int:
        """The process's peak since it started (what the step log reports as mem_max_gb). Every mark resets the
        counters the peak is read from (on Linux ``getrusage``'s ru_maxrss too), so it is the largest of the
        recorded phases' peaks and the running phase's."""
        return max([r.peak_bytes for r in self.records] + [self._open_phase_peak()])

    def mark(self, phase: str) -> PhaseMemory:
        """Record the phase that ends now, log it, and start the next one."""
        rss_peak = resident_peak_bytes()
        if self.device_type == "cuda":
            rec = PhaseMemory(phase, self._open_phase_peak(), torch.cuda.memory_allocated(), "phase", "cuda",
                              reserved_peak_bytes=torch.cuda.max_memory_reserved(), rss_peak_bytes=rss_peak)
            torch.cuda.reset_peak_memory_stats()
        else:
            rec = PhaseMemory(phase, rss_peak or 0, resident_bytes() or 0, self._scope, "cpu")
        self.records.append(rec)
        if self.path is not None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({**rec.as_dict(), "pid": os.getpid()}) + "\n")
        self._scope = "phase" if reset_resident_peak() else "process"
        extra = f", reserved peak {rec.reserved_peak_bytes / GIB:.2f} GiB" if rec.reserved_peak_bytes is not None else ""
        logger.info("memory after %s: peak %.2f GiB%s, now %.2f GiB (%s%s)", phase, rec.peak_bytes / GIB, extra,
                    rec.end_bytes / GIB, "torch allocator" if rec.device == "cuda" else "resident set",
                    "" if rec.peak_scope == "phase" else "; peak since process start")
        return rec
