"""Megatron MMIDIDX v1 indexed datasets: memory-mapped reader, streaming writer, merge.

Byte-compatible with Megatron-LM / GPT-NeoX (layout in docs/FORMATS.md §1): a dataset is
a path prefix P with ``P.bin`` (token ids back to back, little-endian) and ``P.idx``::

    magic b"MMIDIDX\\x00\\x00" | u64 version=1 | u8 dtype code | u64 S | u64 D
    | i32[S] sequence lengths | i64[S] byte pointers | i64[D] document indices | (i8[S] modes)

Without sentence splitting there is one sequence per document; an empty document (no tokens) adds
no sequence, only a repeated document index, exactly as Megatron's builder does.

Every consistency check of the reader raises :class:`IndexedDatasetError` naming the file and the
problem, so a truncated or foreign file is caught at open time, not as garbage tokens mid-run.
"""

from __future__ import annotations

import array
import glob
import os
import shutil
import struct
from typing import List, Optional, Sequence, Union

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_BYTES = 34  # 9 magic + 8 version + 1 dtype code + 8 S + 8 D

# megatron-core codes. 6 and 7 (float64/float32, swapped in GPT-NeoX) are never token dtypes.
DTYPE_OF_CODE = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
CODE_OF_DTYPE = {np.dtype(t): c for c, t in DTYPE_OF_CODE.items()}
FLOAT_CODES = {6: "float64 in megatron-core, float32 in GPT-NeoX", 7: "float32 in megatron-core, float64 in GPT-NeoX"}

# Validation walks the index in chunks so a 100M-sequence index never needs O(S) temporaries.
_CHUNK = 1 << 22


class IndexedDatasetError(ValueError):
    """A .bin/.idx pair is missing, foreign, truncated or inconsistent. ``path`` names the file."""

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def idx_path(prefix: str) -> str:
    return prefix + ".idx"


def bin_path(prefix: str) -> str:
    return prefix + ".bin"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """Megatron's choice: uint16 when the vocabulary is under 65,500 tokens, else int32 (Qwen3: int32)."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def _prefix_hint(prefix: str) -> str:
    """'; did you mean ...' when ``prefix`` misses the ``_{key}_document`` suffix preprocessing adds, or has an extension."""
    stem, ext = os.path.splitext(prefix)
    if ext in (".idx", ".bin") and os.path.isfile(idx_path(stem)):
        return f"; did you mean {stem}? (a prefix is given without .bin/.idx)"
    if os.path.isfile(idx_path(prefix + "_text_document")):
        found = [prefix + "_text_document"]
    else:
        found = sorted(p[: -len(".idx")] for p in glob.glob(glob.escape(prefix) + "_*_document.idx"))
    if not found:
        return ""
    return (f"; did you mean {' or '.join(found)}? (tools/preprocess_data.py names its outputs "
            "{output_prefix}_{json key}_document)")


def _le(dtype: np.dtype) -> np.dtype:
    return np.dtype(dtype).newbyteorder("<")


class IndexedDataset:
    """Read-only, memory-mapped view of prefix ``P``; O(1) access to any sequence or slice of it.

    ``len(ds)`` is the number of sequences (as in Megatron); ``ds[i]`` is sequence i as a read-only
    numpy view, ``ds[a:b]`` a list of them. Documents (groups of sequences, usually one each) are
    addressed with :meth:`document`, :meth:`document_lengths` and :meth:`document_token_starts`.
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        self._idx_file = idx_path(prefix)
        self._bin_file = bin_path(prefix)
        for path in (self._idx_file, self._bin_file):
            if not os.path.isfile(path):
                raise IndexedDatasetError(path, "file not found (an indexed dataset needs both P.bin and P.idx)"
                                          + _prefix_hint(prefix))
        self._read_header()
        idx_size = os.path.getsize(self._idx_file)
        self._idx_map = np.memmap(self._idx_file, dtype=np.uint8, mode="r")
        s, d = self.num_sequences, self._num_doc_indices
        self.sequence_lengths = np.frombuffer(self._idx_map, dtype="<i4", count=s, offset=HEADER_BYTES)
        self.sequence_pointers = np.frombuffer(self._idx_map, dtype="<i8", count=s, offset=HEADER_BYTES + 4 * s)
        self.document_indices = np.frombuffer(self._idx_map, dtype="<i8", count=d, offset=HEADER_BYTES + 12 * s)
        self.sequence_modes = (np.frombuffer(self._idx_map, dtype=np.int8, count=s, offset=HEADER_BYTES + 12 * s + 8 * d)
                               if idx_size == HEADER_BYTES + 13 * s + 8 * d and s > 0 else None)
        bin_size = os.path.getsize(self._bin_file)
        # mmap refuses empty files; a dataset of only empty documents has an empty .bin.
        self._bin = (np.memmap(self._bin_file, dtype=self.dtype, mode="r") if bin_size
                     else np.zeros(0, dtype=self.dtype))
        self._validate(bin_size)

    # -- opening and validation ---------------------------------------------------------------

    def _read_header(self) -> None:
        size = os.path.getsize(self._idx_file)
        with open(self._idx_file, "rb") as f:
            header = f.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES:
            raise IndexedDatasetError(self._idx_file, f"truncated: {size} bytes, the MMIDIDX header alone is {HEADER_BYTES}")
        if header[:9] != MAGIC:
            raise IndexedDatasetError(self._idx_file, f"bad magic {header[:9]!r}, expected {MAGIC!r}: not a Megatron MMIDIDX index")
        version, code, s, d = struct.unpack("<QBQQ", header[9:])
        if version != VERSION:
            raise IndexedDatasetError(self._idx_file, f"unsupported MMIDIDX version {version}, only version {VERSION} exists")
        if code in FLOAT_CODES:
            raise IndexedDatasetError(self._idx_file, f"dtype code {code} ({FLOAT_CODES[code]}) is not a token dtype")
        if code not in DTYPE_OF_CODE:
            raise IndexedDatasetError(self._idx_file, f"unknown dtype code {code}; valid codes are "
                                      + ", ".join(f"{c} {np.dtype(t).name}" for c, t in DTYPE_OF_CODE.items()))
        expected = HEADER_BYTES + 12 * s + 8 * d
        if size not in (expected, expected + s):  # + s: the optional int8 sequence modes (multimodal)
            raise IndexedDatasetError(
                self._idx_file, f"size is {size} bytes but S={s} sequences and D={d} document indices need "
                f"34 + 12*S + 8*D = {expected} bytes (truncated or not an MMIDIDX v1 index)")
        if d < 1:
            raise IndexedDatasetError(self._idx_file, "D=0: the document indices must hold at least the leading 0")
        self.dtype = _le(DTYPE_OF_CODE[code])
        self.dtype_code = code
        self.num_sequences = s
        self._num_doc_indices = d

    def _validate(self, bin_size: int) -> None:
        itemsize = self.dtype.itemsize
        s = self.num_sequences
        total = 0
        for a in range(0, s, _CHUNK):
            lengths = self.sequence_lengths[a:a + _CHUNK].astype(np.int64)
            if lengths.size and lengths.min() < 0:
                i = a + int(np.argmin(lengths))
                raise IndexedDatasetError(self._idx_file, f"sequence {i} has negative length {int(lengths.min())}")
            total += int(lengths.sum())
        if total * itemsize != bin_size:
            raise IndexedDatasetError(
                self._bin_file, f"size is {bin_size} bytes but the index lists {total} {self.dtype.name} tokens "
                f"({total * itemsize} bytes): truncated .bin or a .bin/.idx pair from different runs")
        expected_ptr = 0
        for a in range(0, s, _CHUNK):
            lengths = self.sequence_lengths[a:a + _CHUNK].astype(np.int64) * itemsize
            pointers = self.sequence_pointers[a:a + _CHUNK]
            ends = pointers + lengths
            if pointers.min() < 0 or ends.max() > bin_size:
                i = a + int(np.argmax((ends > bin_size) | (pointers < 0)))
                raise IndexedDatasetError(
                    self._idx_file, f"sequence {i}: pointer {int(self.sequence_pointers[i])} + {int(self.sequence_lengths[i])} "
                    f"tokens ends past the end of {self._bin_file} ({bin_size} bytes)")
            expected = expected_ptr + np.concatenate([[0], np.cumsum(lengths[:-1])])
            if not np.array_equal(pointers, expected):
                i = a + int(np.argmax(pointers != expected))
                raise IndexedDatasetError(
                    self._idx_file, f"sequence {i}: pointer {int(self.sequence_pointers[i])} should be {int(expected[i - a])} "
                    "(sequences are back to back in .bin)")
            expected_ptr += int(lengths.sum())
        docs = self.document_indices
        if int(docs[0]) != 0:
            raise IndexedDatasetError(self._idx_file, f"document indices must start at 0, got {int(docs[0])}")
        if int(docs[-1]) != s:
            raise IndexedDatasetError(self._idx_file, f"document indices must end at S={s}, got {int(docs[-1])}")
        for a in range(0, len(docs) - 1, _CHUNK):
            step = np.diff(docs[a:a + _CHUNK + 1])
            if step.min() < 0:
                j = a + int(np.argmin(step))
                raise IndexedDatasetError(self._idx_file, f"document indices decrease at document {j}: "
                                          f"{int(docs[j])} then {int(docs[j + 1])}")

    # -- access --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.num_sequences

    def __getitem__(self, key: Union[int, slice]) -> Union[np.ndarray, List[np.ndarray]]:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.num_sequences)
            if step != 1:
                raise ValueError(f"{self.prefix}: slices of an indexed dataset must be contiguous (step 1)")
            if start >= stop:
                return []
            lengths = self.sequence_lengths[start:stop]
            flat = self.tokens(int(self.sequence_pointers[start]) // self.dtype.itemsize, int(lengths.sum(dtype=np.int64)))
            return np.split(flat, np.cumsum(lengths[:-1]))
        return self.get(int(key))

    def get(self, index: int, offset: int = 0, length: Optional[int] = None) -> np.ndarray:
        """Tokens ``[offset, offset + length)`` of sequence ``index`` (a read-only view, no copy)."""
        if not -self.num_sequences <= index < self.num_sequences:
            raise IndexError(f"{self.prefix}: sequence {index} out of range [0, {self.num_sequences})")
        index %= self.num_sequences
        size = int(self.sequence_lengths[index])
        length = size - offset if length is None else length
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(f"{self.prefix}: [{offset}, {offset + length}) is outside sequence {index} of length {size}")
        return self.tokens(int(self.sequence_pointers[index]) // self.dtype.itemsize + offset, length)

    def tokens(self, start: int, length: int) -> np.ndarray:
        """``length`` tokens from token offset ``start`` of the .bin (documents are contiguous runs)."""
        return self._bin[start:start + length]

    @property
    def num_documents(self) -> int:
        return self._num_doc_indices - 1

    @property
    def num_tokens(self) -> int:
        return self._bin.shape[0]

    def document_token_starts(self) -> np.ndarray:
        """int64 [num_documents + 1]: token offset in .bin where each document starts, then the total."""
        seq_starts = np.empty(self.num_sequences + 1, dtype=np.int64)
        seq_starts[:-1] = self.sequence_pointers // self.dtype.itemsize
        seq_starts[-1] = self.num_tokens
        return seq_starts[self.document_indices]

    def document_lengths(self) -> np.ndarray:
        """int64 [num_documents]: tokens per document (0 for an empty document)."""
        return np.diff(self.document_token_starts())

    def document(self, j: int) -> np.ndarray:
        """All tokens of document ``j`` (its sequences are back to back in .bin)."""
        if not 0 <= j < self.num_documents:
            raise IndexError(f"{self.prefix}: document {j} out of range [0, {self.num_documents})")
        first, end = int(self.document_indices[j]), int(self.document_indices[j + 1])
        start = int(self.sequence_pointers[first]) // self.dtype.itemsize if first < self.num_sequences else self.num_tokens
        return self.tokens(start, int(self.sequence_lengths[first:end].sum(dtype=np.int64)))

    def __repr__(self) -> str:
        return (f"IndexedDataset({self.prefix!r}, dtype={self.dtype.name}, documents={self.num_documents}, "
                f"sequences={self.num_sequences}, tokens={self.num_tokens})")


class IndexedDatasetWriter:
    """Streaming writer: tokens go straight to ``P.bin`` under a temporary name, never held in memory.

    Only the index (12 bytes per sequence, 8 per document) is kept in memory. :meth:`finalize`
    writes the .idx, fsyncs both files and renames them into place, the .idx last: an index under
    the final name always describes a complete .bin. As a context manager the writer finalizes on
    success and deletes its temporaries on an exception.
    """

    def __init__(self, prefix: str, dtype: Union[np.dtype, type, str]):
        self.prefix = prefix
        self.dtype = _le(dtype)
        if self.dtype not in {_le(t) for t in CODE_OF_DTYPE}:
            raise ValueError(f"{prefix}: dtype {self.dtype.name} has no MMIDIDX code; use one of "
                             + ", ".join(np.dtype(t).name for t in DTYPE_OF_CODE.values()))
        self._info = np.iinfo(self.dtype)
        suffix = f".tmp.{os.getpid()}"
        self._tmp_bin, self._tmp_idx = bin_path(prefix) + suffix, idx_path(prefix) + suffix
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        self._bin = open(self._tmp_bin, "wb")
        self._lengths = array.array("i")
        self._doc_idx = array.array("q", [0])
        self._done = False

    @property
    def num_documents(self) -> int:
        return len(self._doc_idx) - 1

    def _check(self, tokens: np.ndarray, lengths: Sequence[int]) -> None:
        if tokens.ndim != 1:
            raise ValueError(f"{self.prefix}: documents must be 1-D arrays of token ids, got shape {tokens.shape}")
        if tokens.size and (tokens.dtype.kind not in "iu" or int(tokens.min()) < self._info.min
                            or int(tokens.max()) > self._info.max):
            raise ValueError(f"{self.prefix}: document {self.num_documents}+ has ids in [{tokens.min()}, {tokens.max()}] "
                             f"({tokens.dtype}) that do not fit {self.dtype.name}")
        if sum(lengths) != tokens.size or any(n < 0 for n in lengths):
            raise ValueError(f"{self.prefix}: lengths (sum {sum(lengths)}) do not add up to the {tokens.size} tokens given")
        if any(n > np.iinfo(np.int32).max for n in lengths):
            raise ValueError(f"{self.prefix}: a sequence longer than 2**31-1 tokens cannot be indexed (int32 lengths)")

    def add_document(self, tokens: Union[Sequence[int], np.ndarray], sequence_lengths: Optional[Sequence[int]] = None) -> None:
        """Append one document; ``sequence_lengths`` splits it into sentences (default: one sequence).

        Zero-length sequences are not written (Megatron skips empty sentences), so an empty
        document appears only as a repeated document index.
        """
        arr = np.asarray(tokens)
        lengths = [arr.size] if sequence_lengths is None else [int(n) for n in sequence_lengths]
        self._check(arr, lengths)
        self._bin.write(arr.astype(self.dtype, copy=False).tobytes())
        self._lengths.extend(n for n in lengths if n > 0)
        self._doc_idx.append(len(self._lengths))

    def add_documents(self, tokens: np.ndarray, document_lengths: np.ndarray) -> None:
        """Append many one-sequence documents at once: ``tokens`` is their concatenation.

        Same bytes as calling :meth:`add_document` per document, with one write per call.
        """
        tokens, lengths = np.asarray(tokens), np.asarray(document_lengths, dtype=np.int64)
        self._check(tokens, lengths.tolist())
        self._bin.write(tokens.astype(self.dtype, copy=False).tobytes())
        base = len(self._lengths)
        self._lengths.frombytes(lengths[lengths > 0].astype(np.int32).tobytes())
        # an empty document adds no sequence: its document index repeats the previous one
        self._doc_idx.frombytes((base + np.cumsum(lengths > 0)).astype(np.int64).tobytes())

    def add_prefix(self, prefix: str) -> None:
        """Append every document of another dataset (same dtype), copying its .bin in chunks."""
        other = IndexedDataset(prefix)
        if other.dtype != self.dtype:
            raise IndexedDatasetError(idx_path(prefix), f"dtype {other.dtype.name} differs from the merge output's {self.dtype.name}")
        base = len(self._lengths)
        self._lengths.frombytes(np.ascontiguousarray(other.sequence_lengths, dtype="<i4").tobytes())
        self._doc_idx.frombytes((np.asarray(other.document_indices[1:], dtype="<i8") + base).tobytes())
        with open(bin_path(prefix), "rb") as src:
            shutil.copyfileobj(src, self._bin, 16 << 20)

    def finalize(self) -> None:
        """Write the .idx, fsync, rename .bin then .idx into place."""
        if self._done:
            raise RuntimeError(f"{self.prefix}: writer already finalized or aborted")
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        s, d = len(self._lengths), len(self._doc_idx)
        with open(self._tmp_idx, "wb") as f:
            f.write(MAGIC + struct.pack("<QBQQ", VERSION, CODE_OF_DTYPE[np.dtype(self.dtype.name)], s, d))
            lengths = np.frombuffer(self._lengths, dtype=np.int32) if s else np.zeros(0, np.int32)
            f.write(lengths.astype("<i4").tobytes())
            offset = 0  # pointers are written in chunks so a huge index needs no O(S) int64 temporary
            for a in range(0, s, _CHUNK):
                nbytes = lengths[a:a + _CHUNK].astype(np.int64) * self.dtype.itemsize
                pointers = offset + np.concatenate([[0], np.cumsum(nbytes[:-1])]).astype(np.int64)
                f.write(pointers.astype("<i8").tobytes())
                offset += int(nbytes.sum())
            f.write(np.frombuffer(self._doc_idx, dtype=np.int64).astype("<i8").tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(self._tmp_bin, bin_path(self.prefix))
        os.replace(self._tmp_idx, idx_path(self.prefix))
        self._done = True

    def abort(self) -> None:
        """Close and delete the temporaries; nothing appears under the final names."""
        if not self._bin.closed:
            self._bin.close()
        for path in (self._tmp_bin, self._tmp_idx):
            if os.path.exists(path):
                os.remove(path)
        self._done = True

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.finalize()


def merge_datasets(prefixes: Sequence[str], output_prefix: str) -> IndexedDataset:
    """Concatenate the documents of ``prefixes`` (in order, same dtype) into ``output_prefix``."""
    if not prefixes:
        raise ValueError("merge_datasets needs at least one input prefix")
    first = IndexedDataset(prefixes[0])
    with IndexedDatasetWriter(output_prefix, first.dtype) as writer:
        for prefix in prefixes:
            writer.add_prefix(prefix)
    return IndexedDataset(output_prefix)
