"""Initialisation from a (tiny, random) HF Qwen3 folder: the trainer's step-0 loss is the DFM loss of
the HF weights, computed independently here; a bad init folder fails naming the key."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from tests.conftest import REPO
from tests.training.engine_helpers import assert_ok, run, step_records, tiny_config, write_config


@pytest.fixture(scope="module")
def hf_init_folder(tmp_path_factory, tokenizer_dir):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    root = tmp_path_factory.mktemp("hf")
    cfg = Qwen3Config(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=256, tie_word_embeddings=True,
                      rope_theta=1000000.0)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg)
    model.save_pretrained(root / "hf")
    out = root / "init"
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_hf_to_megadfm.py"), "--hf", str(root / "hf"),
                    "--out", str(out), "--tokenizer", tokenizer_dir, "--time-embedding-dim", "32", "--no-progress"],
                   check=True, capture_output=True, text=True)
    return str(root / "hf"), str(out)


def _direct_first_step_loss(cfg_path: str, hf_dir: str) -> float:
    """The step-1 loss recomputed from the HF weights with plain torch (no DeepSpeed)."""
    from transformers import Qwen3ForCausalLM

    from megadfm.config import load_config
    from megadfm.checkpoints.strict_load import load_state_dict
    from megadfm.conversion import hf_to_megadfm_state_dict
    from megadfm.data.loader import make_train_iterator
    from megadfm.dfm.loss import dfm_loss
    from megadfm.dfm.schedulers import make_scheduler
    from megadfm.model.qwen3_dfm import Qwen3DFM
    from megadfm.training.trainer import training_noise

    cfg = load_config(cfg_path)
    hf = Qwen3ForCausalLM.from_pretrained(hf_dir, local_files_only=True)
    model = Qwen3DFM(cfg.model, seed=cfg.training.seed)
    sd, _ = hf_to_megadfm_state_dict(hf.state_dict(), cfg.model)  # the plan the tool applied, in memory
    load_state_dict(model, sd, hf_dir)  # strict: time conditioning added as the tool adds it (zero modulation)
    scheduler = make_scheduler(cfg.dfm)
    batch = next(make_train_iterator(cfg.data, 0, 1, cfg.training.micro_batch_size, 0,
                                     num_samples=cfg.training.train_steps * cfg.training.micro_batch_size))
    t, gen = training_noise(cfg, scheduler, 0, 0, batch["input_ids"].shape[0], cfg.training.micro_batch_size,
                            torch.device("cpu"))
    with torch.no_grad():
        return float(dfm_loss(model, batch, t, cfg.dfm, scheduler, gen).loss)


def test_step0_loss_equals_hf_weights(tmp_path, hf_init_folder, stdlib_prefix, tokenizer_dir):
    hf_dir, init_dir = hf_init_folder
    run_dir = str(tmp_path / "run")
    cfg = tiny_config(run_dir, stdlib_prefix, tokenizer_dir, training={"train_steps": 1, "init_from": init_dir},
                      checkpoint={"save_interval": 0})
    with open(os.path.join(init_dir, "megadfm_model.yaml")) as f:
        cfg["model"].update(yaml.safe_load(f))
    cfg["model"]["kernels"] = "torch"
    path = write_config(str(tmp_path / "c.yaml"), cfg)
    proc = run(path, nproc=1, launcher="python")
    assert_ok(proc)
    assert "initialisation: megadfm init folder" in proc.stdout and "weights fingerprint" in proc.stdout
    logged = step_records(run_dir)[1]["loss"]
    assert logged == pytest.approx(_direct_first_step_loss(path, hf_dir), rel=1e-6, abs=1e-6)


def test_renamed_key_in_init_folder_is_named(tmp_path, hf_init_folder, stdlib_prefix, tokenizer_dir):
    from safetensors.torch import load_file, save_file

    _, init_dir = hf_init_folder
    bad = tmp_path / "bad_init"
    subprocess.run(["cp", "-r", init_dir, str(bad)], check=True)
    weights = load_file(str(bad / "model.safetensors"))
    weights["layers.0.mlp.gate_projection.weight"] = weights.pop("layers.0.mlp.gate_proj.weight")
    save_file(weights, str(bad / "model.safetensors"))
    cfg = tiny_config(str(tmp_path / "run"), stdlib_prefix, tokenizer_dir, training={"train_steps": 1, "init_from": str(bad)})
    with open(bad / "megadfm_model.yaml") as f:
        cfg["model"].update(yaml.safe_load(f))
    cfg["model"]["kernels"] = "torch"
    proc = run(write_config(str(tmp_path / "c.yaml"), cfg), nproc=1, launcher="python")
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "missing keys (1): layers.0.mlp.gate_proj.weight" in text
    assert "unexpected keys (1): layers.0.mlp.gate_projection.weight" in text
    assert "from scratch" not in text  # never a silent random init
