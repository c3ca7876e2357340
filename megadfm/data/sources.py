"""Raw-text inputs of ``tools/preprocess_data.py``: discovery, fingerprints and record streams.

Supported inputs (one document per record):

- ``.jsonl`` / ``.json`` (JSON lines, as Megatron's tool reads) and ``.jsonl.gz`` / ``.json.gz``;
- ``.parquet`` (one column per key, string or binary);
- a folder written by ``datasets.Dataset.save_to_disk`` (``state.json`` or ``dataset_dict.json``);
- any other file selected by ``--glob`` inside a folder: the whole file is one document of key
  ``text`` (a folder of source code, e.g. the Python standard library).

Decisions, all reported in the summary rather than silently applied:

- undecodable bytes are decoded with ``errors="replace"`` (and lone surrogates in JSON strings
  replaced by U+FFFD); the document is counted as *undecodable*;
- a JSON ``null`` (or parquet/HF null) value is counted as *invalid* and written as an empty
  document, so document j of the output is still record j of the input;
- a record without the key, a non-string value or a line that is not JSON is an
  :class:`InputError` naming the file, the line and the key: that is a wrong ``--json-keys`` or a
  broken file, which no counter should hide.
"""

from __future__ import annotations

import fnmatch
import glob as globlib
import gzip
import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Set

REPLACEMENT = "\ufffd"
_SURROGATES = re.compile("[\ud800-\udfff]")
_JSONL_SUFFIXES = (".jsonl", ".json")
_GZ_SUFFIXES = (".jsonl.gz", ".json.gz")


class InputError(ValueError):
    """An input file or folder cannot be read as asked; the message names it and what is wrong."""


@dataclass(frozen=True)
class InputSource:
    """One input: ``kind`` is ``jsonl``, ``jsonl.gz``, ``parquet``, ``hf_disk`` or ``text``."""

    kind: str
    path: str


@dataclass
class Record:
    """One input record: its text per key and what had to be repaired in it."""

    texts: Dict[str, str]
    location: str
    invalid: Set[str] = field(default_factory=set)
    undecodable: Set[str] = field(default_factory=set)


def is_hf_disk_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or os.path.isfile(os.path.join(path, "state.json"))


def kind_of_file(path: str) -> str:
    name = path.lower()
    if name.endswith(_GZ_SUFFIXES):
        return "jsonl.gz"
    if name.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def discover(inputs: Sequence[str], pattern: Optional[str], exclude: Sequence[str] = ()) -> List[InputSource]:
    """Resolve ``--input`` paths (and ``--glob`` inside folders) into an ordered list of sources.

    Files matched by the glob are sorted by path so the output never depends on directory order;
    ``exclude`` patterns (fnmatch, ``*`` crosses ``/``) drop files by their path inside the folder.
    """
    sources: List[InputSource] = []
    for path in inputs:
        if os.path.isdir(path):
            if pattern:
                matched = sorted(p for p in globlib.glob(os.path.join(path, pattern), recursive=True) if os.path.isfile(p)
                                 and not any(fnmatch.fnmatch(os.path.relpath(p, path), x) for x in exclude))
                if not matched:
                    raise InputError(f"{path}: no file matches --glob {pattern!r}")
                sources.extend(InputSource(kind_of_file(p), os.path.abspath(p)) for p in matched)
            elif is_hf_disk_folder(path):
                sources.append(InputSource("hf_disk", os.path.abspath(path)))
            else:
                raise InputError(f"{path}: a folder that is not a saved HF dataset (no state.json or dataset_dict.json); "
                                 "pass --glob (e.g. '**/*.py') to read the files in it")
        elif os.path.isfile(path):
            sources.append(InputSource(kind_of_file(path), os.path.abspath(path)))
        else:
            raise InputError(f"{path}: input not found")
    if not sources:
        raise InputError("no inputs given")
    return sources


def input_files(sources: Sequence[InputSource]) -> List[Dict[str, object]]:
    """Every file the sources read, with size and mtime: the up-to-date check compares these."""
    out: List[Dict[str, object]] = []
    for src in sources:
        paths = [src.path]
        if src.kind == "hf_disk":
            paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(src.path) for f in fs)
        for p in paths:
            st = os.stat(p)
            out.append({"path": p, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _hf_dataset(src: InputSource, hf_split: Optional[str]):
    import datasets

    ds = datasets.load_from_disk(src.path)
    if isinstance(ds, datasets.DatasetDict):
        if hf_split is None and len(ds) == 1:
            hf_split = next(iter(ds))
        if hf_split not in ds:
            raise InputError(f"{src.path}: a DatasetDict with splits {sorted(ds)}; choose one with --hf-split")
        ds = ds[hf_split]
    return ds


def count_records(sources: Sequence[InputSource], hf_split: Optional[str]) -> Optional[int]:
    """Number of records when cheap to know (for the progress bar); None when a JSONL input is present."""
    total = 0
    for src in sources:
        if src.kind == "text":
            total += 1
        elif src.kind == "parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(src.path).metadata.num_rows
        elif src.kind == "hf_disk":
            total += len(_hf_dataset(src, hf_split))
        else:
            return None
    return total


def _decode(raw: bytes) -> tuple[str, bool]:
    """UTF-8 decode with replacement; True when bytes had to be replaced (not when U+FFFD was already there)."""
    text = raw.decode("utf-8", errors="replace")
    return text, text.count(REPLACEMENT) != raw.count(b"\xef\xbf\xbd")


def _make_record(values: Dict[str, object], keys: Sequence[str], location: str, damaged: bool) -> Record:
    record = Record({}, location)
    for key in keys:
        if key not in values:
            raise InputError(f"{location}: no field {key!r} (fields: {sorted(values)}); check --json-keys")
        value = values[key]
        if value is None:
            record.invalid.add(key)
            value = ""
        elif isinstance(value, bytes):
            value, bad = _decode(value)
            if bad:
                record.undecodable.add(key)
        elif not isinstance(value, str):
            raise InputError(f"{location}: field {key!r} is {type(value).__name__}, expected a string")
        if _SURROGATES.search(value):  # "\ud800" in JSON parses but cannot be encoded as UTF-8
            value = _SURROGATES.sub(REPLACEMENT, value)
            record.undecodable.add(key)
        if damaged and REPLACEMENT in value:
            record.undecodable.add(key)
        record.texts[key] = value
    return record


def _iter_jsonl(src: InputSource, keys: Sequence[str]) -> Iterator[Record]:
    opener = gzip.open if src.kind == "jsonl.gz" else open
    with opener(src.path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue  # a blank line is not a record (e.g. a trailing newline)
            line, damaged = _decode(raw)
            try:
                values = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{src.path}:{lineno}: not a JSON line ({e.msg} at column {e.colno})") from None
            if not isinstance(values, dict):
                raise InputError(f"{src.path}:{lineno}: expected a JSON object, got {type(values).__name__}")
            yield _make_record(values, keys, f"{src.path}:{lineno}", damaged)


def _iter_parquet(src: InputSource, keys: Sequence[str]) -> Iterator[Record]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(src.path)
    missing = [k for k in keys if k not in pf.schema_arrow.names]
    if missing:
        raise InputError(f"{src.path}: no column {missing[0]!r} (columns: {pf.schema_arrow.names}); check --json-keys")
    row = 0
    for batch in pf.iter_batches(batch_size=1024, columns=list(keys)):
        columns = {k: batch.column(k).to_pylist() for k in keys}
        for i in range(batch.num_rows):
            yield _make_record({k: columns[k][i] for k in keys}, keys, f"{src.path}:row {row}", False)
            row += 1


def _iter_hf_disk(src: InputSource, keys: Sequence[str], hf_split: Optional[str]) -> Iterator[Record]:
    ds = _hf_dataset(src, hf_split)
    missing = [k for k in keys if k not in ds.column_names]
    if missing:
        raise InputError(f"{src.path}: no column {missing[0]!r} (columns: {ds.column_names}); check --json-keys")
    row = 0
    for batch in ds.select_columns(list(keys)).iter(batch_size=1000):
        for i in range(len(batch[keys[0]])):
            yield _make_record({k: batch[k][i] for k in keys}, keys, f"{src.path}[{row}]", False)
            row += 1


def iter_records(sources: Sequence[InputSource], keys: Sequence[str], hf_split: Optional[str] = None) -> Iterator[Record]:
    """Every record of every source, in order."""
    for src in sources:
        if src.kind == "text":
            if list(keys) != ["text"]:
                raise InputError(f"{src.path}: a plain file gives one field, 'text'; --json-keys {list(keys)} cannot apply")
            with open(src.path, "rb") as f:
                text, bad = _decode(f.read())
            record = _make_record({"text": text}, keys, src.path, False)
            if bad:
                record.undecodable.add("text")
            yield record
        elif src.kind in ("jsonl", "jsonl.gz"):
            yield from _iter_jsonl(src, keys)
        elif src.kind == "parquet":
            yield from _iter_parquet(src, keys)
        elif src.kind == "hf_disk":
            yield from _iter_hf_disk(src, keys, hf_split)
        else:
            raise InputError(f"{src.path}: unknown input kind {src.kind!r}")
