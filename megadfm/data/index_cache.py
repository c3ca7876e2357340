"""On-disk cache of index arrays (document order, sample index, shuffle, blend), built once.

Each entry is a set of ``.npy`` files named by a hash of a JSON description of everything that
affects the arrays, plus that description as ``.json`` for people. When torch.distributed is
initialized, global rank 0 builds missing entries while the other ranks wait at a barrier, then
every rank memory-maps the files (one build per job on a shared filesystem, docs/DESIGN.md §7).
Without torch.distributed each process builds what is missing itself: the arrays are a
deterministic function of the description and every file is written to a temporary name and
renamed, so concurrent builders can only replace a file with identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Callable, Dict, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

_IDX_DIGESTS: Dict[tuple, str] = {}


def file_sha256(path: str) -> str:
    """sha256 of a file, memoized per (path, size, mtime) within the process (an .idx is hashed once)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _IDX_DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(16 << 20), b""):
                h.update(block)
        _IDX_DIGESTS[key] = h.hexdigest()
    return _IDX_DIGESTS[key]


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _save_npy(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
        np.save(f, array)
    os.replace(tmp, path)


def cached_arrays(cache_dir: str, kind: str, description: Mapping[str, object], names: Sequence[str],
                  build: Callable[[], Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """Load arrays ``names`` for ``description`` from ``cache_dir``, building them first if missing.

    Collective when torch.distributed is initialized: every rank must call it in the same order.
    """
    text = json.dumps({"kind": kind, **description}, sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:20]
    base = os.path.join(cache_dir, f"{kind}_{key}")
    paths = {name: f"{base}_{name}.npy" for name in names}

    def missing() -> bool:
        return not all(os.path.isfile(p) for p in paths.values())

    def make() -> None:
        os.makedirs(cache_dir, exist_ok=True)
        logger.info("building %s index %s", kind, base)
        arrays = build()
        if sorted(arrays) != sorted(names):
            raise RuntimeError(f"index builder for {kind} returned {sorted(arrays)}, expected {sorted(names)}")
        for name, array in arrays.items():
            _save_npy(paths[name], array)
        tmp = f"{base}.json.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, base + ".json")

    if _distributed():
        import torch.distributed as dist

        if dist.get_rank() == 0 and missing():
            make()
        dist.barrier()
        if missing():
            raise FileNotFoundError(f"rank {dist.get_rank()}: index cache {base}_*.npy not found after rank 0 built it; "
                                    f"is data.cache_dir ({cache_dir}) on a filesystem every rank shares?")
    elif missing():
        make()
    return {name: np.load(path, mmap_mode="r") for name, path in paths.items()}
