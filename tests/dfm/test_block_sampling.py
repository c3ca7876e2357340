"""Block-diffusion sampling (dfm.mode: block): the exact prefix cache decodes the same tokens as the uncached
two-stream forward, blocks of one token are greedy autoregressive decoding of the causal model on the same
weights, prompts are never rewritten, and what block mode cannot do is refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megadfm.dfm.config import DFMConfig
from megadfm.dfm.sampler import generate
from megadfm.dfm.sampler_config import SamplerConfig
from tests.model.tiny import MASK, tiny_model

BLOCK = DFMConfig(mode="block", block_size=4)
EOS = 7


def model_with_time(seed: int = 3):
    model = tiny_model(seed=seed)
    with torch.no_grad():  # time conditioning that matters (it is zero at init)
        for name, p in model.named_parameters():
            if "adaln" in name or "time_embedding" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    return model


def prompts():
    g = torch.Generator().manual_seed(4)
    # 2 tokens (the first block holds prompt and new tokens), 4 (a block boundary), 9 (two whole blocks and one more)
    return [torch.randint(0, MASK, (n,), generator=g).tolist() for n in (2, 4, 9)]


@pytest.mark.parametrize("method, extra", [("threshold", {"threshold": 0.05}), ("confidence", {"steps": 12}),
                                           ("threshold", {"threshold_mode": "factor", "threshold_factor": 2.0})])
@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("eos", [None, EOS])
def test_exact_cache_equals_the_uncached_forward(method, extra, shift, eos):
    model = model_with_time()
    dfm = dataclasses.replace(BLOCK, shift_logits=shift)
    base = dict(method=method, temperature=0.0, eos_token_id=eos, **extra)
    budgets = [10, 7, 5]
    uncached = generate(model, prompts(), budgets, SamplerConfig(cache="none", **base), dfm, pad_token_id=0)
    cached = generate(model, prompts(), budgets, SamplerConfig(cache="prefix", **base), dfm, pad_token_id=0)
    assert cached.tokens == uncached.tokens and torch.equal(cached.sequences, uncached.sequences)
    assert cached.steps == uncached.steps
    assert uncached.nfe_block == 0 and cached.nfe_full == 1  # one prefill pass, then block-only passes
    assert cached.nfe_block > cached.steps - 1  # every later step, plus one commit per finished block
    for p, row in zip(prompts(), cached.sequences.tolist()):
        assert row[:len(p)] == p  # the prompt is never rewritten
    if eos is None:
        assert [len(r) for r in cached.tokens] == budgets


def test_blocks_of_one_token_are_greedy_autoregressive_decoding():
    """block_size 1 with shift: each new token is predicted from the clean stream at the previous column,
    i.e. by the causal model on the same weights; greedy, so exactly its argmax continuation."""
    bidirectional = tiny_model(seed=6, time_conditioning="none")
    causal = tiny_model(seed=6, time_conditioning="none", attention_mode="causal")
    dfm = dataclasses.replace(BLOCK, block_size=1)
    prompt = prompts()[2]
    for cache in ("none", "prefix"):
        out = generate(bidirectional, [prompt], 12, SamplerConfig(method="threshold", temperature=0.0, cache=cache,
                                                                  eos_token_id=None), dfm, pad_token_id=0)
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(12):
                logits = causal.logits(causal(torch.tensor([seq]))[0, -1])
                logits[MASK + 1:] = float("-inf")
                seq.append(int(logits.argmax()))
        assert out.tokens[0] == seq[len(prompt):], cache
        assert out.steps == 12


def test_block_mode_refuses_what_it_cannot_do():
    model = model_with_time()
    for cfg, match in ((SamplerConfig(method="euler"), "block by block"),
                       (SamplerConfig(method="threshold", cache="dual"), "cache: dual"),
                       (SamplerConfig(method="threshold", block_length=8), "block_length")):
        with pytest.raises(ValueError, match=match):
            generate(model, prompts()[:1], 4, cfg, BLOCK, pad_token_id=0)


def test_the_two_stream_row_may_be_longer_than_the_position_table():
    """The uncached forward runs 2L tokens at positions < L: only the positions are bounded by the model."""
    model = tiny_model(seed=3, max_position_embeddings=24)
    out = generate(model, [prompts()[2]], 10, SamplerConfig(method="threshold", temperature=0.0, eos_token_id=None),
                   BLOCK, pad_token_id=0)  # 19 columns, 38 two-stream tokens
    assert len(out.tokens[0]) == 10
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(model, [prompts()[2]], 20, SamplerConfig(method="threshold", temperature=0.0), BLOCK, pad_token_id=0)
