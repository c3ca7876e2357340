"""The streaming safetensors writer/reader against the safetensors library itself."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megadfm.checkpoints.layout import WEIGHTS_INDEX_FILE as INDEX_FILE
from megadfm.checkpoints.safetensors_io import SafetensorsError, ShardedSafetensorsWriter, TensorSpec, parse_size, read_tensors
from megadfm.io_utils import sha256_file


def tensors():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(5, 7, generator=g).to(torch.bfloat16), "b": torch.randn(3, generator=g),
            "c.int": torch.arange(6, dtype=torch.int64).view(2, 3), "d.bool": torch.tensor([True, False, True]),
            "e.empty": torch.zeros(0, 4), "f.scalar": torch.tensor(2.5, dtype=torch.float16)}


@pytest.mark.parametrize("max_bytes,n_files", [(10_000, 1), (50, 4)])
def test_writer_output_reads_back_with_the_safetensors_library(tmp_path, max_bytes, n_files):
    data = tensors()
    specs = [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in data.items()]
    writer = ShardedSafetensorsWriter(str(tmp_path), specs, max_bytes)
    for k, v in data.items():
        writer.write(k, v)
    sha = writer.close()
    assert len(sha) == n_files and all(sha[f] == sha256_file(str(tmp_path / f)) for f in sha)
    files = sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors"))
    assert len(files) == n_files
    if n_files > 1:
        with open(tmp_path / INDEX_FILE) as f:
            index = json.load(f)
        assert set(index["weight_map"]) == set(data) and index["metadata"]["total_size"] == sum(s.nbytes for s in specs)
    got = {}
    for name in files:
        with safe_open(str(tmp_path / name), framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            got.update({k: f.get_tensor(k) for k in f.keys()})
        got_ours = dict(read_tensors(str(tmp_path / name)))
        assert all(torch.equal(got_ours[k], got[k]) and got_ours[k].dtype == got[k].dtype for k in got_ours)
    assert set(got) == set(data)
    assert all(torch.equal(got[k], data[k]) and got[k].dtype == data[k].dtype for k in data)


def test_reader_reads_library_files_and_rejects_truncation(tmp_path):
    data = tensors()
    path = str(tmp_path / "x.safetensors")
    save_file(data, path)
    got = dict(read_tensors(path))
    assert all(torch.equal(got[k], data[k]) for k in data)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 1)
    with pytest.raises(SafetensorsError, match="truncated"):
        dict(read_tensors(path))


def test_writer_refuses_out_of_plan_tensors(tmp_path):
    writer = ShardedSafetensorsWriter(str(tmp_path), [TensorSpec("a", torch.float32, (2,))], 100)
    with pytest.raises(ValueError, match="planned torch.float32"):
        writer.write("a", torch.zeros(3))
    with pytest.raises(ValueError, match="plan order"):
        writer.write("b", torch.zeros(2))
    writer.abort()


def test_parse_size():
    assert parse_size("2GB") == 2 * 10 ** 9 and parse_size("1.5GiB") == int(1.5 * 2 ** 30) and parse_size("500mb") == 5 * 10 ** 8
    assert parse_size("1234") == 1234
    for bad in ("2XB", "", "-1GB", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)
