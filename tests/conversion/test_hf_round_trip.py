"""HF Qwen3 folder -> megadfm init folder -> HF again, no training: exact weights and logits."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from safetensors.torch import load_file

from megadfm.checkpoints.layout import WEIGHTS_INDEX_FILE as INDEX_FILE
from megadfm.checkpoints.source import open_source
from megadfm.checkpoints.strict_load import load_source
from megadfm.config_base import build
from megadfm.conversion.export import export_to_hf
from megadfm.conversion.hf_import import convert_hf_to_megadfm
from megadfm.conversion.metadata import METADATA_FILE, verify
from megadfm.model import ModelConfig, Qwen3DFM
from tests.conversion.helpers import QWEN_MASK, save_hf_folder, tiny_hf_model, tool


def load_init(folder, **overrides):
    with open(os.path.join(folder, "megadfm_model.yaml")) as f:
        cfg = build(ModelConfig, dict(yaml.safe_load(f), kernels="torch", **overrides))
    model = Qwen3DFM(cfg, seed=7).eval()
    load_source(model, open_source(folder))  # what training.init_from reads (strict)
    return model


def without_row(t, row):
    return torch.cat([t[:row], t[row + 1:]])


def test_hf_to_megadfm_to_qwen3_is_exact(tmp_path, tokenizer_dir):
    """Sharded HF folder -> init folder (the trainer's loader accepts it; causal logits = HF's) -> plain Qwen3."""
    hf = tiny_hf_model()
    src = save_hf_folder(hf, str(tmp_path / "hf"), "sharded", tokenizer_dir)
    assert os.path.isfile(os.path.join(src, INDEX_FILE))
    init = str(tmp_path / "init")
    meta = convert_hf_to_megadfm(src, init, time_conditioning="adaln", time_embedding_dim=32, max_shard_size="8MB")
    report = meta["report"]
    assert report["mapped"] == 2 * 11 + 2 and report["dropped"] == {}  # 11 per layer + embedding + final norm
    assert "time_embedding.linear_1.weight" in report["added"] and "layers.1.adaln.proj.weight" in report["added"]
    assert report["mask_row"].startswith(f"embed_tokens.weight[{QWEN_MASK}] = mean")
    assert verify(init) == {}
    assert os.path.isfile(os.path.join(init, INDEX_FILE))  # the output is sharded too (19.5 MB > 8MB)
    assert os.path.isfile(os.path.join(init, "tokenizer", "tokenizer.json"))

    # the trainer's loader accepts it; in causal mode it computes HF's logits (AdaLN is zero: any t)
    causal = load_init(init, attention_mode="causal")
    assert meta["parameter_count"] == sum(p.numel() for p in causal.parameters())
    assert all(float(causal.layers[i].adaln.proj.weight.detach().abs().max()) == 0 for i in range(2))
    assert float(causal.time_embedding.linear_1.weight.detach().std()) > 0  # a learnable time MLP, not all zero
    torch.testing.assert_close(causal.embed_tokens.weight[QWEN_MASK], hf.model.embed_tokens.weight[:QWEN_MASK].mean(0))
    ids = torch.randint(0, QWEN_MASK, (2, 10), generator=torch.Generator().manual_seed(1))
    keep = torch.ones(causal.cfg.vocab_size, dtype=torch.bool)
    keep[QWEN_MASK] = False
    with torch.no_grad():
        theirs = hf(ids).logits
        ours = causal.logits(causal(ids, t=torch.tensor([0.2, 0.7])))
    torch.testing.assert_close(ours[..., keep], theirs[..., keep], atol=1e-5, rtol=1e-5)

    # back to a plain Qwen3: every weight bit-identical except the (untrained) mask row set to the mean
    back = str(tmp_path / "back")
    meta_back = export_to_hf(init, back, as_qwen3=True, max_shard_size="4MB")
    assert sorted(meta_back["report"]["dropped"]) == sorted(report["added"])
    from transformers import Qwen3ForCausalLM

    reloaded = Qwen3ForCausalLM.from_pretrained(back, attn_implementation="eager").eval()  # as the source model
    sa, sb = hf.state_dict(), reloaded.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        if k in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(without_row(sa[k], QWEN_MASK), without_row(sb[k], QWEN_MASK)), k
        else:
            assert torch.equal(sa[k], sb[k]), k
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits[..., keep], theirs[..., keep])


def test_every_source_layout_gives_the_same_init_folder(tmp_path):
    """model.safetensors, safetensors shards + index and pytorch_model.bin convert to identical tensors."""
    hf = tiny_hf_model(seed=4)
    tensors = {}
    for layout in ("single", "sharded", "bin"):
        src = save_hf_folder(hf, str(tmp_path / f"hf_{layout}"), layout)
        meta = convert_hf_to_megadfm(src, str(tmp_path / f"init_{layout}"), time_conditioning="adaln_single",
                                     time_embedding_dim=32)
        assert meta["source"]["format"] == ("bin" if layout == "bin" else "safetensors")
        assert "adaln_single.proj.weight" in meta["report"]["added"]
        tensors[layout] = load_file(str(tmp_path / f"init_{layout}" / "model.safetensors"))
    for layout in ("sharded", "bin"):
        assert set(tensors[layout]) == set(tensors["single"])
        assert all(torch.equal(tensors[layout][k], tensors["single"][k]) for k in tensors["single"])


def test_keep_mask_row_round_trip_is_bit_identical(tmp_path, tokenizer_dir):
    """--mask-row keep and time_conditioning none: HF -> megadfm -> HF changes nothing at all (the tools' mains, sharded)."""
    hf = tiny_hf_model(tie=False, seed=3)
    src = save_hf_folder(hf, str(tmp_path / "hf"), "sharded", tokenizer_dir)
    init, back = str(tmp_path / "init"), str(tmp_path / "back")
    assert tool("convert_hf_to_megadfm").main(["--hf", src, "--out", init, "--time-conditioning", "none",
                                                "--mask-row", "keep", "--max-shard-size", "3MB", "--no-progress"]) == 0
    assert tool("convert_megadfm_to_hf").main(["--ckpt", init, "--out", back, "--as-qwen3", "--max-shard-size", "3MB"]) == 0
    with open(os.path.join(back, INDEX_FILE)) as f:
        assert len(set(json.load(f)["weight_map"].values())) > 1  # sharded above --max-shard-size
    from transformers import Qwen3ForCausalLM

    reloaded = Qwen3ForCausalLM.from_pretrained(back, attn_implementation="eager").eval()  # as the source model
    sa, sb = hf.state_dict(), reloaded.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    ids = torch.randint(0, QWEN_MASK, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, reloaded(ids).logits)
    with open(os.path.join(back, METADATA_FILE)) as f:
        meta = json.load(f)
    assert meta["direction"] == "megadfm_to_hf" and meta["parameter_count"] == sum(p.numel() for p in hf.parameters())
    assert all(len(v["sha256"]) == 64 for v in meta["files"].values()) and "config.json" in meta["files"]


def test_no_tokenizer_is_said_clearly(tmp_path):
    src = save_hf_folder(tiny_hf_model(), str(tmp_path / "hf"), "single", tokenizer_dir=None)
    meta = convert_hf_to_megadfm(src, str(tmp_path / "init"), time_conditioning="none")
    assert meta["tokenizer"]["path"] is None and meta["tokenizer"]["note"].startswith("NO TOKENIZER")
    assert not os.path.exists(tmp_path / "init" / "tokenizer")


def test_help_explains_every_flag(capsys):
    for name, flags in (("convert_hf_to_megadfm", ["--hf", "--out", "--time-conditioning", "--tokenizer", "--mask-row"]),
                        ("convert_megadfm_to_hf", ["--ckpt", "--step", "--out", "--as-qwen3", "--max-shard-size", "--dtype"])):
        with pytest.raises(SystemExit) as exit_info:
            tool(name).parse_args(["--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert all(f in out for f in flags), out


def test_in_memory_conversion_is_the_tools_plan(tmp_path):
    """hf_to_megadfm_state_dict applies the tool's plan: the same tensors as the init folder, bit for bit."""
    from megadfm.conversion import hf_to_megadfm_state_dict, model_config_from_hf

    hf = tiny_hf_model(seed=5)
    src = save_hf_folder(hf, str(tmp_path / "hf"), "single")
    meta = convert_hf_to_megadfm(src, str(tmp_path / "init"), time_conditioning="adaln", time_embedding_dim=32, seed=3)
    cfg = model_config_from_hf(hf.config.to_dict(), time_conditioning="adaln", time_embedding_dim=32)
    before = hf.model.embed_tokens.weight.detach().clone()
    sd, report = hf_to_megadfm_state_dict(hf.state_dict(), cfg, seed=3)
    assert torch.equal(hf.model.embed_tokens.weight, before)  # the caller's state dict is not modified
    on_disk = load_file(str(tmp_path / "init" / "model.safetensors"))
    assert set(sd) == set(on_disk) and all(torch.equal(sd[k], on_disk[k]) for k in sd)
    assert list(report.pop("dropped")) == ["lm_head.weight"]  # the tied alias, in the state dict but not in the saved folder
    assert report == {k: v for k, v in meta["report"].items() if k != "dropped"}
