"""Block diffusion (``dfm.mode: block``) in an HF export: config.json and generation_config.json record the mode and
the block size, and the folder's ``diffusion_generate`` equals megadfm's own sampler token for token (threshold
and confidence, cache none and prefix, shift on and off, a ragged batch of prompts of 2, 4 and 9 tokens over
blocks of 4, EOS on and off), with the same steps and forward counts; every hidden state the in-tree block
forwards return is reproduced bit for bit; what block mode cannot do is refused naming the argument; a
full-mode export (and an old folder without the new fields) decodes as before.

Tiny random models with Qwen3's real vocabulary (the export ships the real tokenizer), built as in
tests/conversion/test_diffusion_generate.py, loaded in-process with transformers' trust_remote_code.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from tests.conversion.helpers import record_forward_calls
from tests.conversion.test_diffusion_generate import EOD, _tiny_model, hf_kwargs

BLOCK = 4
BUDGETS = [10, 7, 5]
CODE_IMPORTS = {"math", "dataclasses", "typing", "torch", "transformers"}


def _prompts():
    g = torch.Generator().manual_seed(4)
    # 2 tokens (the first block holds prompt and new tokens), 4 (a block boundary), 9 (two whole blocks and one more)
    return [torch.randint(1000, 100000, (n,), generator=g).tolist() for n in (2, 4, 9)]


def _export(work, tokenizer_dir, name, dfm_over, seed):
    from megadfm.config import MegaDFMConfig
    from megadfm.conversion.export import export_to_hf
    from megadfm.data.config import DataConfig
    from megadfm.dfm.config import DFMConfig
    from megadfm.dfm.model_loading import load_model_dir, save_model_dir

    model = _tiny_model({"time_conditioning": "adaln"}, seed=seed)
    cfg = MegaDFMConfig(model=model.cfg, dfm=DFMConfig(**dfm_over), data=DataConfig(tokenizer=tokenizer_dir))
    model_dir = str(work / f"{name}_model")
    save_model_dir(model, cfg, model_dir)
    folder = str(work / f"{name}_hf")
    export_to_hf(model_dir, folder, tokenizer=tokenizer_dir)
    loaded, run_cfg = load_model_dir(model_dir)
    return loaded, run_cfg, folder


def _load(folder):
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True, local_files_only=True).eval()


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tokenizer_dir):
    """name -> (in-tree model, run config, HF folder): block mode with and without the shift, and full mode."""
    work = tmp_path_factory.mktemp("block_export")
    specs = {"block_shift": ({"mode": "block", "block_size": BLOCK, "shift_logits": True}, 0),
             "block_noshift": ({"mode": "block", "block_size": BLOCK, "shift_logits": False, "scheduler": "cosine"}, 1),
             "full": ({"shift_logits": True}, 2)}
    return {name: _export(work, tokenizer_dir, name, dfm_over, seed) for name, (dfm_over, seed) in specs.items()}


def _in_tree(model, run_cfg, prompts, budgets, sampler):
    from megadfm.dfm.sampler import generate
    from megadfm.dfm.sampler_config import SamplerConfig

    return generate(model, prompts, budgets, SamplerConfig(**sampler), run_cfg.dfm, pad_token_id=run_cfg.data.pad_token_id)


def _hf(hf, prompts, budgets, sampler, pad):
    return hf.diffusion_generate(**hf_kwargs(prompts, budgets, None, sampler, pad))


def _assert_same(have, want, where):
    assert have.tokens == want.tokens, f"{where}: new tokens differ\n in-tree {want.tokens}\n export  {have.tokens}"
    assert torch.equal(have.sequences, want.sequences), f"{where}: sequences differ"
    assert have.finished == want.finished, where
    assert have.steps == want.steps, where
    assert (have.nfe_full, have.nfe_block, have.forward_rows) == (want.nfe_full, want.nfe_block, want.forward_rows), where


def test_the_export_records_the_mode_and_block_size(exports):
    from megadfm.conversion.hf_export_reader import load_hf_export

    for name, (_, run_cfg, folder) in exports.items():
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        with open(os.path.join(folder, "generation_config.json")) as f:
            sampler = json.load(f)["dfm_sampler"]
        want = ("block", BLOCK) if name.startswith("block") else ("full", None)
        assert (config["dfm_mode"], config["block_size"]) == want, name
        assert (sampler["mode"], sampler["block_size"]) == want, name
        hf = _load(folder)
        assert (hf.config.dfm_mode, hf.config.block_size) == want, name
        _, _, dfm = load_hf_export(folder)  # megadfm reads an export back with its mode
        assert (dfm.mode, dfm.block_size if dfm.mode == "block" else None) == want, name
        assert dfm.shift_logits == run_cfg.dfm.shift_logits
        for code in ("generation_megadfm.py", "block_generation_megadfm.py", "cache_generation_megadfm.py", "modeling_megadfm.py"):
            with open(os.path.join(folder, code)) as f:  # absolute imports: torch and transformers only
                imports = {line.split()[1].split(".")[0] for line in f
                           if line.startswith(("import ", "from ")) and not line.startswith("from .")}
            assert imports <= CODE_IMPORTS, (code, imports)
    with open(os.path.join(exports["block_shift"][2], "README.md")) as f:
        card = f.read()
    assert "**This is a block-diffusion model**" in card and f"blocks of {BLOCK} tokens" in card


SAMPLERS = {  # name -> settings (temperature 0: greedy, so the test is about the forwards, not the random stream)
    "threshold": dict(method="threshold", steps=8, threshold=0.5, temperature=0.0),
    "threshold_factor": dict(method="threshold", steps=8, threshold_mode="factor", threshold_factor=2.0, temperature=0.0),
    "confidence": dict(method="confidence", steps=12, temperature=0.0),
    "confidence_sampled": dict(method="confidence", steps=9, confidence="margin", temperature=0.8, seed=3),
}


@pytest.mark.parametrize("model_name", ["block_shift", "block_noshift"])
def test_block_diffusion_generate_matches_the_in_tree_sampler(exports, model_name):
    model, run_cfg, folder = exports[model_name]
    hf = _load(folder)
    pad = run_cfg.data.pad_token_id
    prompts = _prompts()
    # the EOS cases stop at a token this model really produces early in its greedy output
    eos = _in_tree(model, run_cfg, prompts, BUDGETS, dict(SAMPLERS["confidence"], eos_token_id=None)).tokens[0][2]
    stopped = False
    for sampler_name, sampler in SAMPLERS.items():
        for cache in ("none", "prefix"):
            for eos_id in (None, eos):
                settings = dict(sampler, cache=cache, eos_token_id=eos_id)
                where = f"{model_name} / {sampler_name} / cache {cache} / eos {eos_id}"
                want = _in_tree(model, run_cfg, prompts, BUDGETS, settings)
                _assert_same(_hf(hf, prompts, BUDGETS, settings, pad), want, where)
                for p, row in zip(prompts, want.sequences.tolist()):
                    assert row[:len(p)] == p, where  # the prompt is never rewritten
                if cache == "prefix":  # the exact cache ran: one prefill, then block-only passes
                    assert want.nfe_full == 1 and want.nfe_block >= want.steps, where
                else:
                    assert want.nfe_block == 0 and want.nfe_full == want.steps, where
                if eos_id is None:
                    assert [len(r) for r in want.tokens] == BUDGETS, where
                else:
                    stopped |= any(want.finished)
    assert stopped, "an EOS case must stop a row"


@pytest.mark.parametrize("cache", ["none", "prefix"])
@pytest.mark.parametrize("model_name", ["block_shift", "block_noshift"])
def test_every_block_forward_call_matches_the_in_tree_forward(exports, monkeypatch, cache, model_name):
    """Stronger than equal tokens: every hidden state the in-tree block forward returns, replayed call by call
    through the export's block forward on the same state, is equal bit for bit, with the same targets and counts."""
    import megadfm.dfm.sampler as sampler_module

    model, run_cfg, folder = exports[model_name]
    calls, restore = record_forward_calls(monkeypatch, sampler_module)
    prompts = _prompts()
    _in_tree(model, run_cfg, prompts, BUDGETS, dict(SAMPLERS["threshold"], cache=cache, eos_token_id=None))
    restore()
    assert len(calls) >= 4

    hf = _load(folder)
    gen = sys.modules[type(hf).__mro__[1].__module__]  # the folder's own generation_megadfm.py
    blocks = sys.modules[gen.__name__.rsplit(".", 1)[0] + ".block_generation_megadfm"]
    shift = run_cfg.dfm.shift_logits
    layout = gen.Layout(prompts, BUDGETS, None, hf.config.mask_token_id, run_cfg.data.pad_token_id, shift,
                        torch.device("cpu"))
    forward = blocks.make_block_forward(hf, layout, shift, BLOCK, cache)
    assert type(forward).__name__ == ("BlockCacheForward" if cache == "prefix" else "BlockCausalForward")
    for i, (x, rows, t, targets, block, hidden, target, counts) in enumerate(calls):
        with torch.no_grad():
            got, got_target = forward.hidden_for(x, rows, t, targets, block)
        where = f"{model_name}, cache {cache}, call {i} (rows {rows.tolist()})"
        assert torch.equal(got_target, target), where
        assert torch.equal(got, hidden), f"{where}: max diff {float((got - hidden).abs().max())}"
        assert (forward.nfe_full, forward.nfe_block, forward.rows) == counts, where


def test_block_mode_refuses_what_it_cannot_do(exports):
    folder = exports["block_shift"][2]
    hf = _load(folder)
    ids = torch.tensor([[EOD, 13, 14]])
    for kwargs, match in (({"method": "euler"}, "method: euler decodes every new position at once"),
                          ({"method": "threshold", "cache": "dual"}, "cache: dual caches what follows the block"),
                          ({"method": "threshold", "block_length": 8}, "block_length: a block-diffusion model decodes "
                                                                       "in its own blocks of config.block_size = 4")):
        with pytest.raises(ValueError, match=match):
            hf.diffusion_generate(ids, max_new_tokens=4, **kwargs)
    # block_length equal to the block size is the model's own blocks: accepted, the same tokens as 0
    a = hf.diffusion_generate(ids, max_new_tokens=6, method="threshold", block_length=BLOCK, temperature=0.0)
    b = hf.diffusion_generate(ids, max_new_tokens=6, method="threshold", block_length=0, temperature=0.0)
    assert a.tokens == b.tokens and len(a.tokens[0]) == 6


def test_a_hand_edited_mode_is_refused(exports, tmp_path):
    """generation_config's copy of the mode must agree with config.json's (the model's) mode."""
    import shutil

    folder = str(tmp_path / "edited")
    shutil.copytree(exports["block_shift"][2], folder)
    path = os.path.join(folder, "generation_config.json")
    with open(path) as f:
        gen = json.load(f)
    gen["dfm_sampler"]["block_size"] = 8
    with open(path, "w") as f:
        json.dump(gen, f)
    with pytest.raises(ValueError, match="dfm_sampler mode / block_size"):
        _load(folder).diffusion_generate(torch.tensor([[EOD, 13]]), max_new_tokens=4, method="threshold")


def test_full_mode_exports_and_old_folders_decode_as_before(exports, tmp_path):
    """A full-mode export decodes as the in-tree full-DFM sampler (semi-AR blocks of block_length, euler allowed);
    a folder exported before block diffusion (no dfm_mode / block_size anywhere) is full mode and gives the same."""
    import shutil

    model, run_cfg, folder = exports["full"]
    old = str(tmp_path / "old")
    shutil.copytree(folder, old)
    for name, keys in (("config.json", None), ("generation_config.json", "dfm_sampler")):
        path = os.path.join(old, name)
        with open(path) as f:
            data = json.load(f)
        target = data if keys is None else data[keys]
        for key in (("dfm_mode", "block_size") if keys is None else ("mode", "block_size")):
            del target[key]
        with open(path, "w") as f:
            json.dump(data, f)
    new_hf, old_hf = _load(folder), _load(old)
    assert (old_hf.config.dfm_mode, old_hf.config.block_size) == ("full", None)
    prompts, pad = _prompts(), run_cfg.data.pad_token_id
    for sampler in (dict(method="threshold", steps=6, block_length=3, threshold=0.5, temperature=0.0),
                    dict(method="euler", steps=5, temperature=1.0, seed=1),
                    dict(method="confidence", steps=8, block_length=4, temperature=0.0, cache="prefix")):
        settings = dict(sampler, eos_token_id=None)
        want = _in_tree(model, run_cfg, prompts, BUDGETS, settings)
        for hf, where in ((new_hf, "full export"), (old_hf, "old folder")):
            _assert_same(_hf(hf, prompts, BUDGETS, settings, pad), want, f"{where} / {sampler['method']}")


def test_block_mode_config_is_validated():
    from megadfm.conversion.hf_modeling.configuration_megadfm import MegaDFMQwen3Config

    with pytest.raises(ValueError, match="block_size must be an int >= 1 with dfm_mode 'block'"):
        MegaDFMQwen3Config(dfm_mode="block")
    with pytest.raises(ValueError, match="dfm_mode must be 'full' or 'block'"):
        MegaDFMQwen3Config(dfm_mode="blocks", block_size=4)
    with pytest.raises(ValueError, match="with dfm_mode 'full' it must be None"):
        MegaDFMQwen3Config(block_size=4)
