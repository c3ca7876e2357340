"""dfm_loss on SFT batches (data.format: sft): prompt tokens never masked nor scored, tail policies,
the EOS loss weight and the response_length normaliser against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megadfm.data.config import BlendSource, DataConfig, SFTConfig
from megadfm.data.indexed import IndexedDatasetWriter
from megadfm.data.loader import batches, build_blended_dataset
from megadfm.dfm.config import DFMConfig
from megadfm.dfm.loss import dfm_loss
from megadfm.dfm.schedulers import make_scheduler
from megadfm.model import ModelConfig, Qwen3DFM

VOCAB, MASK, PAD, EOS = 64, 60, 0, 59
SEQ_LEN = 32


@pytest.fixture(scope="module")
def model():
    m = Qwen3DFM(ModelConfig(vocab_size=VOCAB, mask_token_id=MASK, hidden_size=32, intermediate_size=64,
                             num_attention_heads=4, num_key_value_heads=2, kernels="torch"), seed=0)
    with torch.no_grad():  # non-zero AdaLN so t matters
        for name, p in m.named_parameters():
            if m.parameter_group(name) == "time_conditioning":
                p.normal_(0, 0.05)
    return m


@pytest.fixture(scope="module")
def sft_prefix(tmp_path_factory):
    """24 [prompt, response] examples over small ids; responses end with EOS (and EOS never appears elsewhere)."""
    rng = np.random.RandomState(0)
    prefix = str(tmp_path_factory.mktemp("sft_loss") / "toy")
    with IndexedDatasetWriter(prefix, np.int32) as w:
        for _ in range(24):
            p, r = int(rng.randint(2, 9)), int(rng.randint(2, 10))
            prompt = rng.randint(1, 50, p).tolist()
            response = rng.randint(1, 50, r - 1).tolist() + [EOS]
            w.add_document(prompt + response, sequence_lengths=[p, r])
    return prefix


def sft_batch(prefix, tmp_path, rows=4, **sft):
    sft.setdefault("eos_token_id", EOS)
    cfg = DataConfig(blend=[BlendSource(prefix, 1.0)], seq_len=SEQ_LEN, split=[1, 0, 0], seed=1, format="sft",
                     pad_token_id=PAD, sft=SFTConfig(**sft), cache_dir=str(tmp_path / "cache"))
    return next(batches(build_blended_dataset(cfg, "train"), 0, 1, rows))


def run(model, batch, t, cfg, seed):
    return dfm_loss(model, batch, t, cfg, make_scheduler(cfg), torch.Generator().manual_seed(seed), pad_token_id=PAD)


def shifted_ce(model, batch, out):
    """[B, L] CE of x_1[b, i] predicted by the output at i - 1 (the shift), at the scored positions, else 0."""
    hidden = model(out.x_t, t=out.t, position_ids=batch["position_ids"], cu_seqlens=batch["cu_seqlens"],
                   max_seqlen=batch["max_seqlen"])
    logits = model.logits(hidden).float()
    ce = torch.zeros(batch["input_ids"].shape, dtype=torch.float64)
    ce[:, 1:] = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), batch["input_ids"][:, 1:].reshape(-1),
                                reduction="none").view(ce.shape[0], -1).double()
    return ce * out.masked


@pytest.mark.parametrize("dfm", [dict(), dict(source="uniform", loss_weighting="none"),
                                 dict(prefix_mask_prob=0.3, truncate_suffix_prob=0.3, block_mask_prob=0.3)],
                         ids=["mask", "uniform", "coda_strategies"])
@pytest.mark.parametrize("packing", [False, True])
def test_prompt_tokens_are_never_masked_nor_scored(model, sft_prefix, tmp_path, dfm, packing):
    batch = sft_batch(sft_prefix, tmp_path, packing=packing)
    prompt = batch["prompt_mask"]
    assert prompt.any() and (~prompt & batch["loss_mask"]).any()
    cfg = DFMConfig(scheduler="linear", **dfm)
    g = torch.Generator().manual_seed(7)
    response_scored = 0
    with torch.no_grad():
        for draw in range(150):
            t = torch.rand(4, generator=g) * 0.999
            out = run(model, batch, t, cfg, draw)
            assert not bool((out.masked & prompt).any()), f"draw {draw}: a prompt position was scored"
            assert not bool((out.x_t[prompt] == MASK).any()), f"draw {draw}: a prompt token was masked"
            kept = out.x_t[prompt] == batch["input_ids"][prompt]
            if cfg.truncate_suffix_prob == 0:
                assert bool(kept.all()), f"draw {draw}: a prompt token was corrupted"
            else:  # CoDA's truncation may cut inside the prompt: the cut tokens become padding, never noise
                assert bool((kept | (out.x_t[prompt] == PAD)).all()), f"draw {draw}: a prompt token was corrupted"
            response_scored += int(out.masked.sum())
    assert response_scored > 150  # the response was masked and scored all along: the check is not vacuous


def test_eos_train_tail_is_scored_and_attended(model, sft_prefix, tmp_path):
    batch = sft_batch(sft_prefix, tmp_path, packing=False, padding="eos_train")
    tail = torch.zeros_like(batch["loss_mask"])
    for b in range(4):
        real = int((batch["input_ids"][b] != EOS).nonzero().max()) + 2  # past the response's own EOS
        tail[b, real:] = True
    assert tail.any() and bool((batch["input_ids"][tail] == EOS).all())
    cfg = DFMConfig(scheduler="linear")
    with torch.no_grad():
        out = run(model, batch, torch.full((4,), 0.2), cfg, 0)  # r = 0.8: most of the tail is masked
        assert bool((out.masked & tail).any())
        assert float(shifted_ce(model, batch, out)[out.masked & tail].sum()) > 0  # the tail is in the loss
        # the tail is in its example's segment: changing it changes the outputs of the example's real tokens
        h = model(batch["input_ids"], t=out.t, position_ids=batch["position_ids"], cu_seqlens=batch["cu_seqlens"],
                  max_seqlen=batch["max_seqlen"])
        other = batch["input_ids"].masked_fill(tail, 7)
        h2 = model(other, t=out.t, position_ids=batch["position_ids"], cu_seqlens=batch["cu_seqlens"],
                   max_seqlen=batch["max_seqlen"])
        real = batch["loss_mask"] & ~tail
        assert not torch.allclose(h[real], h2[real])


def test_exclude_tail_is_neither_attended_nor_scored(model, sft_prefix, tmp_path):
    batch = sft_batch(sft_prefix, tmp_path, packing=False, padding="exclude")
    tail = ~batch["loss_mask"]
    assert tail.any() and bool((batch["input_ids"][tail] == PAD).all())
    cfg = DFMConfig(scheduler="linear")
    with torch.no_grad():
        for draw in range(50):
            out = run(model, batch, torch.full((4,), 0.05), cfg, draw)  # r = 0.95
            assert not bool((out.masked & tail).any())
            assert torch.equal(out.x_t[tail], batch["input_ids"][tail])
        h = model(batch["input_ids"], t=out.t, position_ids=batch["position_ids"], cu_seqlens=batch["cu_seqlens"],
                  max_seqlen=batch["max_seqlen"])
        h2 = model(batch["input_ids"].masked_fill(tail, 7), t=out.t, position_ids=batch["position_ids"],
                   cu_seqlens=batch["cu_seqlens"], max_seqlen=batch["max_seqlen"])
        torch.testing.assert_close(h[~tail], h2[~tail], rtol=0, atol=1e-6)  # the tail is not attended to


@pytest.mark.parametrize("packing", [False, True])
def test_response_length_normaliser_equals_hand_computation(model, sft_prefix, tmp_path, packing):
    batch = sft_batch(sft_prefix, tmp_path, packing=packing, padding="exclude")
    cfg = DFMConfig(scheduler="polynomial", scheduler_exponent=2.0, loss_normalizer="response_length")
    t = torch.tensor([0.1, 0.3, 0.45, 0.6])
    out = run(model, batch, t, cfg, 3)
    assert out.masked.sum(1).min() > 0
    ce = shifted_ce(model, batch, out)
    # LLaDA's SFT loss: mean over rows of  w(t_b) * sum_{masked i in b} CE_i / (response tokens of b)
    kappa_prime, r = 2 * t.double(), 1 - t.double() ** 2
    expected = 0.0
    lengths = []
    for b in range(4):
        response = int((batch["loss_mask"][b] & ~batch["prompt_mask"][b]).sum())
        lengths.append(response)
        expected += float(kappa_prime[b] / r[b]) * float(ce[b].sum().detach()) / response / 4
    assert len(set(lengths)) > 1  # rows of different response lengths: a per-row divisor is visible
    torch.testing.assert_close(out.loss.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    # telemetry's pooled ratio is the loss: the per-row divisors are folded into the weighted sums, B is left
    assert float(out.normalizer) == 4.0
    torch.testing.assert_close(out.per_seq_weighted_sum.double() / 4, torch.tensor(
        [float(kappa_prime[b] / r[b]) * float(ce[b].sum().detach()) / lengths[b] / 4 for b in range(4)],
        dtype=torch.float64), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.per_seq_weighted_sum.sum().double() / float(out.normalizer), out.loss.double().detach(),
                               rtol=1e-5, atol=1e-7)
    tokens = run(model, batch, t, DFMConfig(scheduler="polynomial", scheduler_exponent=2.0), 3)
    assert not torch.allclose(tokens.loss, out.loss)


def test_response_length_normaliser_refuses_batches_without_prompt_mask(model, sft_prefix, tmp_path):
    batch = sft_batch(sft_prefix, tmp_path)
    del batch["prompt_mask"]
    with pytest.raises(ValueError, match="response_length needs batches with prompt_mask"):
        run(model, batch, torch.full((4,), 0.5), DFMConfig(loss_normalizer="response_length"), 0)


@pytest.mark.parametrize("padding", ["eos_train", "exclude"])
def test_eos_weight_changes_exactly_the_eos_targets_contribution(model, sft_prefix, tmp_path, padding):
    weighted_batch = sft_batch(sft_prefix, tmp_path, packing=True, padding=padding, eos_loss_weight=0.25)
    plain_batch = {k: v for k, v in weighted_batch.items() if k != "loss_weights"}
    cfg = DFMConfig(scheduler="linear")
    t = torch.tensor([0.1, 0.3, 0.5, 0.15])
    weighted = run(model, weighted_batch, t, cfg, 5)
    plain = run(model, plain_batch, t, cfg, 5)
    assert torch.equal(weighted.x_t, plain.x_t) and torch.equal(weighted.masked, plain.masked)  # same draw
    eos_scored = weighted.masked & (weighted_batch["input_ids"] == EOS)
    assert eos_scored.any() and (weighted.masked & ~eos_scored).any()
    ce = shifted_ce(model, plain_batch, plain)
    per_row = plain.weight.double() / plain.normalizer.double()  # w(t_b) / normalizer
    eos_part = (per_row[:, None] * ce * eos_scored).sum()
    # only the EOS targets' term changes, by exactly (1 - 0.25) of itself
    torch.testing.assert_close((plain.loss - weighted.loss).double(), 0.75 * eos_part, rtol=1e-4, atol=1e-7)
    # telemetry follows: the weighted per-row sums drop by the same terms, unweighted ones do not move
    row_eos = (plain.weight.double()[:, None] * ce * eos_scored).sum(1)
    torch.testing.assert_close((plain.per_seq_weighted_sum - weighted.per_seq_weighted_sum).double(), 0.75 * row_eos,
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(plain.per_seq_unweighted_sum, weighted.per_seq_unweighted_sum)
    # weight 0 on the EOS targets removes exactly their term from the loss
    zero_batch = dict(plain_batch, loss_weights=torch.where(eos_scored | (weighted_batch["loss_weights"] != 1), 0.0, 1.0))
    zero = run(model, zero_batch, t, cfg, 5)
    torch.testing.assert_close((plain.loss - zero.loss).double(), eos_part, rtol=1e-4, atol=1e-7)
