"""dfm.objective: ar: the loss of a causal megadfm model equals transformers' Qwen3ForCausalLM loss on
the same weights and tokens, packed documents included (no attention and no target across a boundary),
and the config refuses the settings the AR loss would ignore."""

from __future__ import annotations

import pytest
import torch

from megadfm.checkpoints.strict_load import load_state_dict
from megadfm.config import ConfigError, load_config
from megadfm.conversion import hf_to_megadfm_state_dict, model_config_from_hf
from megadfm.data.batch import position_ids_from_segments, segments_to_cu_seqlens
from megadfm.dfm.ar_loss import ar_loss
from megadfm.dfm.config import DFMConfig
from megadfm.dfm.objectives import OBJECTIVES
from megadfm.dfm.schedulers import make_scheduler
from megadfm.model import Qwen3DFM
from tests.model.tiny import MASK, hf_qwen3, random_ids

AR = DFMConfig(objective="ar", loss_weighting="none", loss_normalizer="masked")
# row 0 packs two documents, row 1 one document and padding
DOCS = [[9, 5], [7]]
L = 14


def causal_pair():
    hf = hf_qwen3(tie=True)
    cfg = model_config_from_hf(hf.config.to_dict(), mask_token_id=MASK, kernels="torch", attention_mode="causal",
                               time_conditioning="none")
    model = Qwen3DFM(cfg, seed=1).eval()
    sd, _ = hf_to_megadfm_state_dict(hf.state_dict(), cfg, init_mask_row=False)
    load_state_dict(model, sd, "converted HF state dict")
    return hf, model


def packed_batch():
    ids = random_ids((len(DOCS), L), seed=5, high=MASK)
    segments, real = [], torch.zeros(len(DOCS), L, dtype=torch.bool)
    for b, lengths in enumerate(DOCS):
        used = sum(lengths)
        segments.append(lengths + ([L - used] if used < L else []))
        real[b, :used] = True
    batch = {"input_ids": ids, "position_ids": position_ids_from_segments(segments),
             "cu_seqlens": segments_to_cu_seqlens(segments, L), "loss_mask": real}
    batch["max_seqlen"] = int((batch["cu_seqlens"][1:] - batch["cu_seqlens"][:-1]).max())
    return batch


def documents(batch):
    for b, lengths in enumerate(DOCS):
        start = 0
        for n in lengths:
            yield batch["input_ids"][b, start:start + n]
            start += n


def test_objectives_registry_matches_the_config_choices():
    import typing

    assert OBJECTIVES.keys() == list(typing.get_args(typing.get_type_hints(DFMConfig)["objective"])) == ["dfm", "ar"]


def test_ar_loss_equals_qwen3_for_causal_lm_on_packed_documents():
    hf, model = causal_pair()
    batch = packed_batch()
    with torch.no_grad():
        out = ar_loss(model, batch, torch.rand(2), AR, make_scheduler(AR), torch.Generator())
        # the oracle: each document alone through transformers (so nothing can cross a boundary)
        ce_sum, targets, hf_loss_sum = 0.0, 0, 0.0
        for doc in documents(batch):
            logits = hf(input_ids=doc[None]).logits[0, :-1].float()
            # megadfm never predicts <|mask|> (its logit is -inf): the oracle's softmax leaves it out too
            logits[:, MASK] = float("-inf")
            ce_sum += torch.nn.functional.cross_entropy(logits, doc[1:], reduction="sum").item()
            hf_loss_sum += hf(input_ids=doc[None], labels=doc[None]).loss.item() * (len(doc) - 1)
            targets += len(doc) - 1
    assert int(out.per_seq_masked_count.sum()) == targets == sum(n - 1 for lengths in DOCS for n in lengths)
    assert out.loss.item() == pytest.approx(ce_sum / targets, rel=1e-5, abs=1e-6)
    # transformers' own .loss keeps <|mask|> in its softmax: it differs only by that one token's share
    assert out.loss.item() == pytest.approx(hf_loss_sum / targets, rel=1e-2)
    assert torch.equal(out.x_t, batch["input_ids"]) and bool((out.mask_ratio == 0).all())
    assert out.per_seq_weighted_sum.sum().item() / out.normalizer.item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_ar_loss_trains_the_model_the_way_hf_trains():
    """One SGD step on ar_loss moves the weights as one step on transformers' loss does (same gradients)."""
    hf, model = causal_pair()
    doc = random_ids((1, 10), seed=7, high=MASK)[0]
    segments = [[10]]
    batch = {"input_ids": doc[None], "position_ids": position_ids_from_segments(segments),
             "cu_seqlens": segments_to_cu_seqlens(segments, 10), "max_seqlen": 10,
             "loss_mask": torch.ones(1, 10, dtype=torch.bool)}
    ar_loss(model, batch, torch.ones(1), AR, make_scheduler(AR), torch.Generator()).loss.backward()
    logits = hf(input_ids=doc[None]).logits[0, :-1].float()
    logits[:, MASK] = float("-inf")
    torch.nn.functional.cross_entropy(logits, doc[1:]).backward()
    ours = dict(model.named_parameters())["layers.1.mlp.down_proj.weight"].grad
    theirs = dict(hf.named_parameters())["model.layers.1.mlp.down_proj.weight"].grad
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("overrides, key", [
    (["dfm.objective=ar", "model.attention_mode=causal"], "dfm.loss_weighting"),
    (["dfm.objective=ar", "dfm.loss_weighting=none", "model.attention_mode=causal"], "dfm.loss_normalizer"),
    (["dfm.objective=ar", "dfm.loss_weighting=none", "dfm.loss_normalizer=masked"], "model.attention_mode"),
    (["dfm.objective=ar", "dfm.loss_weighting=none", "dfm.loss_normalizer=masked", "model.attention_mode=causal",
      "dfm.prefix_mask_prob=0.5"], "dfm.prefix_mask_prob"),
])
def test_ar_config_refuses_what_the_ar_loss_would_ignore(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert f"'{key}'" in str(e.value)
    load_config(None, ["dfm.objective=ar", "dfm.loss_weighting=none", "dfm.loss_normalizer=masked",
                       "model.attention_mode=causal"])
