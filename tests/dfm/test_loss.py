"""dfm_loss against the closed forms: CoDA's preset formula, kl weights, normalizers, shift."""

import pytest
import torch
import torch.nn.functional as F

from megadfm.data.batch import batch_from_documents
from megadfm.dfm.config import DFMConfig
from megadfm.dfm.loss import dfm_loss
from megadfm.dfm.schedulers import make_scheduler
from megadfm.model import ModelConfig, Qwen3DFM

VOCAB, MASK, PAD = 64, 60, 0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Qwen3DFM(ModelConfig(vocab_size=VOCAB, mask_token_id=MASK, hidden_size=32, intermediate_size=64,
                             num_attention_heads=4, num_key_value_heads=2, kernels="torch"), seed=0)
    # Non-zero AdaLN so t matters (zero-init would make the model ignore t).
    with torch.no_grad():
        for name, p in m.named_parameters():
            if m.parameter_group(name) == "time_conditioning":
                p.normal_(0, 0.05)
    return m


def _random_docs(rows, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 50, (n,), generator=g).tolist() for n in lengths[:rows]]


def _coda_formula(model, batch, x_t, masked, t):
    """CoDA's pre-training loss, written from its published formula (modeling_coda.py):
    sigma = mask ratio (= 1 - t, linear); dsigma = 1 / sigma;
    loss = sum((dsigma[:, None] * CE(logits[:, :-1], x1[:, 1:]) * masked[:, 1:])) / (B * L)."""
    x1 = batch["input_ids"]
    bsz, seq_len = x1.shape
    hidden = model(x_t, t=t, position_ids=batch["position_ids"], cu_seqlens=batch["cu_seqlens"], max_seqlen=batch["max_seqlen"])
    logits = model.logits(hidden)[:, :-1]
    ce = F.cross_entropy(logits.reshape(-1, VOCAB), x1[:, 1:].reshape(-1), reduction="none").view(bsz, seq_len - 1)
    ce = ce.masked_fill(~masked[:, 1:], 0.0)
    sigma = 1.0 - t.double()
    return ((1.0 / sigma)[:, None] * ce.double()).sum() / (bsz * seq_len)


@pytest.mark.parametrize("padded", [False, True])
def test_coda_preset_equals_codas_formula(model, padded):
    cfg = DFMConfig(scheduler="linear", loss_weighting="coda")
    lengths = [12, 7, 12, 9] if padded else [12] * 4
    batch = batch_from_documents(_random_docs(4, lengths, 0), seq_len=12, pad_token_id=PAD)
    t = torch.tensor([0.05, 0.3, 0.6, 0.9])
    out = dfm_loss(model, batch, t, cfg, make_scheduler(cfg), torch.Generator().manual_seed(1), pad_token_id=PAD)
    assert out.masked.any()
    expected = _coda_formula(model, batch, out.x_t, out.masked, t)
    torch.testing.assert_close(out.loss.double(), expected, rtol=1e-5, atol=1e-7)
    assert float(out.normalizer) == 4 * 12  # all positions, padding included, as CoDA
    torch.testing.assert_close(out.weight.double(), 1.0 / (1.0 - t.double()), rtol=1e-6, atol=0)


def test_kl_linear_equals_coda_without_padding_and_normalizers(model):
    batch = batch_from_documents(_random_docs(4, [10] * 4, 2), pad_token_id=PAD)
    t = torch.tensor([0.1, 0.4, 0.5, 0.8])
    outs = {}
    for name, cfg in {"coda": DFMConfig(scheduler="linear", loss_weighting="coda"),
                      "kl": DFMConfig(scheduler="linear"),
                      "masked": DFMConfig(scheduler="linear", loss_normalizer="masked"),
                      "none": DFMConfig(scheduler="linear", loss_weighting="none")}.items():
        outs[name] = dfm_loss(model, batch, t, cfg, make_scheduler(cfg), torch.Generator().manual_seed(5), pad_token_id=PAD)
    torch.testing.assert_close(outs["kl"].loss, outs["coda"].loss)
    # same seed -> same x_t; the unweighted per-token CE sums agree across weightings
    for name in outs:
        assert torch.equal(outs[name].x_t, outs["kl"].x_t)
        torch.testing.assert_close(outs[name].per_seq_unweighted_sum, outs["kl"].per_seq_unweighted_sum)
    count = outs["kl"].per_seq_masked_count
    assert torch.equal(count, outs["kl"].masked.sum(1))
    weighted = outs["kl"].per_seq_weighted_sum
    torch.testing.assert_close(outs["masked"].loss, weighted.sum() / count.sum())
    torch.testing.assert_close(outs["none"].loss, outs["kl"].per_seq_unweighted_sum.sum() / 40)
    torch.testing.assert_close(weighted, outs["kl"].per_seq_unweighted_sum / (1 - t))


@pytest.mark.parametrize("n", [1.0, 2.0])
def test_kl_weight_polynomial(model, n):
    cfg = DFMConfig(scheduler="polynomial", scheduler_exponent=n)
    batch = batch_from_documents(_random_docs(3, [8, 8, 8], 3), pad_token_id=PAD)
    t = torch.tensor([0.2, 0.5, 0.7])
    out = dfm_loss(model, batch, t, cfg, make_scheduler(cfg), torch.Generator().manual_seed(0), pad_token_id=PAD)
    expected = n * t.double() ** (n - 1) / (1 - t.double() ** n)
    torch.testing.assert_close(out.weight.double(), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(out.mask_ratio.double(), 1 - t.double() ** n, rtol=1e-6, atol=0)


@pytest.mark.parametrize("shift", [True, False])
def test_loss_scores_the_right_position_and_never_crosses_documents(model, shift):
    """Per-token CE from dfm_loss equals CE(logits[source], x1[target]) with source = target - 1 (shift)."""
    cfg = DFMConfig(scheduler="linear", loss_weighting="none", loss_normalizer="masked", shift_logits=shift)
    # two documents packed in each row
    from megadfm.data.batch import position_ids_from_segments, segments_to_cu_seqlens
    segs = [[5, 7], [5, 7]]
    ids = torch.randint(1, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "position_ids": position_ids_from_segments(segs), "cu_seqlens": segments_to_cu_seqlens(segs, 12),
             "max_seqlen": 7, "loss_mask": torch.ones(2, 12, dtype=torch.bool), "sample_index": torch.arange(2)}
    t = torch.zeros(2)  # r = 1: every maskable token masked
    out = dfm_loss(model, batch, t, cfg, make_scheduler(cfg), torch.Generator().manual_seed(0), pad_token_id=PAD)
    starts = torch.zeros(2, 12, dtype=torch.bool)
    starts[:, [0, 5]] = True
    assert torch.equal(out.masked, ~starts if shift else torch.ones_like(starts))
    with torch.no_grad():
        hidden = model(out.x_t, t=t, position_ids=batch["position_ids"], cu_seqlens=batch["cu_seqlens"], max_seqlen=7)
        logits = model.logits(hidden)
    total = 0.0
    for b, i in out.masked.nonzero().tolist():
        src = i - 1 if shift else i
        total += float(F.cross_entropy(logits[b, src][None], ids[b, i][None]))
    assert float(out.loss.detach()) == pytest.approx(total / int(out.masked.sum()), rel=1e-5)


def test_loss_backpropagates_and_strategies_run(model):
    cfg = DFMConfig(prefix_mask_prob=0.3, truncate_suffix_prob=0.3, block_mask_prob=0.3)
    batch = batch_from_documents(_random_docs(8, [16] * 8, 4), pad_token_id=PAD)
    t = torch.rand(8, generator=torch.Generator().manual_seed(0)) * 0.99
    model.zero_grad()
    out = dfm_loss(model, batch, t, cfg, make_scheduler(cfg), torch.Generator().manual_seed(0), pad_token_id=PAD)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()


def test_t_must_be_in_range(model):
    cfg = DFMConfig()
    batch = batch_from_documents(_random_docs(1, [6], 0), pad_token_id=PAD)
    with pytest.raises(ValueError, match="0, 1"):
        dfm_loss(model, batch, torch.tensor([1.5]), cfg, make_scheduler(cfg), torch.Generator(), pad_token_id=PAD)


def test_coda_preset_requires_tokens_normalizer():
    from megadfm.config_base import ConfigError
    with pytest.raises(ConfigError, match="loss_normalizer"):
        DFMConfig(loss_weighting="coda", loss_normalizer="masked")


def test_uniform_source_scores_every_maskable_position(model):
    cfg = DFMConfig(source="uniform", loss_weighting="none", loss_normalizer="masked")
    batch = batch_from_documents(_random_docs(2, [10, 7], 6), seq_len=10, pad_token_id=PAD)
    out = dfm_loss(model, batch, torch.tensor([0.3, 0.6]), cfg, make_scheduler(cfg), torch.Generator().manual_seed(0),
                   pad_token_id=PAD)
    expected = batch["loss_mask"].clone()
    expected[:, 0] = False  # shift on: document starts are never scored
    assert torch.equal(out.masked, expected)
    assert not (out.x_t == MASK).any()  # a uniform source never shows the mask token


@pytest.fixture
def doubled_none_weighting():
    """A weighting registered by the test itself: w = 2 (twice plain masked CE)."""
    from megadfm.dfm.weighting import LOSS_WEIGHTINGS

    @LOSS_WEIGHTINGS.register("test_twice")
    def twice(t, mask_ratio, scheduler):
        return 2.0 * t.new_ones(t.shape)

    yield "test_twice"
    LOSS_WEIGHTINGS.unregister("test_twice")


def test_a_weighting_registered_in_a_test_is_a_config_value(model, doubled_none_weighting):
    batch = batch_from_documents(_random_docs(3, [9, 6, 9], 7), seq_len=9, pad_token_id=PAD)
    t = torch.tensor([0.2, 0.5, 0.8])
    cfg = DFMConfig(scheduler="linear", loss_weighting=doubled_none_weighting)
    out = dfm_loss(model, batch, t, cfg, make_scheduler(cfg), torch.Generator().manual_seed(3), pad_token_id=PAD)
    assert out.masked.any()
    torch.testing.assert_close(out.weight, torch.full((3,), 2.0))
    # tokens normalizer: the 24 real tokens of the batch
    torch.testing.assert_close(out.loss, 2.0 * out.per_seq_unweighted_sum.sum() / 24)


def test_coda_is_inverse_mask_ratio_plus_all_positions(model):
    """The preset and its two halves named explicitly give the same loss, padding included."""
    batch = batch_from_documents(_random_docs(4, [12, 7, 12, 9], 8), seq_len=12, pad_token_id=PAD)
    t = torch.tensor([0.1, 0.35, 0.6, 0.85])
    cfgs = [DFMConfig(scheduler="polynomial", scheduler_exponent=2.0, loss_weighting="coda"),
            DFMConfig(scheduler="polynomial", scheduler_exponent=2.0, loss_weighting="inverse_mask_ratio",
                      loss_normalizer="all_positions")]
    outs = [dfm_loss(model, batch, t, c, make_scheduler(c), torch.Generator().manual_seed(2), pad_token_id=PAD) for c in cfgs]
    assert float(outs[0].normalizer) == float(outs[1].normalizer) == 4 * 12
    torch.testing.assert_close(outs[0].loss, outs[1].loss)
    torch.testing.assert_close(outs[0].weight.double(), 1.0 / (1.0 - t.double() ** 2), rtol=1e-6, atol=0)
