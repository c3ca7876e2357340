"""SamplerConfig.cache (prefix | dual, megadfm/dfm/sampling/cached_forward.py): exact where nothing cached can go
stale, approximate otherwise; prompts and suffixes kept; EOS exit; nfe_full / nfe_block; ragged == row by row."""

from dataclasses import replace

import pytest
import torch

from megadfm.config_base import ConfigError
from megadfm.dfm.config import DFMConfig
from megadfm.dfm.sampler import generate
from megadfm.dfm.sampler_config import SamplerConfig
from megadfm.dfm.sampling.cached_forward import CachedForward
from megadfm.model import ModelConfig, Qwen3DFM

VOCAB, MASK, PAD = 64, 60, 0
CACHES = ["prefix", "dual"]
PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10], [11, 12]]
SUFFIXES = [[20, 21], [], [22], [23, 24, 25, 26]]
BUDGETS = [10, 7, 5, 2]
GREEDY = [  # steps are a per-block cap for threshold; confidence splits them over each row's blocks
    SamplerConfig(method="confidence", steps=8, block_length=4, temperature=0.0, eos_token_id=None),
    # 16 steps over blocks of 2: a row's first steps unmask nothing, so rows reach their first evaluation
    # of a block at different steps (one call then mixes full and block forwards)
    SamplerConfig(method="confidence", steps=16, block_length=2, confidence="margin", temperature=0.0, eos_token_id=None),
    SamplerConfig(method="threshold", steps=6, block_length=4, threshold=0.5, temperature=0.0, eos_token_id=None),
    SamplerConfig(method="threshold", steps=6, threshold_mode="factor", threshold_factor=2.0, confidence="entropy",
                  temperature=0.0, eos_token_id=None),
]


def lively(attention_mode="bidirectional", time_conditioning="adaln", seed=0) -> Qwen3DFM:
    """A tiny model with large random weights, modulation included (at init AdaLN is the identity and the logits
    near uniform, which would hide both t and stale K/V): its greedy tokens vary and depend on everything."""
    model = Qwen3DFM(ModelConfig(vocab_size=VOCAB, mask_token_id=MASK, hidden_size=32, intermediate_size=64,
                                 num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, kernels="torch",
                                 attention_mode=attention_mode, time_conditioning=time_conditioning,
                                 time_embedding_dim=32), seed=seed).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.3 * noise)
    return model


@pytest.fixture(scope="module")
def bidirectional():
    return lively()


@pytest.fixture(scope="module")
def causal():
    return lively("causal", "none")


def run(model, cfg, cache, dfm=None, prompts=PROMPTS, budgets=BUDGETS, suffixes=SUFFIXES):
    return generate(model, prompts, budgets, replace(cfg, cache=cache), dfm or DFMConfig(), suffixes=suffixes,
                    pad_token_id=PAD)


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("case", range(len(GREEDY)))
def test_a_causal_untimed_model_gets_exactly_the_tokens_of_cache_none(causal, case, cache, shift):
    """Exact by construction: under causal attention a column's K/V depend only on the columns up to it, so the
    cached columns before the block never change inside the block, and the block's queries never look at the
    (stale) cached suffix of dual; with time_conditioning none no t enters the model. AdaLN(t) alone already makes
    a cache approximate, causal or not: t moves every step, but the cached K/V keep the block's first t."""
    dfm = DFMConfig(shift_logits=shift)
    exact = run(causal, GREEDY[case], "none", dfm)
    cached = run(causal, GREEDY[case], cache, dfm)
    assert cached.tokens == exact.tokens
    assert cached.nfe_block > 0 and cached.nfe_full < exact.nfe_full  # the cache was really used


def test_guard_a_bidirectional_model_makes_the_caches_approximate(bidirectional):
    """Guard for the exactness tests: on the same kind of model, bidirectional with AdaLN(t), both caches change tokens."""
    exact = run(bidirectional, GREEDY[2], "none")
    for cache in CACHES:
        assert run(bidirectional, GREEDY[2], cache).tokens != exact.tokens, cache


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("case", [0, 2])
def test_one_block_over_everything_with_nothing_cached_is_exact(bidirectional, case, cache):
    """A bidirectional model's prompt (and suffix) K/V go stale inside a block: they attend to the block, whose
    tokens change every step, and carry AdaLN of the block's first t. Here there is nothing to go stale: shift off,
    an empty prompt, no suffix and one block over all new positions, so the cached set is empty (prefix: columns
    before 0; dual: only the shorter row's padding, never attended to) and every step recomputes everything at its t."""
    cfg = replace(GREEDY[case], block_length=0)
    args = dict(dfm=DFMConfig(shift_logits=False), prompts=[[], []], budgets=[9, 6], suffixes=None)
    exact = run(bidirectional, cfg, "none", **args)
    cached = run(bidirectional, cfg, cache, **args)
    assert cached.tokens == exact.tokens
    # one full forward, then block forwards for the other steps (dual: one per row while both run, their blocks
    # end at different columns)
    assert cached.steps == exact.steps and cached.nfe_full == 1 and cached.nfe_block >= cached.steps - 1 > 0


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("cache", ["none", *CACHES])
@pytest.mark.parametrize("method", ["confidence", "threshold"])
def test_prompts_and_suffixes_are_never_rewritten(bidirectional, method, cache, shift):
    cfg = SamplerConfig(method=method, steps=6, block_length=3, threshold=0.6, temperature=0.8, eos_token_id=None,
                        cache=cache)
    out = generate(bidirectional, PROMPTS, BUDGETS, cfg, DFMConfig(shift_logits=shift), suffixes=SUFFIXES,
                   pad_token_id=PAD)
    for b, (prompt, n, suffix) in enumerate(zip(PROMPTS, BUDGETS, SUFFIXES)):
        row = out.sequences[b].tolist()
        assert row[: len(prompt)] == prompt and row[len(prompt) + n: len(prompt) + n + len(suffix)] == suffix
        assert len(out.tokens[b]) == n
    assert not (out.sequences == MASK).any()


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("method", ["confidence", "threshold"])
def test_eos_ends_a_row_early_and_the_others_go_on(bidirectional, method, cache):
    """Row 0 stops at an EOS of its first block and is no longer run, while row 1 (same columns, so the same
    group) goes on through the group's cache of row 1 alone; every row is its never-stopping run cut at the EOS."""
    cfg = SamplerConfig(method=method, steps=12, block_length=6, threshold=1.0, temperature=0.0, eos_token_id=None,
                        cache=cache)  # one position per step either way
    prompts = [[30, 31], [9, 17]]
    never = generate(bidirectional, prompts, 12, cfg, DFMConfig(), pad_token_id=PAD)
    eos = next(tok for tok in never.tokens[0][:3] if tok not in never.tokens[1][:6])  # row 1 outlives block 1
    out = generate(bidirectional, prompts, 12, replace(cfg, eos_token_id=eos), DFMConfig(), pad_token_id=PAD)
    assert out.finished[0]
    for b in range(2):
        row = never.tokens[b]
        assert out.tokens[b] == (row[: row.index(eos)] if eos in row else row), b
    assert out.forward_rows < never.forward_rows == 2 * 12


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("method", ["confidence", "threshold"])
def test_one_full_forward_per_block_and_block_forwards_for_the_other_steps(bidirectional, method, cache):
    """3 blocks of 4 steps (one position each): nfe_full == 3, nfe_block == 9, and the counters are the calls."""
    cfg = SamplerConfig(method=method, steps=12 if method == "confidence" else 4, block_length=4, threshold=1.0,
                        temperature=0.0, eos_token_id=None, cache=cache)
    calls = {"forward": 0, "forward_with_cache": 0, "forward_block": 0}
    handle = bidirectional.register_forward_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1))
    originals = {name: getattr(bidirectional, name) for name in ("forward_with_cache", "forward_block")}

    def counting(name):
        def call(*args, **kwargs):
            calls[name] += 1
            return originals[name](*args, **kwargs)
        return call

    try:
        for name in originals:
            setattr(bidirectional, name, counting(name))
        out = generate(bidirectional, [[1, 2]], 12, cfg, DFMConfig(), suffixes=[[3]], pad_token_id=PAD)
    finally:
        handle.remove()
        for name in originals:
            delattr(bidirectional, name)  # back to the class's methods
    assert out.steps == 12 and (out.nfe_full, out.nfe_block) == (3, 9)
    assert calls == {"forward": 0, "forward_with_cache": 3, "forward_block": 9}


@pytest.mark.parametrize("eos", [None, 7])
@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("case", range(len(GREEDY)))
def test_a_ragged_batch_equals_row_by_row_generation(bidirectional, case, cache, eos):
    """Ragged prompts, suffixes and budgets on the approximate (bidirectional, AdaLN) model: rows whose blocks start
    at different columns get separate block forwards, so each row decodes as it would alone."""
    cfg = replace(GREEDY[case], eos_token_id=eos)
    batch = run(bidirectional, cfg, cache)
    for b, (prompt, budget, suffix) in enumerate(zip(PROMPTS, BUDGETS, SUFFIXES)):
        alone = run(bidirectional, cfg, cache, prompts=[prompt], budgets=[budget], suffixes=[suffix])
        assert batch.tokens[b] == alone.tokens[0], b
        assert batch.finished[b] == alone.finished[0]


def test_config_and_model_errors_name_the_problem(bidirectional):
    with pytest.raises(ConfigError, match="cache"):
        SamplerConfig(method="euler", cache="prefix")
    with pytest.raises(ConfigError, match="cache"):
        SamplerConfig(method="threshold", cache="full")
    with pytest.raises(TypeError, match="forward_with_cache"):
        CachedForward(torch.nn.Linear(2, 2), None, True, "dual")
