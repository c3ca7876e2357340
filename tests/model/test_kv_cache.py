"""Block-wise forward with a K/V cache (block_forward.py, kv_cache.py): exact when nothing outside the
block changed, an approximation (documented, not asserted equal) once it has. fp32 CPU, tiny models."""

from __future__ import annotations

import pytest
import torch

from megadfm.model import KVCache
from megadfm.model.kernels.attention import query_key_mask
from tests.model.tiny import MASK, random_ids, tiny_model

B, L, S, E = 2, 16, 5, 9  # batch, sequence, block [S, E)
TOL = dict(atol=1e-5, rtol=1e-5)


def model_with_time(mode="adaln", seed=0, **overrides):
    """A tiny model whose modulation is not zero (at init AdaLN is the identity and would hide t)."""
    model = tiny_model(seed=seed, time_conditioning=mode, **overrides)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if model.parameter_group(n) == "time_conditioning":
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed + 1))
    return model


def random_t(seed=0):
    return torch.rand(B, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["adaln", "adaln_single", "none"])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_dual_cache_equals_full_forward_when_nothing_changed(mode, kv_heads):
    model = model_with_time(mode, num_key_value_heads=kv_heads)
    ids, t = random_ids((B, L)), random_t()
    with torch.no_grad():
        full = model(ids, t=t)
        hidden, cache = model.forward_with_cache(ids, t)
        torch.testing.assert_close(hidden, full, **TOL)
        for dual in (cache, cache.outside(S, E)):  # the cached block positions are replaced by fresh ones either way
            block = model.forward_block(ids[:, S:E], t, range(S, E), dual)
            torch.testing.assert_close(block, full[:, S:E], **TOL)
    assert cache.keys[0].shape == (B, kv_heads, L, 16) and len(cache.outside(S, E)) == L - (E - S)


def test_time_conditioning_matters_in_these_tests():
    """Guard: the random modulation makes the output depend on t, so the tests above check AdaLN(t)."""
    model, ids = model_with_time("adaln"), random_ids((B, L))
    with torch.no_grad():
        assert not torch.allclose(model(ids, t=torch.zeros(B)), model(ids, t=torch.ones(B)), atol=1e-3)


def test_bidirectional_prefix_cache_fast_dllm_style():
    """Prefix cache: the positions before the block are cached, the block and the suffix are recomputed."""
    model, ids, t = model_with_time("adaln"), random_ids((B, L)), random_t()
    with torch.no_grad():
        full = model(ids, t=t)
        _, cache = model.forward_with_cache(ids, t, cache_positions=range(S))
        torch.testing.assert_close(model.forward_block(ids[:, S:], t, range(S, L), cache), full[:, S:], **TOL)
        # the block alone over a prefix cache ignores the suffix: a different (cheaper) function when bidirectional
        assert not torch.allclose(model.forward_block(ids[:, S:E], t, range(S, E), cache), full[:, S:E], atol=1e-4)


@pytest.mark.parametrize("mode", ["adaln", "none"])
def test_causal_prefix_cache_is_exact(mode):
    model, ids, t = model_with_time(mode, attention_mode="causal"), random_ids((B, L)), random_t()
    with torch.no_grad():
        full = model(ids, t=t)
        _, cache = model.forward_with_cache(ids, t)
        torch.testing.assert_close(model.forward_block(ids[:, S:E], t, range(S, E), cache.prefix(S)), full[:, S:E], **TOL)
        # causal: the suffix keys in a dual cache are masked out, and a changed block leaves the prefix exact
        torch.testing.assert_close(model.forward_block(ids[:, S:E], t, range(S, E), cache), full[:, S:E], **TOL)
        changed = ids.clone()
        changed[:, S:] = MASK
        torch.testing.assert_close(model.forward_block(changed[:, S:E], t, range(S, E), cache.prefix(S)),
                                   model(changed, t=t)[:, S:E], **TOL)


@pytest.mark.parametrize("attention_mode", ["bidirectional", "causal"])
def test_block_covering_whole_sequence_equals_full_forward(attention_mode):
    model, ids, t = model_with_time("adaln_single", attention_mode=attention_mode), random_ids((B, L)), random_t()
    with torch.no_grad():
        full = model(ids, t=t)
        _, cache = model.forward_with_cache(ids, t)
        torch.testing.assert_close(model.forward_block(ids, t, range(L), cache), full, **TOL)
        empty = cache.select([])
        assert len(empty) == 0
        torch.testing.assert_close(model.forward_block(ids, t, torch.arange(L), empty), full, **TOL)


@pytest.mark.parametrize("attention_mode", ["bidirectional", "causal"])
def test_right_padding_with_attention_mask(attention_mode):
    model, ids, t = model_with_time("adaln", attention_mode=attention_mode), random_ids((B, L)), random_t()
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 12:] = False  # row 1 ends in 4 padding tokens; the block [10, 14) straddles its end
    s, e = 10, 14
    with torch.no_grad():
        full = model(ids, t=t, attention_mask=mask)
        hidden, cache = model.forward_with_cache(ids, t, attention_mask=mask)
        torch.testing.assert_close(hidden, full, **TOL)
        assert cache.key_valid.tolist() == mask.tolist()
        block = model.forward_block(ids[:, s:e], t, range(s, e), cache, attention_mask=mask[:, s:e])
        torch.testing.assert_close(block, full[:, s:e], **TOL)  # padding rows too: a query sees itself, as in the full forward
        # padding is never attended to: other padding tokens leave the real positions unchanged
        repadded = ids.clone()
        repadded[1, 12:] = 7
        _, cache2 = model.forward_with_cache(repadded, t, attention_mask=mask)
        again = model.forward_block(repadded[:, s:e], t, range(s, e), cache2, attention_mask=mask[:, s:e])
        torch.testing.assert_close(again[1, :2], block[1, :2], **TOL)


def test_arbitrary_position_sets_and_the_shift_convention():
    """With shift_logits the new tokens [S, E) are predicted at [S-1, E-1): ask for range(S-1, E), slice."""
    model, ids, t = model_with_time("adaln"), random_ids((B, L)), random_t()
    with torch.no_grad():
        full = model(ids, t=t)
        _, cache = model.forward_with_cache(ids, t)
        shifted = model.forward_block(ids[:, S - 1:E], t, range(S - 1, E), cache)[:, :-1]
        torch.testing.assert_close(shifted, full[:, S - 1:E - 1], **TOL)
        scattered = torch.tensor([11, 2, 7])  # any order, not contiguous
        torch.testing.assert_close(model.forward_block(ids[:, scattered], t, scattered, cache), full[:, scattered], **TOL)


def test_cache_is_an_approximation_once_the_block_or_t_changes():
    """Documents the approximation (no equality): after the block's tokens change, the cached K/V of the
    other positions (which attended to the old block) are stale, so the block's hidden differs from a
    fresh full forward; the same when t moves (the cache keeps the K/V of the t it was built at)."""
    model, t = model_with_time("adaln"), random_t()
    ids = random_ids((B, L))
    ids[:, S:] = MASK  # the block and the suffix still masked, as at the start of a block
    with torch.no_grad():
        _, cache = model.forward_with_cache(ids, t)
        decoded = ids.clone()
        decoded[:, S:E] = random_ids((B, E - S), seed=3)  # the sampler unmasks the block
        cached = model.forward_block(decoded[:, S:E], t, range(S, E), cache)
        exact = model(decoded, t=t)[:, S:E]
        assert not torch.allclose(cached, exact, atol=1e-4)
        later = torch.clamp(t + 0.2, max=1.0)
        assert not torch.allclose(model.forward_block(ids[:, S:E], later, range(S, E), cache), model(ids, t=later)[:, S:E],
                                  atol=1e-4)
        assert torch.equal(cache.t, t)


def test_errors_name_the_argument():
    model, ids, t = model_with_time("adaln"), random_ids((B, L)), random_t()
    with torch.no_grad():
        _, cache = model.forward_with_cache(ids, t)
        with pytest.raises(ValueError, match="one document per row"):
            model.forward_with_cache(ids, t, cu_seqlens=torch.tensor([0, 5, 16, 32], dtype=torch.int32))
        model.forward_with_cache(ids, t, cu_seqlens=torch.tensor([0, 16, 32], dtype=torch.int32))  # row starts only: fine
        with pytest.raises(ValueError, match="distinct"):
            model.forward_block(ids[:, :2], t, [3, 3], cache)
        with pytest.raises(ValueError, match="positions has 3 entries"):
            model.forward_block(ids[:, :2], t, [1, 2, 3], cache)
        with pytest.raises(ValueError, match="seq_len=16"):
            model.forward_block(ids[:, :2], t, [15, 16], cache)
        with pytest.raises(ValueError, match="batch size 2"):
            model.forward_block(ids[:1, :2], t[:1], [1, 2], cache)
        with pytest.raises(ValueError, match="attention_mask has shape"):
            model.forward_block(ids[:, :2], t, [1, 2], cache, attention_mask=torch.ones(B, L, dtype=torch.bool))
        with pytest.raises(ValueError, match="not in the cache"):
            cache.prefix(4).select([3, 4])
        with pytest.raises(TypeError, match="KVCache"):
            model.forward_block(ids[:, :2], t, [1, 2], [(k, v) for k, v in zip(cache.keys, cache.values)])
        with pytest.raises(ValueError, match="needs t"):
            model.forward_block(ids[:, :2], None, [1, 2], cache)
    with pytest.raises(ValueError, match="strictly increasing"):
        KVCache(cache.keys, cache.values, cache.positions.flip(0), cache.key_valid, L)


def test_query_key_mask():
    q, k = torch.tensor([2, 3]), torch.tensor([0, 1, 4, 2, 3])
    valid = torch.tensor([[True, False, True, True, True]])
    mask = query_key_mask(q, k, valid, causal=True)[0, 0]
    assert mask.tolist() == [[True, False, False, True, False], [True, False, False, True, True]]
    assert query_key_mask(q, k, None, causal=False) is None
    # a padding query sees itself only when nothing else is valid
    assert query_key_mask(q, k, torch.zeros(1, 5, dtype=torch.bool), causal=False)[0, 0].tolist() == \
        [[False, False, False, True, False], [False, False, False, False, True]]
