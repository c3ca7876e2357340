"""``model.diffusion_generate`` of an HF export equals megadfm's own sampler token for token.

Two tiny random megadfm models with Qwen3's real vocabulary (shift + polynomial n=2 + adaln;
no shift + cosine + adaln_single), their modulation made non-zero so t matters and their
embedding scaled so the predictions are peaked (confidences far apart compared with float
rounding), are saved as model folders, exported with the real tokenizer, and loaded in a fresh
process with the network off and megadfm unimportable (this file run as a script), where
``diffusion_generate`` runs every case. The in-tree ``megadfm.dfm.sampler.generate`` runs the same
cases here; new tokens, final sequences, steps and forward counts must be equal.

    python tests/conversion/test_diffusion_generate.py CASES.json OUT.pt FOLDER [FOLDER ...]   (the fresh process)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import torch

EOD = 151643  # <|endoftext|>
TEXTS = ["def add(a, b):\n    return", "import os\n"]  # two ragged prompts
SUFFIX_TEXT = "\n    return total\n"


def cases(prompts, suffix, eos, with_cache):
    """name -> (prompts, max_new_tokens, suffixes, sampler settings). ``eos``: a token the models produce,
    so the EOS rules (rows retired, output cut) are exercised. ``with_cache``: add the prefix / dual cases."""
    both, one = prompts, prompts[:1]
    base = {"eos_token_id": None, "seed": 0}
    out = {
        "confidence_greedy": (both, 8, None, dict(base, method="confidence", steps=8, temperature=0.0)),
        "confidence_block4_margin": (both, [8, 6], None, dict(base, method="confidence", steps=8, block_length=4,
                                                             confidence="margin", temperature=0.0)),
        "confidence_block4_sampled": (both, 8, None, dict(base, method="confidence", steps=6, block_length=4,
                                                         confidence="entropy", temperature=0.8, top_k=50, seed=3)),
        "confidence_scheduler_grid": (one, 9, None, dict(base, method="confidence", steps=4, time_grid="scheduler",
                                                        temperature=1.0, top_p=0.9, seed=5)),
        "threshold_fixed": (both, 8, None, dict(base, method="threshold", steps=8, block_length=4, threshold=0.5,
                                               temperature=0.0)),
        "threshold_factor_sampled": (both, [6, 9], None, dict(base, method="threshold", steps=5, threshold_mode="factor",
                                                             threshold_factor=1.0, temperature=0.7, top_p=0.9, seed=2)),
        "euler_greedy": (both, 8, None, dict(base, method="euler", steps=6, temperature=0.0)),
        "euler_sampled": (both, [7, 5], None, dict(base, method="euler", steps=5, time_grid="scheduler", temperature=1.0,
                                                  seed=1)),
        "infill_confidence": (both, 6, [suffix, suffix[:2]], dict(base, method="confidence", steps=6, block_length=3,
                                                                 temperature=0.0)),
        "infill_euler": (one, 5, [suffix], dict(base, method="euler", steps=4, temperature=1.0, seed=4)),
        "eos_confidence": (both, 10, None, dict(base, method="confidence", steps=10, temperature=0.0, eos_token_id=eos)),
        "eos_threshold": (both, 10, None, dict(base, method="threshold", steps=6, block_length=5, threshold=0.5,
                                              temperature=0.0, eos_token_id=eos)),
        "eos_euler": (both, 10, None, dict(base, method="euler", steps=10, temperature=0.0, eos_token_id=eos)),
    }
    if with_cache:
        out.update({
            "cache_prefix_confidence": (both, 8, None, dict(base, method="confidence", steps=8, block_length=4,
                                                           temperature=0.0, cache="prefix")),
            "cache_dual_confidence": (both, 8, None, dict(base, method="confidence", steps=8, block_length=4,
                                                         temperature=0.0, cache="dual")),
            # row 1 has one block of 3 over 8 steps: it sits out the block's first step(s), so later steps
            # mix rows with and without a cache, and the rows start their blocks at different columns
            "cache_dual_ragged_late_rows": (both, [8, 3], None, dict(base, method="confidence", steps=8, block_length=4,
                                                                    confidence="margin", temperature=0.0, cache="dual")),
            "cache_prefix_threshold_sampled": (both, 8, None, dict(base, method="threshold", steps=6, block_length=4,
                                                                  threshold=0.6, temperature=0.8, seed=7,
                                                                  cache="prefix")),
            "cache_dual_threshold_factor": (both, [9, 7], None, dict(base, method="threshold", steps=6, block_length=3,
                                                                    threshold_mode="factor", temperature=0.0,
                                                                    cache="dual")),
            "cache_dual_infill": (both, 6, [suffix, suffix[:2]], dict(base, method="confidence", steps=6, block_length=3,
                                                                     temperature=0.0, cache="dual")),
            "cache_prefix_infill_eos": (both, 10, [suffix, suffix], dict(base, method="threshold", steps=6, block_length=5,
                                                                        threshold=0.5, temperature=0.0, eos_token_id=eos,
                                                                        cache="prefix")),
        })
    return out


def hf_kwargs(prompts, max_new_tokens, suffixes, sampler, pad):
    """The diffusion_generate call of a case: prompts LEFT-padded in one tensor with an attention mask
    (the in-tree sampler gets plain lists), so the export's padding handling is part of the test."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p)
        mask[b, width - len(p):] = 1
    kwargs = dict(sampler, input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, suffix_ids=suffixes)
    return kwargs


# ---- the fresh process: the export alone ---------------------------------------------------------------

def _refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")


def main(cases_path, out_path, *folders):
    socket.socket.connect = _refuse
    socket.create_connection = _refuse
    sys.modules["megadfm"] = None  # `import megadfm` now raises ImportError
    from transformers import AutoModelForMaskedLM

    with open(cases_path) as f:
        all_cases = json.load(f)
    results = []
    for folder, folder_cases in zip(folders, all_cases):
        model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True, local_files_only=True).eval()
        out = {}
        for name, (prompts, max_new, suffixes, sampler, pad) in folder_cases.items():
            got = model.diffusion_generate(**hf_kwargs(prompts, max_new, suffixes, sampler, pad))
            out[name] = {"tokens": got.tokens, "sequences": got.sequences, "finished": got.finished, "steps": got.steps,
                         "counts": (got.nfe_full, got.nfe_block, got.forward_rows)}
        out["_cache_exactness"] = cache_exactness(model, folder_cases["confidence_greedy"])
        results.append(out)
    torch.save(results, out_path)


def cache_exactness(model, case):
    """forward_columns over a FRESH cache (same tokens, same t) equals the full forward at those columns:
    the cached path is the model's function whenever the cache is current."""
    prompts = case[0]
    L = max(len(p) for p in prompts) + 4
    ids = torch.full((len(prompts), L), EOD, dtype=torch.long)
    real = torch.zeros(len(prompts), L, dtype=torch.bool)
    for b, p in enumerate(prompts):
        ids[b, :len(p) + 4] = torch.tensor(p + [model.config.mask_token_id] * 4)
        real[b, :len(p) + 4] = True
    t = torch.tensor([0.3, 0.7][:len(prompts)])
    with torch.no_grad():
        full = model.model(ids, t=t, attention_mask=real).last_hidden_state
        hidden, kv = model.model.forward_with_kv(ids, t, real)
        cols = torch.arange(2, 5)
        part = model.model.forward_columns(ids[:, cols], t, cols, kv, real)
    return {"full_vs_kv": float((hidden - full).abs().max()), "columns_vs_full": float((part - full[:, cols]).abs().max())}


if __name__ == "__main__":
    main(*sys.argv[1:])
    sys.exit(0)


# ---- the test (megadfm imported only from here on) ------------------------------------------------------

import pytest  # noqa: E402

from tests.conversion.helpers import record_forward_calls  # noqa: E402

EMBED_SCALE = 8.0  # logits of std ~1.3: peaked enough that float rounding cannot reorder them, yet varied
MODELS = {  # name: (model overrides, dfm overrides)
    "shift_poly2_adaln": ({"time_conditioning": "adaln"}, {"shift_logits": True, "scheduler": "polynomial",
                                                            "scheduler_exponent": 2.0}),
    "noshift_cosine_adaln_single": ({"time_conditioning": "adaln_single", "tie_word_embeddings": False},
                                    {"shift_logits": False, "scheduler": "cosine"}),
}


def _tiny_model(model_overrides, seed):
    from megadfm.model import ModelConfig, Qwen3DFM

    cfg = ModelConfig(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, time_embedding_dim=32,
                      kernels="torch", **model_overrides)
    model = Qwen3DFM(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        model.embed_tokens.weight.mul_(EMBED_SCALE)  # peaked predictions: confidences far apart, few near-ties
        if model.lm_head is not None:
            model.lm_head.weight.mul_(EMBED_SCALE)
        model.init_mask_embedding()  # as a converted model: the mask row is the mean row, so context decides
        for name, p in model.named_parameters():  # zero-initialized modulation made non-zero: t matters
            if "adaln" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer_dir):
    """name -> (in-tree model, its run config, HF export folder)."""
    from megadfm.config import MegaDFMConfig
    from megadfm.conversion.export import export_to_hf
    from megadfm.data.config import DataConfig
    from megadfm.dfm.config import DFMConfig
    from megadfm.dfm.model_loading import load_model_dir, save_model_dir

    work = tmp_path_factory.mktemp("diffusion_generate")
    out = {}
    for i, (name, (model_over, dfm_over)) in enumerate(MODELS.items()):
        model = _tiny_model(model_over, seed=i)
        cfg = MegaDFMConfig(model=model.cfg, dfm=DFMConfig(**dfm_over), data=DataConfig(tokenizer=tokenizer_dir))
        model_dir = str(work / f"{name}_model")
        save_model_dir(model, cfg, model_dir)
        folder = str(work / f"{name}_hf")
        export_to_hf(model_dir, folder, tokenizer=tokenizer_dir)
        loaded, run_cfg = load_model_dir(model_dir)  # the in-tree sampler reads the folder the export read
        out[name] = (loaded, run_cfg, folder)
    return out


def _in_tree(model, run_cfg, case):
    from megadfm.dfm.sampler import generate
    from megadfm.dfm.sampler_config import SamplerConfig

    prompts, max_new, suffixes, sampler = case
    return generate(model, prompts, max_new, SamplerConfig(**sampler), run_cfg.dfm, suffixes=suffixes,
                    pad_token_id=run_cfg.data.pad_token_id)


def in_tree_has_cache() -> bool:
    """Whether megadfm's sampler has ``cache: prefix | dual`` (SamplerConfig.cache) to compare with."""
    from dataclasses import fields

    from megadfm.dfm.sampler_config import SamplerConfig

    return "cache" in {f.name for f in fields(SamplerConfig)}


def test_diffusion_generate_matches_the_in_tree_sampler(exported, qwen_tokenizer, tmp_path):
    with_cache = in_tree_has_cache()
    prompts = [qwen_tokenizer.encode(t) for t in TEXTS]
    suffix = qwen_tokenizer.encode(SUFFIX_TEXT)
    expected, to_run = [], []
    for name, (model, run_cfg, folder) in exported.items():
        # the EOS cases stop at a token this model really produces early in its greedy output
        probe = _in_tree(model, run_cfg, cases(prompts, suffix, None, False)["eos_confidence"])
        eos = probe.tokens[0][3]
        model_cases = cases(prompts, suffix, eos, with_cache)
        results = {case: _in_tree(model, run_cfg, spec) for case, spec in model_cases.items()}
        assert any(len(t) < 10 for t in results["eos_confidence"].tokens), "an EOS case must stop a row early"
        assert results["eos_euler"].finished[0] or results["eos_confidence"].finished[0]
        expected.append(results)
        pad = run_cfg.data.pad_token_id
        to_run.append({case: list(spec) + [pad] for case, spec in model_cases.items()})
    cases_path = tmp_path / "cases.json"
    cases_path.write_text(json.dumps(to_run))
    out_path = tmp_path / "out.pt"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), TOKENIZERS_PARALLELISM="false")
    folders = [folder for _, _, folder in exported.values()]
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(cases_path), str(out_path), *folders],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"the export's diffusion_generate failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    got_all = torch.load(out_path)
    for name, results, got in zip(exported, expected, got_all):
        for case, want in results.items():
            have = got[case]
            where = f"{name} / {case}"
            assert have["tokens"] == want.tokens, f"{where}: new tokens differ\n in-tree {want.tokens}\n export  {have['tokens']}"
            assert torch.equal(have["sequences"], want.sequences), f"{where}: sequences differ"
            assert have["finished"] == want.finished, where
            assert have["steps"] == want.steps, where
            assert have["counts"] == (want.nfe_full, want.nfe_block, want.forward_rows), where
            if case.startswith("cache_"):  # the block forwards really ran
                assert want.nfe_block > 0, where
        exact = got["_cache_exactness"]
        assert exact["full_vs_kv"] == 0.0 and exact["columns_vs_full"] < 1e-4, (name, exact)


SEAM_CASES = {  # cache mode -> a case of cases() whose every model call is replayed on the export
    "none": "confidence_block4_margin",
    "prefix": "cache_prefix_infill_eos",
    "dual": "cache_dual_ragged_late_rows",
}


@pytest.mark.parametrize("cache", list(SEAM_CASES))
def test_every_model_call_matches_the_in_tree_forward(exported, qwen_tokenizer, monkeypatch, cache):
    """Stronger than equal tokens (a peaked model can hide a small error): every hidden state the in-tree
    sampler's forward returns, replayed call by call through the export's forward on the same state,
    is equal bit for bit (same ops in the same order on CPU), with the same targets and counts."""
    if cache != "none" and not in_tree_has_cache():
        pytest.skip("megadfm's sampler has no cache option to compare with")
    import megadfm.dfm.sampler as sampler_module
    from transformers import AutoModelForMaskedLM

    prompts = [qwen_tokenizer.encode(t) for t in TEXTS]
    suffix = qwen_tokenizer.encode(SUFFIX_TEXT)
    for name, (model, run_cfg, folder) in exported.items():
        # generate() builds its forward through make_forward (with the cache option) or FullSequenceForward (before it)
        seam = "make_forward" if hasattr(sampler_module, "make_forward") else "FullSequenceForward"
        calls, restore = record_forward_calls(monkeypatch, sampler_module, seam)
        spec = cases(prompts, suffix, EOD, True)[SEAM_CASES[cache]]
        _in_tree(model, run_cfg, spec)
        restore()
        assert len(calls) > 2, name

        hf = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True, local_files_only=True).eval()
        gen = sys.modules[type(hf).__mro__[1].__module__]  # the folder's own generation_megadfm.py
        assert gen.__name__.startswith("transformers_modules.") and gen.__name__.endswith("generation_megadfm")
        prompts_b, max_new, suffixes, _ = spec
        counts = [max_new] * len(prompts_b) if isinstance(max_new, int) else max_new
        layout = gen.Layout(prompts_b, counts, suffixes, hf.config.mask_token_id, run_cfg.data.pad_token_id,
                            run_cfg.dfm.shift_logits, torch.device("cpu"))
        forward = (gen.FullForward(hf, layout, run_cfg.dfm.shift_logits) if cache == "none" else
                   gen.CachedForward(hf, layout, run_cfg.dfm.shift_logits, cache))
        for i, (x, rows, t, targets, block, hidden, target, nfe) in enumerate(calls):
            with torch.no_grad():
                got, got_target = forward.hidden_for(x, rows, t, targets, block)
            where = f"{name}, cache {cache}, call {i} (block {block}, rows {rows.tolist()})"
            assert torch.equal(got_target, target), where
            assert torch.equal(got, hidden), f"{where}: max diff {float((got - hidden).abs().max())}"
            assert (forward.nfe_full, forward.nfe_block) == nfe[:2], where
        if cache != "none":
            assert forward.nfe_block > 0 and forward.nfe_full > 0


def test_bad_arguments_are_refused_naming_the_argument(exported):
    from transformers import AutoModelForMaskedLM

    folder = next(iter(exported.values()))[2]
    hf = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True, local_files_only=True).eval()
    ids = torch.tensor([[EOD, 13, 14]])
    bad = [
        ({"method": "beam"}, "method must be one of confidence, threshold, euler"),
        ({"steps": 0}, "steps must be a positive int"),
        ({"method": "euler", "block_length": 4}, "block_length: semi-autoregressive blocks"),
        ({"method": "euler", "cache": "dual"}, "cache: the dual cache is built per block"),
        ({"method": "confidence", "cache": "full"}, "cache must be one of none, prefix, dual"),
        ({"threshold": 1.5}, "threshold must be in"),
        ({"top_p": 0.0}, "top_p must be in"),
        ({"confidence": "logit"}, "confidence must be one of"),
        ({"max_new_tokens": [4, 4]}, "max_new_tokens: 2 values for 1 prompts"),
        ({"max_new_tokens": None}, "max_new_tokens is required"),
        ({"attention_mask": torch.ones(1, 2)}, "attention_mask must have input_ids' shape"),
        ({"suffix_ids": [[1], [2]]}, "suffix_ids: 2 suffixes for 1 prompts"),
        ({"input_ids": torch.tensor([[EOD, hf.config.mask_token_id]])}, "input_ids: prompt 0 contains the mask token"),
    ]
    for kwargs, message in bad:
        call = dict({"input_ids": ids, "max_new_tokens": 4}, **kwargs)
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
            hf.diffusion_generate(**call)


def test_the_export_ships_the_generation_code_and_a_model_card(exported):
    folder = next(iter(exported.values()))[2]
    for code in ("generation_megadfm.py", "block_generation_megadfm.py", "cache_generation_megadfm.py"):  # imported by the first
        with open(os.path.join(folder, code)) as f:  # relative imports ("from .x") are the folder's own files
            imports = {line.split()[1].split(".")[0] for line in f
                       if line.startswith(("import ", "from ")) and not line.startswith("from .")}
        assert imports <= {"math", "dataclasses", "typing", "torch", "transformers"}, (code, imports)
    with open(os.path.join(folder, "README.md")) as f:
        card = f.read()
    for needle in ("AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)", "model.diffusion_generate(",
                   "`suffix_ids`", "`cache`", "**Caches are approximate.**", "shift_logits = True",
                   "scheduler polynomial (exponent 2.0)", "time conditioning `adaln`"):
        assert needle in card, needle
