"""Attention annealing (causal -> bidirectional): at fraction 0 the model is the causal model, with every
future key visible it is the bidirectional model, in between each future key of the same document is visible
with that probability, and packing and padding are never crossed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from megadfm.config import ConfigError, load_config
from megadfm.data.batch import segments_to_cu_seqlens
from megadfm.model.attention_anneal import AttentionAnneal, anneal_fraction
from megadfm.model.kernels.attention import AttentionLayout
from tests.model.tiny import MASK, random_ids, tiny_model

L = 12
SEGMENTS = [[5, 7], [8, 4]]  # row 0: two documents; row 1: a document and a padding run


def batch():
    ids = random_ids((2, L), seed=2, high=MASK)
    cu = segments_to_cu_seqlens(SEGMENTS, L)
    mask = torch.ones(2, L, dtype=torch.bool)
    mask[1, 8:] = False
    return ids, cu, mask


def hidden(model, anneal=None):
    ids, cu, mask = batch()
    model.attention_anneal = anneal
    try:
        with torch.no_grad():
            return model(ids, t=torch.tensor([0.3, 0.8]), cu_seqlens=cu, attention_mask=mask)
    finally:
        model.attention_anneal = None


def test_fraction_zero_is_the_causal_model_and_all_future_keys_the_bidirectional_one():
    bidirectional = tiny_model(seed=4)
    causal = tiny_model(seed=4, attention_mode="causal")
    real = batch()[2]
    torch.testing.assert_close(hidden(bidirectional, AttentionAnneal(0.0, seed=1))[real], hidden(causal)[real],
                               atol=1e-6, rtol=1e-6)
    almost_all = AttentionAnneal(1.0 - 1e-12, seed=1)  # every future pair drawn visible
    assert bool(almost_all.future_visible(2, L, torch.device("cpu")).sum() == 2 * L * (L - 1) // 2)
    torch.testing.assert_close(hidden(bidirectional, almost_all)[real], hidden(bidirectional)[real], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(hidden(bidirectional, AttentionAnneal(0.5, seed=1))[real], hidden(bidirectional)[real])


def test_which_keys_become_visible():
    ids, cu, mask = batch()
    anneal = AttentionAnneal(0.5, seed=3)
    future = anneal.future_visible(2, L, torch.device("cpu"))
    assert torch.equal(future, anneal.future_visible(2, L, torch.device("cpu")))  # seeded: replayable
    assert not torch.equal(future, AttentionAnneal(0.5, seed=4).future_visible(2, L, torch.device("cpu")))
    layout = AttentionLayout(2, L, torch.device("cpu"), True, cu, None, mask, future_visible=future)
    allowed = layout.dense_mask[:, 0]
    seg = layout.segment_ids
    same_doc = seg[:, :, None] == seg[:, None, :]
    i, j = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
    for b in range(2):
        for q in range(L):
            for k in range(L):
                if q == k:
                    assert allowed[b, q, k]  # a query always sees itself
                elif not same_doc[b, q, k] or not mask[b, k]:
                    assert not allowed[b, q, k], (b, q, k)  # never another document, never padding
                elif k < q:
                    assert allowed[b, q, k]  # the causal part always
                else:
                    assert allowed[b, q, k] == future[b, q, k]
    # the share of visible future pairs follows the fraction
    share = AttentionAnneal(0.3, seed=5).future_visible(4, 128, torch.device("cpu"))[:, i.new_ones(128, 128).triu(1).bool()]
    assert share.float().mean().item() == pytest.approx(0.3, abs=0.01)


def test_schedule_and_config():
    assert [anneal_fraction(s, 4) for s in (1, 2, 4, 5, 9)] == [0.0, 0.25, 0.75, None, None]
    assert anneal_fraction(1, 0) is None
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\)"):
        AttentionAnneal(1.0, seed=0)
    with pytest.raises(ConfigError, match="needs model.attention_mode: bidirectional"):
        load_config(None, ["dfm.attention_anneal_steps=10", "model.attention_mode=causal"])
    assert load_config(None, ["dfm.attention_anneal_steps=10"]).dfm.attention_anneal_steps == 10


def test_callback_sets_the_fraction_per_step_and_turns_it_off():
    from megadfm.training.callbacks.attention_anneal import AttentionAnnealCallback
    from megadfm.training.callbacks.base import StepState

    cfg = load_config(None, ["dfm.attention_anneal_steps=2", "telemetry.wandb=disabled"])
    model = tiny_model()
    trainer = SimpleNamespace(cfg=cfg, rank=0, module=SimpleNamespace(model=model))
    callback = AttentionAnnealCallback(trainer)
    seen = []
    for step in (1, 2, 3):
        state = StepState(step=step, started=0.0)
        callback.pre_step(trainer, state)
        seen.append((None if model.attention_anneal is None else model.attention_anneal.fraction,
                     state.scalars["attention/future_fraction"]))
        callback.post_step(trainer, state)
    assert seen == [(0.0, 0.0), (0.5, 0.5), (None, 1.0)] and model.attention_anneal is None
