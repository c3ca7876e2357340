"""What every conversion output carries, and how it is written and published.

``megadfm_conversion.json`` records the direction, the source (path, kind, step), the model config,
the parameter count, the key report (mapped / added / dropped) and the sha256 and size of every
other file in the folder, so a copy can be verified (:func:`verify`).

Outputs are built in a hidden sibling folder and renamed onto the output name only when complete
(:func:`staged_output`): a failure or Ctrl-C leaves nothing under the output name. Weights are
written tensor by tensor (:func:`write_planned`), with an optional progress bar.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import sys
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

import torch

from megadfm.checkpoints.safetensors_io import TensorSpec, write_sharded
from megadfm.io_utils import fsync_tree, sha256_file

METADATA_FILE = "megadfm_conversion.json"


class OutputExistsError(FileExistsError):
    pass


def write_metadata(folder: str, meta: Mapping[str, Any], known_sha256: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """Write METADATA_FILE into ``folder`` with ``meta`` plus ``files``: {relative path: {sha256, bytes}}
    for every other file (``known_sha256`` are hashes computed while writing, not recomputed)."""
    known = dict(known_sha256 or {})
    files = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            if rel == METADATA_FILE:
                continue
            files[rel] = {"sha256": known.get(rel) or sha256_file(path), "bytes": os.path.getsize(path)}
    out = {"megadfm_conversion": 1, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]), **meta, "files": files}
    with open(os.path.join(folder, METADATA_FILE), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2, default=str)
        f.write("\n")
    return out


def verify(folder: str) -> Dict[str, str]:
    """{file: problem} for every file whose size or sha256 differs from the metadata (empty: all good)."""
    with open(os.path.join(folder, METADATA_FILE), encoding="utf-8") as f:
        files = json.load(f)["files"]
    problems = {}
    for rel, info in files.items():
        path = os.path.join(folder, rel)
        if not os.path.isfile(path):
            problems[rel] = "missing"
        elif os.path.getsize(path) != info["bytes"]:
            problems[rel] = f"{os.path.getsize(path)} bytes, expected {info['bytes']}"
        elif sha256_file(path) != info["sha256"]:
            problems[rel] = "sha256 differs"
    return problems


class NotEnoughSpaceError(OSError):
    pass


@contextlib.contextmanager
def staged_output(out_dir: str, force: bool = False, needed_bytes: int = 0) -> Iterator[str]:
    """Yield a fresh temporary folder next to ``out_dir``; on success it is fsynced and renamed to
    ``out_dir`` (replacing it only with ``force``); on any error it is removed. ``needed_bytes``
    (plus 5% and 100 MB of slack) must be free on that filesystem before anything is written."""
    out_dir = os.path.abspath(out_dir)
    if os.path.lexists(out_dir) and not force:
        raise OutputExistsError(f"output {out_dir} already exists; choose another --out or pass --force to replace it")
    parent, base = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if needed_bytes and free < needed_bytes * 1.05 + 100e6:
        raise NotEnoughSpaceError(f"not enough disk space for {out_dir}: about {needed_bytes / 1e9:.2f} GB needed, "
                                  f"{free / 1e9:.2f} GB free on {parent}")
    tmp = os.path.join(parent, f".{base}.incomplete-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
        fsync_tree(tmp)
        if os.path.lexists(out_dir):
            old = os.path.join(parent, f".{base}.replaced-{os.getpid()}")
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_planned(folder: str, specs: Sequence[TensorSpec], max_shard_bytes: int, tensors: Iterable[Tuple[str, torch.Tensor]],
                  progress: bool = False) -> Dict[str, str]:
    """Write the weights (exactly ``specs``, in order) into ``folder``; ``{file name: sha256}``."""
    bar = _progress_bar(sum(s.nbytes for s in specs), progress)
    try:
        return write_sharded(folder, specs, max_shard_bytes, tensors, on_bytes=bar.update)
    finally:
        bar.close()


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="writing weights", dynamic_ncols=True)
