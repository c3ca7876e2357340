"""tools/evaluate.py end to end on real parts: a tiny megadfm model folder and a tiny random
transformers Qwen3ForCausalLM (the AR baseline) with the real Qwen3 tokenizer, on HumanEval, infill
and likelihood, in one run; the JSON holds everything a score must be read with, and a second run
reproduces it exactly. Plus evaluation during a 2-process ZeRO-3 training run, and an HF export that
evaluates as the checkpoint it came from."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

TOOL = os.path.join(REPO, "tools", "evaluate.py")


def _tool_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
TASKS = ("humaneval", "infill", "likelihood")
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, max_position_embeddings=512)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir, stdlib_prefix):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from megadfm.config import BlendSource, DataConfig, MegaDFMConfig, ModelConfig
    from megadfm.dfm.model_loading import save_model_dir
    from megadfm.model import Qwen3DFM

    d = tmp_path_factory.mktemp("eval_models")
    cfg = MegaDFMConfig(model=ModelConfig(kernels="torch", time_embedding_dim=32, **TINY),
                        data=DataConfig(tokenizer=tokenizer_dir, blend=[BlendSource(stdlib_prefix)], seq_len=128))
    save_model_dir(Qwen3DFM(cfg.model, seed=0), cfg, str(d / "dfm"))
    torch.manual_seed(0)
    hf = Qwen3ForCausalLM(Qwen3Config(vocab_size=151936, tie_word_embeddings=True, **TINY))
    hf.save_pretrained(str(d / "ar"))
    for name in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, name), d / "ar" / name)
    return d


def evaluate(models, out, *extra):
    cmd = [sys.executable, TOOL, "--model", str(models / "dfm"), "--ar-baseline", str(models / "ar"), "--tasks", *TASKS,
           "--limit", "2", "--out", str(out), "--no-progress", "--sampler", "euler-16", "--steps", "4",
           "--max-new-tokens", "12", "--documents", "3", "--points", "3", "--infill-count", "4", "--timeout", "5", *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {}
    for label in os.listdir(out):
        for task in TASKS:
            with open(os.path.join(out, label, f"{task}.json")) as f:
                results[(label.split("_")[0], task)] = json.load(f)
    return proc, results


def test_dfm_and_ar_baseline_side_by_side(models, tmp_path):
    proc, results = evaluate(models, tmp_path / "a")
    assert set(results) == {(kind, task) for kind in ("dfm", "ar") for task in TASKS}
    for (kind, task), doc in results.items():
        src = doc["model"]["source"]
        assert len(src["weights_sha256"]) == 64 and src["path"].endswith(kind)
        assert doc["model"]["sampler"]["method"] == "euler" and doc["model"]["sampler"]["steps"] == 4
        assert doc["model"]["sampler"]["temperature"] == 0.0 and "eos_token_id" in doc["model"]["sampler"]
        assert doc["versions"]["torch"] and doc["wall_seconds"] > 0 and doc["settings"]["limit"] == 2
        if task != "likelihood":
            assert doc["generation"]["nfe"] > 0 and doc["generation"]["new_tokens"] >= 0
            for score in doc["scores"].values():
                assert 0.0 <= score["mean"] <= 1.0 and score["stderr"] >= 0.0
    # DFM with 4 solver steps: at most 4 forward passes per sampler call (a step where no row jumps runs nothing);
    # AR: at most one per new token
    he = results[("dfm", "humaneval")]
    assert 0 < he["generation"]["nfe"] <= 4 * he["generation"]["generate_calls"]
    assert he["generation"]["nfe"] == he["generation"]["nfe_full"] and he["generation"]["nfe_block"] == 0
    assert results[("ar", "humaneval")]["generation"]["nfe"] <= 12 * results[("ar", "humaneval")]["generation"]["generate_calls"]
    assert results[("dfm", "infill")]["model"]["infill_mode"] == "suffix"
    assert results[("ar", "infill")]["model"]["infill_mode"] == "prefix_only"
    dfm_l, ar_l = results[("dfm", "likelihood")], results[("ar", "likelihood")]
    assert dfm_l["tokens"] == ar_l["tokens"] > 0  # the bound and the AR NLL are over the same tokens
    assert math.isfinite(dfm_l["nelbo_per_token"]) and math.isfinite(ar_l["nll_per_token"])
    assert "| dfm" in proc.stdout and "| ar" in proc.stdout  # the markdown summary

    # the same command reproduces every score
    _, again = evaluate(models, tmp_path / "b")
    for key, doc in results.items():
        assert again[key].get("scores") == doc.get("scores"), key
        assert again[key].get("nelbo_per_token") == doc.get("nelbo_per_token")
        assert again[key].get("nll_per_token") == doc.get("nll_per_token")


def test_bad_model_path_is_one_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, TOOL, "--model", str(tmp_path / "nope"), "--tasks", "likelihood"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and str(tmp_path / "nope") in proc.stderr


def test_evaluation_during_two_process_training_and_export_identity(tmp_path, stdlib_prefix, tokenizer_dir):
    from tests.training.engine_helpers import assert_ok, run, tiny_config, write_config

    run_dir = str(tmp_path / "run")
    cfg = tiny_config(run_dir, stdlib_prefix, tokenizer_dir, training={"train_steps": 2},
                      checkpoint={"save_interval": 2},
                      eval={"interval": 2, "tasks": ["likelihood", "infill"], "infill_limit": 2, "likelihood_documents": 2,
                            "likelihood_points": 2, "sampler": "euler-16", "batch_size": 2})
    assert_ok(run(write_config(str(tmp_path / "c.yaml"), cfg), nproc=2))
    records = [json.loads(line) for line in open(os.path.join(run_dir, "telemetry", "metrics.jsonl"))]
    (ev,) = [r for r in records if r["kind"] == "eval"]
    assert ev["step"] == 2 and 0 <= ev["eval/infill/exact_match"] <= 1
    assert math.isfinite(ev["eval/likelihood/nelbo_per_token"])
    with open(os.path.join(run_dir, "eval", "step_00000002", "training", "infill.json")) as f:
        assert json.load(f)["model"]["source"]["step"] == 2

    # an HF export of that checkpoint is the same model to the evaluator: same weights hash, same bound
    # (the tool's main() in this process: its command-line path is the other tests' subject)
    from megadfm.conversion.export import export_to_hf

    export_to_hf(run_dir, str(tmp_path / "hf"))
    evaluate_tool = _tool_module()
    out = {}
    for name, src in (("ckpt", run_dir), ("hf", str(tmp_path / "hf"))):
        assert evaluate_tool.main(["--model", src, "--tasks", "likelihood", "--documents", "2", "--points", "2",
                                   "--data", stdlib_prefix, "--out", str(tmp_path / f"e_{name}"), "--no-progress"]) == 0
        (label,) = os.listdir(tmp_path / f"e_{name}")
        with open(tmp_path / f"e_{name}" / label / "likelihood.json") as f:
            out[name] = json.load(f)
    assert out["ckpt"]["model"]["source"]["weights_sha256"] == out["hf"]["model"]["source"]["weights_sha256"]
    assert out["ckpt"]["nelbo_per_token"] == pytest.approx(out["hf"]["nelbo_per_token"], rel=1e-6)


def test_cached_sampler_forwards_are_counted(tokenizer_dir):
    """A KV-cached block forward bypasses the module's __call__: the DFM adapter must count it from the sampler."""
    from megadfm.data.tokenizer import load_tokenizer
    from megadfm.eval.models import DFMEvalModel
    from megadfm.eval.presets import sampler_from_preset
    from megadfm.model import ModelConfig, Qwen3DFM

    model = Qwen3DFM(ModelConfig(kernels="torch", time_embedding_dim=32, **TINY), seed=0).eval()
    m = DFMEvalModel(kind="dfm", label="t", tokenizer=load_tokenizer(tokenizer_dir), identity={}, batch_size=2,
                     sampler=sampler_from_preset("threshold-0.9-dual", block_length=4, steps=4), model=model)
    m.fill([("def f(x):\n", "\n    return y\n", 8), ("a = 1\n", "\nb = 2\n", 8)])
    st = m.stats
    assert st.nfe_block > 0 and st.nfe_full > 0 and st.nfe == st.nfe_full + st.nfe_block
