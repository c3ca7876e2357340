"""Probability path and CoDA strategies: what may be masked, and the marginal rate r."""

import pytest
import torch

from megadfm.data.batch import batch_from_documents, segments_to_cu_seqlens, position_ids_from_segments
from megadfm.dfm.config import DFMConfig
from megadfm.dfm.masking import corruption_pattern, draw_strategies
from megadfm.dfm.path import corrupt, maskable_positions
from megadfm.dfm.shift import segment_starts

MASK = 60


def _packed_batch(rows: int, segments, seq_len: int):
    ids = torch.randint(1, 50, (rows, seq_len), generator=torch.Generator().manual_seed(1))
    cu = segments_to_cu_seqlens([segments] * rows, seq_len)
    return {"input_ids": ids, "position_ids": position_ids_from_segments([segments] * rows), "cu_seqlens": cu,
            "max_seqlen": max(segments), "loss_mask": torch.ones(rows, seq_len, dtype=torch.bool),
            "sample_index": torch.arange(rows)}


@pytest.mark.parametrize("block_size", [1, 4, 8])
def test_marginal_rate_is_r_at_every_position(block_size):
    gen = torch.Generator().manual_seed(0)
    rows, seq_len, r = 4000, 24, 0.3
    pattern = corruption_pattern(torch.full((rows,), r), torch.Size((rows, seq_len)), torch.ones(rows, dtype=torch.bool),
                                 block_size, gen)
    per_position = pattern.float().mean(0)
    # 4000 Bernoulli(0.3) (block rows: correlated only within a row) -> std ~ 0.007 per position
    assert per_position.sub(r).abs().max() < 0.03
    if block_size > 1:
        # blocks: a masked position's right neighbour is masked far more often than r
        same = (pattern[:, 1:] & pattern[:, :-1]).float().sum() / pattern[:, :-1].float().sum()
        assert float(same) > 0.6


def test_path_never_masks_padding_prompt_or_document_starts():
    cfg = DFMConfig()
    batch = _packed_batch(64, [5, 7, 4], 16)
    batch["loss_mask"][:, 14:] = False  # pretend the tail is padding
    prompt = torch.zeros(64, 16, dtype=torch.bool)
    prompt[:, 1:3] = True
    starts = segment_starts(batch["cu_seqlens"], 64, 16)
    maskable = maskable_positions(batch["loss_mask"], starts, True, prompt)
    path = corrupt(batch["input_ids"], maskable, torch.ones(64), cfg, torch.Generator().manual_seed(0), MASK)
    # r = 1: exactly the maskable positions are masked
    assert torch.equal(path.corrupted, maskable) and torch.equal(path.scored, maskable)
    assert not path.corrupted[:, [0, 5, 12]].any()  # document starts (shift on)
    assert not path.corrupted[:, 1:3].any() and not path.corrupted[:, 14:].any()
    assert torch.equal(path.x_t[~maskable], batch["input_ids"][~maskable])
    assert (path.x_t[maskable] == MASK).all()
    # shift off: document starts are maskable again
    assert maskable_positions(batch["loss_mask"], starts, False)[:, [0, 5, 12]].all()


def test_mixture_source_draws_uniform_real_tokens():
    cfg = DFMConfig(source="mixture", mixture_uniform_fraction=0.5)
    ids = torch.randint(1, 50, (200, 32), generator=torch.Generator().manual_seed(0))
    maskable = torch.ones_like(ids, dtype=torch.bool)
    path = corrupt(ids, maskable, torch.full((200,), 0.5), cfg, torch.Generator().manual_seed(1), MASK)
    corrupted = path.x_t[path.corrupted]
    frac_mask = float((corrupted == MASK).float().mean())
    assert frac_mask == pytest.approx(0.5, abs=0.03)
    assert int(corrupted.max()) <= MASK and int(corrupted.min()) >= 0
    assert path.scored.all()  # non-mask sources score every maskable position


def test_prefix_strategy_keeps_the_rate_on_the_rest():
    cfg = DFMConfig(prefix_mask_prob=1.0)
    rows, seq_len, r = 3000, 20, 0.4
    batch = _packed_batch(rows, [seq_len], seq_len)
    gen = torch.Generator().manual_seed(0)
    draw = draw_strategies(batch, cfg, gen, pad_token_id=0)
    lengths = draw.unmaskable_prefix.sum(1)
    assert int(lengths.min()) == 1 and int(lengths.max()) == seq_len - 1  # uniform in [1, n-1]
    assert draw.unmaskable_prefix[:, 0].all()
    starts = segment_starts(batch["cu_seqlens"], rows, seq_len)
    maskable = maskable_positions(batch["loss_mask"], starts, True, None, draw.unmaskable_prefix)
    path = corrupt(batch["input_ids"], maskable, torch.full((rows,), r), cfg, gen, MASK)
    assert not (path.corrupted & draw.unmaskable_prefix).any()
    rate = path.corrupted.sum() / maskable.sum()
    assert float(rate) == pytest.approx(r, abs=0.01)


def test_truncation_makes_the_suffix_padding_in_its_own_segment():
    cfg = DFMConfig(truncate_suffix_prob=1.0)
    batch = batch_from_documents([list(range(1, 11)), list(range(1, 7))], seq_len=10, pad_token_id=0)
    draw = draw_strategies(batch, cfg, torch.Generator().manual_seed(3), pad_token_id=0)
    out = draw.batch
    assert draw.truncated_rows.all()
    cu = out["cu_seqlens"].tolist()
    for b, n in enumerate([10, 6]):
        kept = int(out["loss_mask"][b].sum())
        assert 1 <= kept <= n - 1
        assert (out["input_ids"][b, kept:] == 0).all()
        assert torch.equal(out["input_ids"][b, :kept], batch["input_ids"][b, :kept])
        assert b * 10 + kept in cu  # the cut is a segment boundary: nothing attends across it
        assert out["position_ids"][b, kept] == 0
    assert out["max_seqlen"] == max(c2 - c1 for c1, c2 in zip(cu, cu[1:]))
    assert torch.equal(batch["loss_mask"].sum(1), torch.tensor([10, 6]))  # input batch untouched


def test_truncation_and_prefix_are_exclusive():
    cfg = DFMConfig(prefix_mask_prob=0.5, truncate_suffix_prob=1.0)
    batch = _packed_batch(400, [16], 16)
    draw = draw_strategies(batch, cfg, torch.Generator().manual_seed(0), pad_token_id=0)
    prefixed = draw.unmaskable_prefix.any(1)
    assert not (prefixed & draw.truncated_rows).any()
    assert torch.equal(prefixed | draw.truncated_rows, torch.ones(400, dtype=torch.bool))
