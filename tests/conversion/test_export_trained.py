"""Real DeepSpeed runs (2-process ZeRO-3 from a converted HF init folder, 2-process ZeRO-2, ZeRO-0), exported to HF
folders that load offline in a fresh process and reproduce megadfm's logits (bidirectional, with t)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from megadfm.checkpoints.source import SourceError, open_source
from megadfm.checkpoints.strict_load import load_source, load_state_dict
from megadfm.config import load_config
from megadfm.conversion.export import export_to_hf
from megadfm.conversion.hf_import import convert_hf_to_megadfm
from megadfm.conversion.metadata import METADATA_FILE, verify
from megadfm.conversion.name_map import ConversionError
from megadfm.model import Qwen3DFM
from tests.conftest import REPO
from tests.conversion.helpers import load_exports_offline, sample_inputs, save_hf_folder, tiny_hf_model
from tests.training.engine_helpers import assert_ok, run, tiny_config, write_config

STEPS = 2
RUNS = {  # name: (ZeRO stage, processes, model overrides)
    "zero3": (3, 2, {"time_conditioning": "adaln"}),
    "zero2": (2, 2, {"time_conditioning": "adaln_single", "tie_word_embeddings": False}),
    "zero0": (0, 1, {"time_conditioning": "none"}),  # ZeRO-0 writes one unpartitioned model file whatever the world size
}
AR_RUN = {"model": {"time_conditioning": "none", "attention_mode": "causal"},  # dfm.objective: ar, a plain causal Qwen3
          "dfm": {"objective": "ar", "loss_weighting": "none", "loss_normalizer": "masked"}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, stdlib_prefix, tokenizer_dir):
    """name -> run dir. ZeRO-3 starts from a converted tiny HF Qwen3 (the full HF -> megadfm -> train path)."""
    work = tmp_path_factory.mktemp("trained")
    hf_dir = save_hf_folder(tiny_hf_model(seed=11), str(work / "hf"), "single", tokenizer_dir)
    init = str(work / "init")
    convert_hf_to_megadfm(hf_dir, init, time_conditioning="adaln", time_embedding_dim=32)
    runs = {}
    for name, (stage, nproc, model) in RUNS.items():
        run_dir = str(work / name)
        training = {"train_steps": STEPS, "warmup_steps": 1, "zero_stage": stage,
                    "ds_config": os.path.join(REPO, f"ds_configs/cpu_zero{stage}.json")}
        if name == "zero3":
            training["init_from"] = init
        cfg = tiny_config(run_dir, stdlib_prefix, tokenizer_dir, model=dict(model, head_dim=16), training=training,
                          checkpoint={"save_interval": STEPS})
        proc = run(write_config(str(work / f"{name}.yaml"), cfg), nproc=nproc, launcher="spawn" if nproc > 1 else "python")
        assert_ok(proc)
        if name == "zero3":
            assert "initialisation: megadfm init folder" in proc.stdout + proc.stderr
        runs[name] = run_dir
    run_dir = str(work / "ar")
    cfg = tiny_config(run_dir, stdlib_prefix, tokenizer_dir, model=dict(AR_RUN["model"], head_dim=16), dfm=AR_RUN["dfm"],
                      training={"train_steps": STEPS, "warmup_steps": 1}, checkpoint={"save_interval": STEPS})
    assert_ok(run(write_config(str(work / "ar.yaml"), cfg), nproc=1))
    runs["ar"] = run_dir
    return runs


def megadfm_logits(run_dir, inputs):
    """megadfm's own answer: the checkpoint's config and weights (DeepSpeed's consolidation), torch kernels."""
    step_dir = os.path.join(run_dir, "checkpoints", f"step_{STEPS:08d}")
    cfg = load_config(os.path.join(step_dir, "config.yaml"), ["model.kernels=torch"])
    model = Qwen3DFM(cfg.model).eval()
    if cfg.training.zero_stage == 0:  # no ZeRO partitions: the module's weights are in the model-states file
        path = os.path.join(step_dir, "mp_rank_00_model_states.pt")
        module = torch.load(path, weights_only=False)["module"]
        load_state_dict(model, {k[len("model."):]: v for k, v in module.items()}, path)
    else:  # what init_from and generation read: consolidated by zero_to_fp32, loaded strictly
        load_source(model, open_source(step_dir))
    with torch.no_grad():
        hidden = model(inputs["input_ids"], t=inputs["t"], attention_mask=inputs["attention_mask"])
        return model.logits(hidden), hidden, model


def test_exports_load_offline_and_match_megadfm(trained, tmp_path, qwen_tokenizer):
    inputs = sample_inputs(qwen_tokenizer)
    folders, expected = [], []
    dfm_runs = {name: trained[name] for name in RUNS}
    for name, run_dir in dfm_runs.items():
        out = str(tmp_path / f"hf_{name}")
        # a run dir for ZeRO-3, its checkpoints/ dir with an explicit step for the others
        ckpt, step = (run_dir, None) if name == "zero3" else (os.path.join(run_dir, "checkpoints"), STEPS)
        meta = export_to_hf(ckpt, out, step=step, max_shard_size="6MB" if name == "zero3" else "2GB")
        assert meta["step"] == STEPS and meta["source"]["zero_stage"] == RUNS[name][0]
        assert meta["source"]["world_size"] == RUNS[name][1]
        assert ("ZeRO-0" if name == "zero0" else "zero_to_fp32") in meta["source"]["weights"]
        assert verify(out) == {}
        for f in ("config.json", "generation_config.json", "configuration_megadfm.py", "modeling_megadfm.py",
                  "generation_megadfm.py", "block_generation_megadfm.py", "cache_generation_megadfm.py",
                  "tokenizer.json", METADATA_FILE):
            assert os.path.isfile(os.path.join(out, f)), f
        assert os.path.isfile(os.path.join(out, "model.safetensors.index.json")) == (name == "zero3")
        logits, hidden, model = megadfm_logits(run_dir, inputs)
        assert meta["parameter_count"] == sum(p.numel() for p in model.parameters())
        folders.append(out)
        expected.append((logits, hidden))
    loaded = load_exports_offline(folders, inputs, str(tmp_path))
    for name, got, (logits, hidden) in zip(dfm_runs, loaded, expected):
        assert got["class"] == "MegaDFMQwen3ForMaskedLM" and got["base_class"] == "MegaDFMQwen3Model", name
        assert got["mask_token"] == "<|mask|>" and got["mask_token_id"] == got["gen_mask_token_id"] == 151669
        assert got["dfm_sampler"]["steps"] > 0 and got["dtype"] == "torch.float32"
        assert torch.isneginf(got["logits"][..., 151669]).all()
        torch.testing.assert_close(got["logits"], logits, atol=1e-5, rtol=1e-5, msg=f"{name}: logits differ")
        torch.testing.assert_close(got["hidden"], hidden, atol=1e-5, rtol=1e-5, msg=f"{name}: hidden states differ")
    # t really matters after training (so the comparison above exercised the time conditioning)
    zero3 = loaded[0]["logits"]
    other_t = megadfm_logits(trained["zero3"], dict(inputs, t=torch.tensor([0.9, 0.1])))[0]
    assert not torch.allclose(other_t, zero3)


def test_as_qwen3_refused_after_training_with_the_reason(trained, tmp_path):
    with pytest.raises(ConversionError) as err:
        export_to_hf(trained["zero3"], str(tmp_path / "q3"), as_qwen3=True)
    msg = str(err.value)
    assert "--as-qwen3 refused" in msg and "non-zero" in msg and "layers.0.adaln.proj" in msg and "has no input t" in msg
    assert not os.path.lexists(tmp_path / "q3")


def test_as_qwen3_without_time_conditioning_and_bad_step(trained, tmp_path):
    """time_conditioning none: a plain Qwen3ForCausalLM export is allowed (with the causal-attention warning)."""
    meta = export_to_hf(trained["zero0"], str(tmp_path / "q3"), as_qwen3=True)
    assert meta["format"] == "qwen3" and any("causally" in w for w in meta["warnings"])
    with open(tmp_path / "q3" / "config.json") as f:
        assert json.load(f)["model_type"] == "qwen3"
    from transformers import Qwen3ForCausalLM

    _, info = Qwen3ForCausalLM.from_pretrained(str(tmp_path / "q3"), output_loading_info=True)
    assert not any(info.values()), info
    with pytest.raises(SourceError, match=r"no complete checkpoint for step 7; complete steps: \[2\]"):
        export_to_hf(trained["zero0"], str(tmp_path / "bad"), step=7)
    assert not os.path.lexists(tmp_path / "bad")


def test_export_refuses_a_tokenizer_the_run_did_not_train_with(trained, tmp_path, tokenizer_dir):
    """Same vocabulary, other bytes (here: re-serialised with other whitespace) -> another sha256: refused by
    default, naming both; shipped only when asked for explicitly."""
    other = tmp_path / "other_tok"
    shutil.copytree(tokenizer_dir, other)
    with open(other / "tokenizer.json") as f:
        data = json.load(f)
    with open(other / "tokenizer.json", "w") as f:
        json.dump(data, f, indent=1)
    with pytest.raises(SourceError, match=r"is not the tokenizer.json the run was trained with"):
        export_to_hf(trained["zero3"], str(tmp_path / "hf"), tokenizer=str(other))
    assert not os.path.lexists(tmp_path / "hf")
    export_to_hf(trained["zero3"], str(tmp_path / "hf"), tokenizer=str(other), allow_other_tokenizer=True)
    assert os.path.isfile(tmp_path / "hf" / "config.json")


def test_ar_run_exports_as_qwen3_that_transformers_loads_and_generates_with(trained, tmp_path, qwen_tokenizer):
    """dfm.objective: ar trained a causal model without t: --as-qwen3 gives a Qwen3ForCausalLM computing megadfm's logits
    (<|mask|> aside: megadfm never predicts it), with no warning, and transformers' generate runs on it offline."""
    from transformers import Qwen3ForCausalLM

    out = tmp_path / "ar_qwen3"
    meta = export_to_hf(trained["ar"], str(out), as_qwen3=True)
    assert meta["format"] == "qwen3" and meta["warnings"] == []
    assert meta["run_config"]["dfm"]["objective"] == "ar"
    model, info = Qwen3ForCausalLM.from_pretrained(str(out), output_loading_info=True, local_files_only=True)
    assert not any(info.values()), info
    inputs = sample_inputs(qwen_tokenizer)
    ours, _, _ = megadfm_logits(trained["ar"], inputs)
    with torch.no_grad():
        theirs = model.eval()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    keep = torch.ones(theirs.shape[-1], dtype=torch.bool)
    keep[151669] = False
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(theirs[real][:, keep], ours[real][:, keep], atol=1e-5, rtol=1e-5)
    prompt = torch.tensor([qwen_tokenizer.encode("def add(a, b):")])
    generated = model.generate(input_ids=prompt, max_new_tokens=5, do_sample=False, pad_token_id=151643)
    assert generated.shape == (1, prompt.shape[1] + 5) and torch.equal(generated[:, :prompt.shape[1]], prompt)
