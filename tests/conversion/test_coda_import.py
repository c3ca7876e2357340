"""Import of a CoDA-format folder (model_type "CoDA": Qwen3's tensor names, bidirectional attention, a trained
<|mask|> named in config.json): megadfm's logits equal those of the same weights attending bidirectionally
(transformers' Qwen3 with an all-visible attention mask, CoDA's function), the mask row is kept, and an
unknown model_type is refused with the supported list."""

from __future__ import annotations

import json
import os

import pytest
import torch

from megadfm.checkpoints.source import open_source
from megadfm.checkpoints.strict_load import load_source
from megadfm.conversion.hf_import import convert_hf_to_megadfm
from megadfm.conversion.name_map import ConversionError
from megadfm.model import Qwen3DFM
from tests.conversion.helpers import config_json, save_hf_folder, write_config_json
from tests.model.tiny import MASK, hf_qwen3, random_ids


def coda_folder(path, **config_changes):
    hf = hf_qwen3(tie=False, seed=4)
    folder = save_hf_folder(hf, str(path))
    config = dict(config_json(folder), model_type="CoDA", architectures=["CoDALanguageModel"], mask_token_id=MASK,
                  **config_changes)
    write_config_json(folder, config)
    return hf, folder


def test_coda_logits_equal_bidirectional_qwen3_on_the_same_weights(tmp_path):
    hf, folder = coda_folder(tmp_path / "coda")
    meta = convert_hf_to_megadfm(folder, str(tmp_path / "init"), time_conditioning="none")
    cfg = meta["model_config"]
    assert cfg["attention_mode"] == "bidirectional" and cfg["mask_token_id"] == MASK and cfg["time_conditioning"] == "none"
    assert "kept as in the checkpoint" in meta["report"]["mask_row"]  # CoDA's <|mask|> row is trained: never overwritten
    source = open_source(str(tmp_path / "init"))
    model = Qwen3DFM(source.model_config).eval()
    load_source(model, source)
    ids = random_ids((2, 11), seed=8, high=MASK + 1)  # <|mask|> among the inputs, as CoDA sees them
    ids[0, 3] = ids[1, 7] = MASK
    with torch.no_grad():
        ours = model.logits(model(ids))
        everyone = torch.ones(2, 1, ids.shape[1], ids.shape[1], dtype=torch.bool)  # every key visible to every query
        theirs = hf(input_ids=ids, attention_mask=everyone).logits
        causal = hf(input_ids=ids).logits
    keep = torch.ones(ours.shape[-1], dtype=torch.bool)
    keep[MASK] = False  # megadfm never predicts <|mask|> (logit -inf); CoDA's raw logits keep a column for it
    assert torch.isneginf(ours[..., MASK]).all()
    torch.testing.assert_close(ours[..., keep], theirs[..., keep], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours[..., keep], causal[..., keep], atol=1e-3)  # the oracle really is bidirectional
    torch.testing.assert_close(model.embed_tokens.weight[MASK], hf.model.embed_tokens.weight[MASK])


def test_coda_config_without_mask_token_is_refused(tmp_path):
    _, folder = coda_folder(tmp_path / "coda")
    config = config_json(folder)
    del config["mask_token_id"]
    write_config_json(folder, config)
    with pytest.raises(ConversionError, match="no mask_token_id"):
        convert_hf_to_megadfm(folder, str(tmp_path / "init"), time_conditioning="none")
    assert not os.path.lexists(tmp_path / "init")


def test_unknown_model_type_lists_the_supported_ones(tmp_path):
    _, folder = coda_folder(tmp_path / "dream")
    config = config_json(folder)
    config["model_type"] = "Dream"
    write_config_json(folder, config)
    with pytest.raises(ConversionError) as err:
        convert_hf_to_megadfm(folder, str(tmp_path / "init"))
    msg = str(err.value)
    assert "model_type is 'Dream'" in msg and "'qwen3'" in msg and "'CoDA'" in msg
    assert not os.path.lexists(tmp_path / "init")
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["model_type"] == "Dream"  # the source is never touched
