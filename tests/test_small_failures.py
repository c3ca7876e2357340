"""Small failures that each give one clear error (or now work): the tools' and loaders' edges.

DeepSpeed template keys the YAML owns, an empty preprocessing input, a missing tokenizer folder, a damaged
preprocessing summary, a truncated checkpoint given to the HF export, a data prefix without its
``_text_document`` suffix, and tools/generate.py on the project's own HF export and init folder.
(Duplicate YAML keys and ``--set`` on an unknown section: tests/test_config.py.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch

from megadfm.config import MegaDFMConfig, ModelConfig, dump_config
from megadfm.config_base import ConfigError
from megadfm.data.indexed import IndexedDataset, IndexedDatasetError, IndexedDatasetWriter
from megadfm.training.config import TrainingConfig
from megadfm.training.ds_config import build_ds_config
from tests.conftest import REPO


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_tool_small_failures", os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- DeepSpeed template keys owned by the YAML ----------------------------------------------------

def _template(tmp_path, body: dict) -> str:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(body))
    return str(path)


def test_ds_template_gradient_clipping_is_rejected_not_replaced(tmp_path):
    path = _template(tmp_path, {"gradient_clipping": 5.0, "zero_optimization": {"stage": 3}})
    with pytest.raises(ConfigError) as e:
        build_ds_config(TrainingConfig(ds_config=path, grad_clip=1.0), dp_world_size=1)
    assert str(e.value) == (f"config key 'training.ds_config': {path} sets gradient_clipping=5.0, but training.grad_clip "
                            "owns it (now 1.0); remove gradient_clipping from the DeepSpeed template and set "
                            "training.grad_clip in the YAML")
    # agreeing with the YAML is fine, as for the batch sizes
    ds = build_ds_config(TrainingConfig(ds_config=_template(tmp_path, {"gradient_clipping": 1.0}), grad_clip=1.0), 1)
    assert ds["gradient_clipping"] == 1.0


def test_ds_template_fp16_is_rejected(tmp_path):
    path = _template(tmp_path, {"fp16": {"enabled": True}})
    with pytest.raises(ConfigError, match=r"sets fp16.enabled=true, but training.precision owns it"):
        build_ds_config(TrainingConfig(ds_config=path), dp_world_size=1)


# ---- tools/preprocess_data.py -----------------------------------------------------------------

@pytest.fixture(scope="module")
def preprocess():
    return _tool("preprocess_data")


def test_empty_input_exits_non_zero_and_writes_nothing(tmp_path, preprocess, tokenizer_dir, capsys):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    prefix = str(tmp_path / "out" / "corpus")
    code = preprocess.main(["--input", str(tmp_path / "empty.jsonl"), "--tokenizer", tokenizer_dir,
                            "--output-prefix", prefix, "--json-keys", "content", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert (f"preprocess_data.py: error: no documents in --input {tmp_path / 'empty.jsonl'} (--glob None, "
            "--json-keys content): nothing to tokenize, nothing written") in err
    assert "Traceback" not in err and not os.path.exists(tmp_path / "out")


def test_missing_tokenizer_folder_is_a_tokenizer_error(tmp_path, preprocess, capsys):
    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n')
    missing = str(tmp_path / "no_tokenizer")
    code = preprocess.main(["--input", str(tmp_path / "a.jsonl"), "--tokenizer", missing,
                            "--output-prefix", str(tmp_path / "corpus"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"tokenizer folder not found: {missing}" in err and "python tools/build_qwen_tokenizer.py --out" in err
    assert "FileNotFoundError" not in err and "Traceback" not in err


def test_garbage_summary_is_named(tmp_path, preprocess, tokenizer_dir, capsys):
    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n')
    prefix = str(tmp_path / "corpus")
    summary = f"{prefix}_summary.json"
    with open(summary, "w") as f:
        f.write('{"fingerprint": "abc", "outp')
    code = preprocess.main(["--input", str(tmp_path / "a.jsonl"), "--tokenizer", tokenizer_dir,
                            "--output-prefix", prefix, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"preprocess_data.py: error: {summary}: not valid JSON (" in err and "pass --force to rebuild" in err
    assert "JSONDecodeError" not in err and "Traceback" not in err
    with open(summary, "w") as f:
        json.dump([1, 2], f)
    assert preprocess.main(["--input", str(tmp_path / "a.jsonl"), "--tokenizer", tokenizer_dir,
                            "--output-prefix", prefix, "--no-progress"]) == 2
    assert "not a preprocessing summary (no 'outputs' mapping)" in capsys.readouterr().err


# ---- data prefix without its suffix ------------------------------------------------------------

def test_prefix_without_text_document_suffix_gets_a_hint(tmp_path):
    prefix = str(tmp_path / "corpus")
    with IndexedDatasetWriter(prefix + "_text_document", np.int32) as w:
        w.add_document(np.arange(5))
    with pytest.raises(IndexedDatasetError) as e:
        IndexedDataset(prefix)
    assert str(e.value) == (f"{prefix}.idx: file not found (an indexed dataset needs both P.bin and P.idx); did you "
                            f"mean {prefix}_text_document? (tools/preprocess_data.py names its outputs "
                            "{output_prefix}_{json key}_document)")
    with pytest.raises(IndexedDatasetError, match=r"did you mean .*_text_document\? \(a prefix is given without"):
        IndexedDataset(prefix + "_text_document.idx")
    with pytest.raises(IndexedDatasetError) as e:
        IndexedDataset(str(tmp_path / "other"))
    assert "did you mean" not in str(e.value)


# ---- tools/convert_megadfm_to_hf.py on a truncated checkpoint -----------------------------------

def test_export_of_truncated_checkpoint_names_the_file(tmp_path, capsys):
    step_dir = tmp_path / "run" / "checkpoints" / "step_00000003"
    os.makedirs(step_dir)
    dump_config(MegaDFMConfig(), str(step_dir / "config.yaml"))
    (step_dir / "megadfm_meta.json").write_text(json.dumps({"step": 3, "world_size": 1, "tag": "step_00000003"}))
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_00000003")
    weights = step_dir / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.zeros(4096)}}, str(weights))
    with open(weights, "r+b") as f:  # a copy cut short
        f.truncate(os.path.getsize(weights) // 2)
    code = _tool("convert_megadfm_to_hf").main(["--ckpt", str(step_dir), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"convert_megadfm_to_hf: error: {weights}: not a complete torch checkpoint file" in err
    assert "nothing was written under the output name" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "out")


# ---- tools/generate.py on the project's own HF export and init folder ------------------------------

@pytest.fixture(scope="module")
def init_and_export(tmp_path_factory, tokenizer_dir):
    from megadfm.conversion.export import export_to_hf
    from megadfm.conversion.hf_import import convert_hf_to_megadfm
    from tests.conversion.helpers import save_hf_folder, tiny_hf_model

    work = tmp_path_factory.mktemp("sources")
    hf = save_hf_folder(tiny_hf_model(seed=7), str(work / "hf"), "single", tokenizer_dir)
    init = str(work / "init")
    convert_hf_to_megadfm(hf, init, time_conditioning="adaln", time_embedding_dim=32)
    export = str(work / "export")
    export_to_hf(init, export)
    return init, export


@pytest.mark.parametrize("kind", ["init", "export"])
def test_generate_reads_init_folder_and_hf_export(kind, init_and_export, capsys, no_network):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    generate = _tool("generate")
    folder = init_and_export[0] if kind == "init" else init_and_export[1]
    code = generate.main(["--model-dir", folder, "--prompt", "def f(x):", "--max-new-tokens", "3", "--steps", "2",
                          "--no-stop-at-eos", "--device", "cpu", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["new_tokens"] == 3 and len(out["results"][0]["tokens"]) == 3


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    """mkstemp makes its files 0600: after the rename a shared dataset or tokenizer would be private."""
    from megadfm.io_utils import write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(str(tmp_path / "a.json"), "{}")
        os.umask(0o027)
        write_text_atomic(str(tmp_path / "b.json"), "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640
