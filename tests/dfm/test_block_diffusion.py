"""dfm.mode: block (megadfm/dfm/block_diffusion.py): the two-stream attention pattern of docs/BLOCK_DIFFUSION.md's
worked example, the reductions to full DFM (one block per document) and to the AR loss (blocks of one token),
per-block times, and the model's time per token."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megadfm.config import ConfigError, load_config
from megadfm.data.batch import position_ids_from_segments, segments_to_cu_seqlens
from megadfm.dfm.ar_loss import ar_loss
from megadfm.model.kernels.attention import segment_ids
from megadfm.dfm.block_diffusion import (block_dfm_loss, block_times, document_blocks, prediction_sources,
                                         two_stream_attention)
from megadfm.dfm.config import DFMConfig
from megadfm.dfm.loss import dfm_loss
from megadfm.dfm.objectives import DFM_MODES
from megadfm.dfm.schedulers import make_scheduler
from megadfm.dfm.shift import segment_starts
from megadfm.dfm.time_sampling import max_time
from tests.model.tiny import MASK, random_ids, tiny_model

# the worked example: one row of 12 = a document of 7 tokens, then one of 5; blocks of 4
EXAMPLE_SEGMENTS, EXAMPLE_L, EXAMPLE_BLOCK = [[7, 5]], 12, 4


def example():
    cu = segments_to_cu_seqlens(EXAMPLE_SEGMENTS, EXAMPLE_L)
    positions = position_ids_from_segments(EXAMPLE_SEGMENTS)
    return segment_ids(cu, 1, EXAMPLE_L), document_blocks(positions, EXAMPLE_BLOCK), cu


def test_worked_example_blocks_and_attention_pattern():
    segment, block, _ = example()
    assert segment[0].tolist() == [0] * 7 + [1] * 5
    assert block[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1]  # blocks restart with every document
    allowed = two_stream_attention(segment, block)[0]
    L = EXAMPLE_L
    # the pattern, rule by rule (q, k: positions; the noisy stream is [0, L), the clean one [L, 2L))
    for q in range(L):
        for k in range(L):
            same = segment[0, q] == segment[0, k]
            bq, bk = int(block[0, q]), int(block[0, k])
            assert bool(allowed[q, k]) == bool(same and bk == bq), ("noisy->noisy", q, k)
            assert bool(allowed[q, L + k]) == bool(same and bk < bq), ("noisy->clean", q, k)
            assert bool(allowed[L + q, L + k]) == bool(same and bk <= bq), ("clean->clean", q, k)
            assert not bool(allowed[L + q, k]), ("clean->noisy", q, k)
    # the rows docs/BLOCK_DIFFUSION.md prints: noisy position 5 (document A, block 1) and clean position 9 (B, block 0)
    as_text = lambda row: "".join("x" if v else "." for v in row.tolist())  # noqa: E731
    assert as_text(allowed[5]) == "....xxx....." + "xxxx........"
    assert as_text(allowed[L + 9]) == "............" + ".......xxxx."


def test_prediction_sources_follow_the_shift_rule():
    segment, block, cu = example()
    starts = segment_starts(cu, 1, EXAMPLE_L)
    targets = torch.ones(1, EXAMPLE_L, dtype=torch.bool) & ~starts  # every predictable position
    source, target = prediction_sources(targets, block, starts, shift=True)
    L = EXAMPLE_L
    got = dict(zip(target.tolist(), source.tolist()))
    # position 4 opens block 1 of document A: predicted from the CLEAN stream at 3; 5 from the noisy stream at 4
    assert got[4] == L + 3 and got[5] == 4 and got[1] == 0
    assert got[11] == L + 10 and got[8] == 7  # document B: 11 opens its block 1; 8 (B's position 1) from noisy 7
    source, target = prediction_sources(torch.ones(1, L, dtype=torch.bool), block, starts, shift=False)
    assert source.tolist() == target.tolist() == list(range(L))
    with pytest.raises(ValueError, match="first token of a document"):
        prediction_sources(torch.ones(1, L, dtype=torch.bool), block, starts, shift=True)


def packed_batch(segments, seq_len: int, seed: int = 3):
    ids = random_ids((len(segments), seq_len), seed=seed, high=MASK)
    real = torch.zeros(len(segments), seq_len, dtype=torch.bool)
    padded = []
    for b, lengths in enumerate(segments):
        used = sum(lengths)
        real[b, :used] = True
        padded.append(lengths + ([seq_len - used] if used < seq_len else []))
    cu = segments_to_cu_seqlens(padded, seq_len)
    return {"input_ids": ids, "position_ids": position_ids_from_segments(padded), "cu_seqlens": cu,
            "max_seqlen": int((cu[1:] - cu[:-1]).max()), "loss_mask": real}


SEGMENTS, SEQ = [[9, 6], [13]], 16  # row 0: two documents; row 1: one document and padding


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("conditioning", ["adaln", "adaln_single"])
def test_one_block_per_document_is_full_dfm(shift, conditioning):
    model = tiny_model(seed=2, time_conditioning=conditioning)
    with torch.no_grad():  # modulations that matter (they are zero at init)
        for name, p in model.named_parameters():
            if "adaln" in name or "time_embedding" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    batch = packed_batch(SEGMENTS, SEQ)
    full = DFMConfig(shift_logits=shift)
    block = dataclasses.replace(full, mode="block", block_size=SEQ)
    scheduler = make_scheduler(full)
    t = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        want = dfm_loss(model, batch, t, full, scheduler, torch.Generator().manual_seed(11))
        got = block_dfm_loss(model, batch, t, block, scheduler, torch.Generator().manual_seed(11))
    assert torch.equal(got.x_t, want.x_t) and torch.equal(got.masked, want.masked)
    assert int(got.masked.sum()) > 4
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.per_seq_weighted_sum, want.per_seq_weighted_sum, rtol=1e-5, atol=1e-6)
    for name in ("per_seq_masked_count", "mask_ratio", "weight", "normalizer", "t"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


def test_blocks_of_one_token_fully_masked_are_the_ar_loss():
    """Block size 1, shift on, t = 0 (every position masked): each token is predicted from the clean stream
    at the previous position, which sees only the clean document before it: next-token CE of the causal model."""
    bidirectional = tiny_model(seed=4, time_conditioning="none")
    causal = tiny_model(seed=4, time_conditioning="none", attention_mode="causal")
    batch = packed_batch(SEGMENTS, SEQ, seed=8)
    cfg = DFMConfig(mode="block", block_size=1, loss_weighting="none", loss_normalizer="masked")
    ar = DFMConfig(objective="ar", loss_weighting="none", loss_normalizer="masked")
    with torch.no_grad():
        got = block_dfm_loss(bidirectional, batch, torch.zeros(2), cfg, make_scheduler(cfg), torch.Generator())
        want = ar_loss(causal, batch, torch.zeros(2), ar, make_scheduler(ar), torch.Generator())
    assert torch.equal(got.masked, want.masked)  # every AR target, nothing else
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.per_seq_unweighted_sum, want.per_seq_unweighted_sum, rtol=1e-5, atol=1e-5)


def test_per_block_times_are_uniform_distinct_and_evaluation_uses_the_row_time():
    cfg = DFMConfig(mode="block", block_size=4, block_t="block")
    scheduler = make_scheduler(cfg)
    t_max = max_time(cfg, scheduler)
    t = torch.rand(4000, generator=torch.Generator().manual_seed(0)) * t_max
    block = torch.arange(8)[None, :].expand(4000, 8)
    times = block_times(t, block, t_max, per_block=True)
    assert bool((times >= 0).all()) and bool((times < t_max).all())
    torch.testing.assert_close(times[:, 0], t, rtol=1e-6, atol=1e-7)  # block 0 keeps the row's draw
    for k in range(8):  # each block's time is uniform on [0, t_max]: mean and variance of U[0, t_max]
        assert abs(float(times[:, k].mean()) / t_max - 0.5) < 0.02
        assert abs(float(times[:, k].var()) / t_max ** 2 - 1 / 12) < 0.01
    assert float((times[:, 1] - times[:, 0]).abs().min()) > 0  # different from block to block
    assert torch.equal(block_times(t, block, t_max, per_block=False), t[:, None].expand(4000, 8))

    model = tiny_model(seed=1)
    batch = packed_batch(SEGMENTS, SEQ)
    row_t = torch.tensor([0.4, 0.8])
    model.train()
    trained = block_dfm_loss(model, batch, row_t, cfg, scheduler, torch.Generator().manual_seed(1))
    model.eval()
    evaluated = block_dfm_loss(model, batch, row_t, cfg, scheduler, torch.Generator().manual_seed(1))
    row_cfg = dataclasses.replace(cfg, block_t="row")
    per_row = block_dfm_loss(model, batch, row_t, row_cfg, scheduler, torch.Generator().manual_seed(1))
    assert torch.equal(evaluated.x_t, per_row.x_t) and not torch.equal(trained.x_t, per_row.x_t)
    assert not torch.equal(trained.mask_ratio, per_row.mask_ratio)  # the row's mean over blocks at their own t


def test_a_time_per_token_equals_one_per_row_when_constant_and_is_used_when_not():
    model = tiny_model(seed=5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaln" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    ids = random_ids((2, 10), seed=2, high=MASK)
    t = torch.tensor([0.2, 0.9])
    row = model(ids, t=t)
    per_token = model(ids, t=t[:, None].expand(2, 10).contiguous())
    torch.testing.assert_close(per_token, row, rtol=1e-6, atol=1e-6)
    mixed = t[:, None].expand(2, 10).clone()
    mixed[0, 5:] = 1.0
    out = model(ids, t=mixed)
    assert not torch.allclose(out[0], row[0]) and torch.allclose(out[1], row[1], rtol=1e-6, atol=1e-6)
    # gradients flow through the per-token path as through the per-row one
    model.zero_grad()
    model(ids, t=t).square().sum().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model(ids, t=t[:, None].expand(2, 10).contiguous()).square().sum().backward()
    for n, p in model.named_parameters():
        if n in want:
            torch.testing.assert_close(p.grad, want[n], rtol=1e-4, atol=1e-6, msg=n)
    with pytest.raises(ValueError, match="a time per token"):
        model(ids, t=torch.ones(2, 3))


def test_block_mode_config_and_registry():
    import typing

    assert DFM_MODES.keys() == list(typing.get_args(typing.get_type_hints(DFMConfig)["mode"])) == ["full", "block"]
    cfg = load_config(None, ["dfm.mode=block", "dfm.block_size=8", "dfm.block_t=block"])
    assert (cfg.dfm.mode, cfg.dfm.block_size, cfg.dfm.block_t) == ("block", 8, "block")
    for overrides, key in ((["dfm.mode=block", "dfm.source=uniform"], "dfm.source"),
                           (["dfm.mode=block", "dfm.block_mask_prob=0.5"], "dfm.block_mask_prob"),
                           (["dfm.mode=block", "dfm.attention_anneal_steps=10"], "dfm.attention_anneal_steps"),
                           (["dfm.block_size=0"], "dfm.block_size")):
        with pytest.raises(ConfigError) as e:
            load_config(None, overrides)
        assert f"'{key}'" in str(e.value), (overrides, str(e.value))


def test_block_size_curriculum_by_step_and_its_config_checks():
    from megadfm.dfm.block_diffusion import block_size_at

    cfg = DFMConfig(mode="block", block_size=32, block_size_warmup=[[100, 4], [200, 16]])
    assert [block_size_at(cfg, s) for s in (1, 100, 101, 200, 201, 10_000)] == [4, 4, 16, 16, 32, 32]
    assert block_size_at(DFMConfig(mode="block", block_size=8), 1) == 8
    for overrides, fragment in ((["dfm.mode=block", "dfm.block_size_warmup=[[100, 16], [50, 32]]"], "increase"),
                                (["dfm.mode=block", "dfm.block_size=8", "dfm.block_size_warmup=[[100, 16]]"], "block_size=8"),
                                (["dfm.block_size_warmup=[[100, 4]]"], "block-mode option")):
        with pytest.raises(ConfigError) as e:
            load_config(None, overrides)
        assert "'dfm.block_size_warmup'" in str(e.value) and fragment in str(e.value), str(e.value)
