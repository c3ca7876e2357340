"""Our model in causal mode (AdaLN at init) computes transformers' Qwen3ForCausalLM, logit for logit."""

from __future__ import annotations

import pytest
import torch

from megadfm.checkpoints.strict_load import load_state_dict
from megadfm.conversion import hf_to_megadfm_state_dict, model_config_from_hf
from megadfm.data.batch import segments_to_cu_seqlens
from megadfm.model import Qwen3DFM
from tests.model.tiny import MASK, VOCAB, hf_qwen3, random_ids

LENGTHS = [12, 7, 4]  # right-padded rows of a [3, 12] batch


def convert(hf, **overrides):
    cfg = model_config_from_hf(hf.config.to_dict(), mask_token_id=overrides.pop("mask_token_id", MASK), kernels="torch",
                               attention_mode="causal", time_embedding_dim=32, **overrides)
    model = Qwen3DFM(cfg, seed=1).eval()
    sd, report = hf_to_megadfm_state_dict(hf.state_dict(), cfg)
    load_state_dict(model, sd, "converted HF state dict")  # strict: the time conditioning was added as the tool adds it
    return model, report


def padded_batch(vocab_high):
    L = max(LENGTHS)
    ids = random_ids((len(LENGTHS), L), seed=3, high=vocab_high)
    mask = torch.arange(L)[None] < torch.tensor(LENGTHS)[:, None]
    return ids, mask


def assert_same_logits(ours, theirs, mask, mask_token_id):
    keep = torch.ones(ours.shape[-1], dtype=torch.bool)
    keep[mask_token_id] = False
    assert torch.isneginf(ours[..., mask_token_id]).all()
    torch.testing.assert_close(ours[mask][:, keep], theirs[mask][:, keep].float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["adaln", "adaln_single"])
@pytest.mark.parametrize("tie", [True, False])
def test_causal_logits_equal_hf_with_padding(tie, mode):
    hf = hf_qwen3(tie=tie, attention_bias=not tie)  # also exercises the q/k/v/o biases once
    model, report = convert(hf, time_conditioning=mode)
    assert "modulation outputs zero" in report["time_conditioning"]
    ids, mask = padded_batch(MASK)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask.long()).logits
        t = torch.tensor([0.1, 0.5, 0.9])
        # padding given as a key mask (HF style) ...
        ours = model.logits(model(ids, t=t, attention_mask=mask))
        assert_same_logits(ours, theirs, mask, MASK)
        # ... and as its own cu_seqlens segment (the batch contract)
        segments = [[n] + ([ids.shape[1] - n] if n < ids.shape[1] else []) for n in LENGTHS]
        ours_cu = model.logits(model(ids, t=t, cu_seqlens=segments_to_cu_seqlens(segments, ids.shape[1])))
        assert_same_logits(ours_cu, theirs, mask, MASK)


def test_causal_logits_equal_hf_real_qwen3_vocab():
    """The real 151,936-row vocabulary with the real mask id 151669 (hidden 32, 1 layer)."""
    hf = hf_qwen3(vocab_size=151936, hidden=32, layers=1, tie=True)
    model, report = convert(hf, mask_token_id=151669)
    assert report["mask_row"].startswith("embed_tokens.weight[151669] = mean")
    ids, mask = padded_batch(151669)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask.long()).logits
        ours = model.logits(model(ids, t=torch.rand(3), attention_mask=mask))
    assert_same_logits(ours, theirs, mask, 151669)
    # the mask row of the (tied) embedding was set to the mean of the trained rows
    emb = model.embed_tokens.weight
    torch.testing.assert_close(emb[151669], hf.model.embed_tokens.weight[:151669].mean(0))


def test_token_losses_equal_hf_cross_entropy():
    """Per-token CE from hidden states equals CE of HF's logits (mask token excluded from the softmax)."""
    hf = hf_qwen3(tie=False)
    model, _ = convert(hf, loss_chunk_size=5)
    ids, mask = padded_batch(MASK)
    targets = torch.where(mask, random_ids(ids.shape, seed=4), -100)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask.long()).logits
        theirs[..., MASK] = float("-inf")
        expected = torch.nn.functional.cross_entropy(theirs.reshape(-1, VOCAB), targets.flatten(), reduction="none")
        hidden = model(ids, t=torch.ones(3), attention_mask=mask)
        got = model.token_losses(hidden.reshape(-1, hidden.shape[-1]), targets.flatten())
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
