"""Read a local Hugging Face model folder: config.json, the weight files, the tokenizer files.

Weights may be one ``model.safetensors``, safetensors shards with ``model.safetensors.index.json``,
one ``pytorch_model.bin`` or ``.bin`` shards with ``pytorch_model.bin.index.json``. Names, dtypes
and shapes are known (and checked: every shard the index names exists and holds exactly the
tensors the index assigns it) before any tensor data is read; tensors are then read one at a time.
Nothing here touches the network.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from megadfm.checkpoints.layout import WEIGHTS_FILE as SINGLE_FILE, WEIGHTS_INDEX_FILE as INDEX_FILE
from megadfm.checkpoints.safetensors_io import SafetensorsError, TensorSpec, read_header, read_tensors

BIN_FILE = "pytorch_model.bin"
BIN_INDEX_FILE = "pytorch_model.bin.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja")
"""Files that make up an HF tokenizer (the first one present is enough for AutoTokenizer)."""


class HFFolderError(ValueError):
    """A HF model folder is missing a file, or its files disagree with each other."""


class HFFolder:
    """A local HF checkpoint: ``config`` (config.json as a dict), ``specs`` {name: TensorSpec} and
    ``files`` (weight files in order); ``iter_tensors()`` streams (name, tensor) file by file."""

    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)
        if not os.path.isdir(self.folder):
            raise HFFolderError(f"HF model folder not found: {self.folder}")
        self.config = self._read_config()
        self.format, self.files, index_map = self._weight_files()
        self.specs: Dict[str, TensorSpec] = {}
        self.file_of: Dict[str, str] = {}
        for path in self.files:
            for name, spec in self._file_specs(path).items():
                if name in self.specs:
                    raise HFFolderError(f"tensor {name!r} appears in both {self.file_of[name]} and {path}")
                self.specs[name] = spec
                self.file_of[name] = path
        if index_map is not None:
            self._check_index(index_map)

    # ---- discovery ------------------------------------------------------------------------------
    def _read_config(self) -> dict:
        path = os.path.join(self.folder, "config.json")
        if not os.path.isfile(path):
            raise HFFolderError(f"{self.folder}: no config.json (is this a Hugging Face model folder?)")
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        except json.JSONDecodeError as e:
            raise HFFolderError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(config, dict):
            raise HFFolderError(f"{path}: expected a JSON object")
        return config

    def _weight_files(self) -> Tuple[str, List[str], Optional[Dict[str, str]]]:
        for fmt, index_name, single in (("safetensors", INDEX_FILE, SINGLE_FILE), ("bin", BIN_INDEX_FILE, BIN_FILE)):
            index_path = os.path.join(self.folder, index_name)
            if os.path.isfile(index_path):
                try:
                    with open(index_path, encoding="utf-8") as f:
                        weight_map = json.load(f).get("weight_map")
                except (json.JSONDecodeError, AttributeError) as e:
                    raise HFFolderError(f"{index_path}: not a valid index ({e})") from None
                if not isinstance(weight_map, dict) or not weight_map:
                    raise HFFolderError(f"{index_path}: no 'weight_map' mapping tensor names to shard files")
                names = sorted(set(weight_map.values()))
                missing = [n for n in names if not os.path.isfile(os.path.join(self.folder, n))]
                if missing:
                    raise HFFolderError(f"{index_path} names {len(missing)} shard(s) missing from {self.folder}: "
                                        f"{', '.join(missing)}")
                return fmt, [os.path.join(self.folder, n) for n in names], weight_map
            if os.path.isfile(os.path.join(self.folder, single)):
                return fmt, [os.path.join(self.folder, single)], None
        raise HFFolderError(f"{self.folder}: no weights ({SINGLE_FILE}, {INDEX_FILE}, {BIN_FILE} or {BIN_INDEX_FILE})")

    def _file_specs(self, path: str) -> Dict[str, TensorSpec]:
        if self.format == "safetensors":
            try:
                return read_header(path)[0]
            except SafetensorsError as e:
                raise HFFolderError(str(e)) from None
        return {name: TensorSpec(name, t.dtype, tuple(t.shape)) for name, t in _load_bin(path).items()}

    def _check_index(self, index_map: Dict[str, str]) -> None:
        problems = []
        for name, file in sorted(index_map.items()):
            path = os.path.join(self.folder, file)
            if name not in self.specs:
                problems.append(f"{name!r} is assigned to {file} but is not in it")
            elif self.file_of[name] != path:
                problems.append(f"{name!r} is assigned to {file} but is in {os.path.basename(self.file_of[name])}")
        extra = sorted(set(self.specs) - set(index_map))
        if extra:
            problems.append(f"{len(extra)} tensor(s) in the shards are not in the index: {extra[:5]}")
        if problems:
            raise HFFolderError(f"{self.folder}: the weight index disagrees with the shards: " + "; ".join(problems[:10]))

    # ---- data -----------------------------------------------------------------------------------
    @property
    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        return {n: s.shape for n, s in self.specs.items()}

    def names_in_file_order(self) -> List[str]:
        """Every tensor name, grouped by file in ``files`` order (the order iter_tensors yields)."""
        return [n for path in self.files for n in self.specs if self.file_of[n] == path]

    def iter_tensors(self) -> Iterator[Tuple[str, torch.Tensor]]:
        """(name, tensor) for every tensor, one file at a time; at most one tensor materialized at a time
        for safetensors (a .bin shard is memory-mapped while it is being read)."""
        for path in self.files:
            names = [n for n in self.specs if self.file_of[n] == path]
            if self.format == "safetensors":
                try:
                    yield from read_tensors(path, names)
                except SafetensorsError as e:
                    raise HFFolderError(str(e)) from None
            else:
                state = _load_bin(path)
                for name in names:
                    yield name, state.pop(name)
                del state

    def read_tensor(self, name: str) -> torch.Tensor:
        """One tensor by name (a second read, e.g. to compare a tied head with the embedding)."""
        path = self.file_of[name]
        if self.format == "safetensors":
            return next(read_tensors(path, [name]))[1]
        return _load_bin(path)[name]

    def tokenizer_files(self) -> List[str]:
        return [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(self.folder, n))]


def _load_bin(path: str) -> Dict[str, torch.Tensor]:
    """A pytorch_model*.bin state dict, memory-mapped when the file is in the zip format; tensors only."""
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:  # legacy (non-zip) serialization cannot be memory-mapped
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise HFFolderError(f"{path}: cannot be read as a PyTorch state dict ({e})") from None
    except Exception as e:
        raise HFFolderError(f"{path}: cannot be read as a PyTorch state dict ({e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HFFolderError(f"{path}: not a flat state dict of tensors")
    return state
