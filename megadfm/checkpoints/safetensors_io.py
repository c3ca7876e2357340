"""Streaming safetensors I/O: read one tensor at a time, write shards tensor by tensor.

The converters never hold a whole model. Reading parses a file's header and reads each tensor with
one ``readinto`` into a fresh buffer (no mmap, so the page cache never shows up as resident memory).
Writing plans the shards from names, dtypes and shapes before any data exists, writes each shard's
header first and then every tensor as it arrives, hashing the bytes on the way (sha256 per file
for the metadata). Peak memory is about one tensor, whatever the model size.

File format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length,
a JSON header ``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`` padded
with spaces to a multiple of 8, then the tensor bytes. Shards follow transformers' naming
(``model-00001-of-00003.safetensors`` + ``model.safetensors.index.json``); one shard is written as
``model.safetensors`` (the names of megadfm/checkpoints/layout.py).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from megadfm.checkpoints.layout import WEIGHTS_FILE, WEIGHTS_INDEX_FILE

DTYPES: Mapping[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_CODES: Mapping[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit


class SafetensorsError(ValueError):
    """A safetensors file is malformed, truncated or does not hold what its index says."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: Tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


# ---- sizes -------------------------------------------------------------------------------------

_UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
          "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}


def parse_size(text: str) -> int:
    """'2GB' -> 2_000_000_000 (KB/MB/GB are powers of 10 as in transformers; KiB/MiB/GiB powers of 2)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS:
        raise ValueError(f"size {text!r} is not understood: use e.g. 2GB, 500MB, 1.5GiB or a number of bytes")
    size = int(float(m.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return size


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000.0
    return f"{n} B"


# ---- reading -----------------------------------------------------------------------------------

def read_header(path: str) -> Tuple[Dict[str, TensorSpec], Dict[str, Tuple[int, int]], int]:
    """(specs, {name: (begin, end) absolute byte range}, file size) of a safetensors file, validated:
    a truncated or foreign file raises SafetensorsError naming it."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise SafetensorsError(f"{path}: not a safetensors file or truncated (header length {n}, file size {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    specs, ranges = {}, {}
    start = 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise SafetensorsError(f"{path}: tensor {name!r} has a malformed header entry {info!r} ({e})") from None
        spec = TensorSpec(name, dtype, shape)
        if end - begin != spec.nbytes or begin < 0:
            raise SafetensorsError(f"{path}: tensor {name!r} has {end - begin} bytes, expected {spec.nbytes} for "
                                   f"{info['dtype']} {list(shape)}")
        if start + end > size:
            raise SafetensorsError(f"{path}: truncated: tensor {name!r} ends at byte {start + end}, the file has {size}")
        specs[name] = spec
        ranges[name] = (start + begin, start + end)
    return specs, ranges, size


def read_tensors(path: str, names: Optional[Sequence[str]] = None) -> Iterator[Tuple[str, torch.Tensor]]:
    """Tensors of one file in ``names`` order (default: file order), each read into its own buffer."""
    specs, ranges, _ = read_header(path)
    order = list(names) if names is not None else sorted(specs, key=lambda k: ranges[k][0])
    with open(path, "rb") as f:
        for name in order:
            if name not in specs:
                raise SafetensorsError(f"{path}: has no tensor {name!r}")
            yield name, _read_one(f, path, specs[name], ranges[name])


def _read_one(f, path: str, spec: TensorSpec, byte_range: Tuple[int, int]) -> torch.Tensor:
    begin, end = byte_range
    buf = torch.empty(end - begin, dtype=torch.uint8)
    if end > begin:
        f.seek(begin)
        got = f.readinto(memoryview(buf.numpy()))
        if got != end - begin:
            raise SafetensorsError(f"{path}: truncated while reading {spec.name!r} ({got} of {end - begin} bytes)")
    return buf.view(spec.dtype).reshape(spec.shape)


# ---- writing -----------------------------------------------------------------------------------

def plan_shards(specs: Sequence[TensorSpec], max_shard_bytes: int) -> List[List[TensorSpec]]:
    """Greedy, in order: a new shard starts when the next tensor would overflow the limit (a tensor
    larger than the limit gets a shard of its own, as transformers does)."""
    shards: List[List[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def shard_file_names(n: int) -> List[str]:
    return [WEIGHTS_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


class ShardedSafetensorsWriter:
    """Writes ``specs`` (in that order) into ``folder`` as one file or shards + index, tensor by tensor.

    ``write(name, tensor)`` must be called once per spec, in order, with exactly the planned dtype and
    shape. ``close()`` writes the index (when sharded) and returns ``{file name: sha256}``.
    """

    def __init__(self, folder: str, specs: Sequence[TensorSpec], max_shard_bytes: int,
                 metadata: Optional[Mapping[str, str]] = None,
                 on_bytes: Optional[Callable[[int], None]] = None):
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("duplicate tensor names in the write plan")
        self.folder = folder
        self.specs = list(specs)
        self.shards = plan_shards(self.specs, max_shard_bytes)
        self.files = shard_file_names(len(self.shards))
        self.metadata = {"format": "pt", **(metadata or {})}
        self.on_bytes = on_bytes
        self.sha256: Dict[str, str] = {}
        self._queue = [(i, spec) for i, shard in enumerate(self.shards) for spec in shard]
        self._pos = 0
        self._file = None
        self._hash = None
        self._shard = -1
        self._hasher = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self._pending = None

    @property
    def weight_map(self) -> Dict[str, str]:
        return {spec.name: self.files[i] for i, spec in self._queue}

    def _open(self, shard: int) -> None:
        self._finish_file()
        offsets, header = 0, {"__metadata__": dict(self.metadata)}
        for spec in self.shards[shard]:
            header[spec.name] = {"dtype": DTYPE_CODES[spec.dtype], "shape": list(spec.shape),
                                 "data_offsets": [offsets, offsets + spec.nbytes]}
            offsets += spec.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # align the data to 8 bytes, as the reference writer does
        self._file = open(os.path.join(self.folder, self.files[shard]), "wb")
        self._hash = hashlib.sha256()
        self._shard = shard
        self._emit(struct.pack("<Q", len(raw)) + raw)

    def _emit(self, data) -> None:
        # hash block k on a worker thread while block k is written (hashlib and file writes release
        # the GIL); waiting for block k-1 first keeps the order and at most one block pending
        self._wait_hash()
        self._pending = self._hasher.submit(self._hash.update, data)
        self._file.write(data)

    def _wait_hash(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._pos >= len(self._queue):
            raise ValueError(f"unexpected tensor {name!r}: every planned tensor was already written")
        shard, spec = self._queue[self._pos]
        if name != spec.name:
            raise ValueError(f"tensors must be written in plan order: expected {spec.name!r}, got {name!r}")
        if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
            raise ValueError(f"{name}: planned {spec.dtype} {spec.shape}, got {tensor.dtype} {tuple(tensor.shape)}")
        if shard != self._shard:
            self._open(shard)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        if data.numel():
            self._emit(memoryview(data.numpy()))
        self._pos += 1
        if self.on_bytes:
            self.on_bytes(spec.nbytes)

    def _finish_file(self) -> None:
        self._wait_hash()
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self.sha256[self.files[self._shard]] = self._hash.hexdigest()
            self._file = None

    def close(self) -> Dict[str, str]:
        if self._pos != len(self._queue):
            missing = [spec.name for _, spec in self._queue[self._pos:]]
            raise ValueError(f"{len(missing)} planned tensors were never written, first: {missing[:3]}")
        if not self._queue:  # an empty model still gets a (valid, empty) file
            self._open(0)
        self._finish_file()
        self._hasher.shutdown()
        if len(self.files) > 1:
            index = {"metadata": {"total_size": sum(s.nbytes for s in self.specs)}, "weight_map": self.weight_map}
            with open(os.path.join(self.folder, WEIGHTS_INDEX_FILE), "w") as f:
                json.dump(index, f, indent=2, sort_keys=True)
                f.write("\n")
        return dict(self.sha256)

    def abort(self) -> None:
        self._hasher.shutdown(wait=True, cancel_futures=True)
        self._pending = None
        if self._file is not None:
            self._file.close()
            self._file = None


def write_sharded(folder: str, specs: Sequence[TensorSpec], max_shard_bytes: int,
                  tensors: Iterable[Tuple[str, torch.Tensor]], on_bytes: Optional[Callable[[int], None]] = None) -> Dict[str, str]:
    """Write ``tensors`` (exactly ``specs``, in order) into ``folder``; returns ``{file name: sha256}``.
    On any error the open file is closed and the error re-raised (the caller removes the folder)."""
    writer = ShardedSafetensorsWriter(folder, specs, max_shard_bytes, on_bytes=on_bytes)
    try:
        for name, tensor in tensors:
            writer.write(name, tensor)
            del tensor  # at most one tensor alive: the next one is read only after this one is written
        return writer.close()
    except BaseException:
        writer.abort()
        raise
