"""The DFM negative ELBO (quadrature over the mask ratio) and the exact NLL of an AR model."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import transformers

from megadfm.data.batch import batch_from_documents
from megadfm.dfm.config import DFMConfig
from megadfm.dfm.schedulers import Cosine, PolynomialConvex, make_scheduler
from megadfm.eval.likelihood import ar_nll, dfm_nelbo, gauss_legendre_mask_ratios
from megadfm.model import ModelConfig, Qwen3DFM

from .helpers import overfit_model


@pytest.fixture(scope="module")
def memorized(qwen_tokenizer):
    m = overfit_model(qwen_tokenizer)
    # Every document 8 times over two batches: each copy draws its own masks, so fewer nodes go
    # without a masked token and the estimates are less noisy.
    return m, [batch_from_documents(m.docs * 4, pad_token_id=m.eod) for _ in range(2)]


def nelbo(model, batches, m, **kw):
    return dfm_nelbo(model, batches, m.dfm, make_scheduler(m.dfm), pad_token_id=m.eod, **kw)


def test_model_that_knows_the_data_has_a_lower_nelbo(memorized):
    m, batches = memorized
    trained, partial, fresh = (nelbo(x, batches, m) for x in (m.model, m.partial, m.fresh))
    scored = 8 * sum(len(d) - 1 for d in m.docs)  # the first token of each document is never masked
    assert trained["tokens"] == fresh["tokens"] == scored
    assert trained["nelbo_per_token"] < 0.5 * partial["nelbo_per_token"] < 0.25 * fresh["nelbo_per_token"]
    # An untrained model predicts near-uniformly over the compact vocabulary at every mask ratio.
    assert fresh["nelbo_per_token"] == pytest.approx(math.log(m.mask_id), rel=0.15)
    assert trained["ppl_upper_bound"] == pytest.approx(math.exp(trained["nelbo_per_token"]))
    points = trained["points"]
    assert len(points) == 16 and sum(p["quadrature_weight"] for p in points) == pytest.approx(1.0)
    for p in points:
        assert p["mask_ratio"] == pytest.approx(1.0 - p["t"])  # linear scheduler
        assert 0 <= p["masked_tokens"] <= scored and (p["ce"] is None) == (p["masked_tokens"] == 0)
    # Masked counts follow the node's mask ratio (binomial, 5 standard deviations).
    for p in points:
        assert abs(p["masked_tokens"] - p["mask_ratio"] * scored) <= 5 * math.sqrt(scored * 0.25) + 1


def test_quadrature_converges(memorized):
    """On the half-trained model, whose CE grows with the mask ratio (not a flat integrand)."""
    m, batches = memorized
    coarse, fine = nelbo(m.partial, batches, m, num_points=8), nelbo(m.partial, batches, m, num_points=32)
    ce = [p["ce"] for p in fine["points"] if p["ce"] is not None]
    assert ce[-1] > 2 * ce[len(ce) // 2]  # nodes in increasing r: nearly all masked is much harder
    assert coarse["nelbo_per_token"] == pytest.approx(fine["nelbo_per_token"], rel=0.05)


def test_nelbo_is_deterministic_for_a_seed(memorized):
    m, batches = memorized
    a, b = nelbo(m.model, batches, m, seed=3), nelbo(m.model, batches, m, seed=3)
    assert a == b
    assert nelbo(m.model, batches, m, seed=4)["points"] != a["points"]


def test_nelbo_ignores_the_training_weighting_and_strategies(memorized):
    """The bound uses the unweighted CE and the kl weight: the training loss's options do not change it."""
    m, batches = memorized
    base = nelbo(m.model, batches, m)
    for options in ({"loss_weighting": "none"}, {"loss_weighting": "coda", "loss_normalizer": "all_positions"},
                    {"loss_normalizer": "masked"}, {"prefix_mask_prob": 1.0, "truncate_suffix_prob": 1.0}):
        cfg = dataclasses.replace(m.dfm, **options)
        assert dfm_nelbo(m.model, batches, cfg, make_scheduler(cfg), pad_token_id=m.eod) == base, options
    with pytest.raises(ValueError, match="mask-source"):
        dfm_nelbo(m.model, batches, dataclasses.replace(m.dfm, source="uniform"), make_scheduler(m.dfm))


def test_nelbo_does_not_depend_on_the_scheduler_without_time_input(memorized):
    """w(t) dt = dr / r: with no t input the same masks give the same bound for any kappa."""
    m, batches = memorized
    cfg = ModelConfig(vocab_size=m.model.cfg.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, mask_token_id=m.mask_id, kernels="torch",
                      time_conditioning="none")
    model = Qwen3DFM(cfg, seed=5).eval()
    values = [dfm_nelbo(model, batches, m.dfm, s, num_points=6, pad_token_id=m.eod)["nelbo_per_token"]
              for s in (PolynomialConvex(1.0), PolynomialConvex(2.0), Cosine())]
    assert values[1] == pytest.approx(values[0], rel=1e-6) and values[2] == pytest.approx(values[0], rel=1e-6)


def test_gauss_legendre_nodes_integrate_polynomials_exactly():
    r, q = gauss_legendre_mask_ratios(4)
    assert bool(((r > 0) & (r < 1)).all())
    for degree in range(8):  # exact up to degree 2n - 1
        assert float((q * r ** degree).sum()) == pytest.approx(1.0 / (degree + 1), rel=1e-12)


@pytest.fixture(scope="module")
def tiny_causal_lm():
    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    return transformers.Qwen3ForCausalLM(cfg).eval()


def test_ar_nll_is_the_exact_next_token_nll(tiny_causal_lm):
    gen = torch.Generator().manual_seed(0)
    docs = [torch.randint(1, 97, (n,), generator=gen).tolist() for n in (5, 17, 11, 2)]
    batch = batch_from_documents(docs, pad_token_id=0)
    out = ar_nll(tiny_causal_lm, [batch])
    assert out["tokens"] == sum(len(d) - 1 for d in docs)

    by_hand = []
    with torch.no_grad():
        for doc in docs:  # each document alone: no padding can leak in
            ids = torch.tensor([doc])
            logp = tiny_causal_lm(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
            by_hand += (-logp.gather(-1, ids[0, 1:, None]).squeeze(-1)).tolist()
        labels = batch["input_ids"].masked_fill(~batch["loss_mask"], -100)
        hf = tiny_causal_lm(input_ids=batch["input_ids"], attention_mask=batch["loss_mask"].long(), labels=labels).loss
    assert out["nll_per_token"] == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-5)
    assert out["nll_per_token"] == pytest.approx(float(hf), rel=1e-5)
    assert out["ppl"] == pytest.approx(math.exp(out["nll_per_token"]))
    # Split over two batches: the same tokens, the same per-token NLL.
    two = ar_nll(tiny_causal_lm, [batch_from_documents(docs[:2], pad_token_id=0), batch_from_documents(docs[2:], pad_token_id=0)])
    assert two["tokens"] == out["tokens"] and two["nll_per_token"] == pytest.approx(out["nll_per_token"], rel=1e-5)


def test_ar_nll_and_dfm_nelbo_score_the_same_tokens(tiny_causal_lm):
    docs = [[3, 4, 5, 6], [7, 8], [9, 10, 11, 12, 13, 14]]
    batch = batch_from_documents(docs, pad_token_id=0)
    dfm = DFMConfig(scheduler="linear")
    model = Qwen3DFM(ModelConfig(vocab_size=104, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, mask_token_id=97, kernels="torch"), seed=0)
    assert ar_nll(tiny_causal_lm, [batch])["tokens"] == dfm_nelbo(model, [batch], dfm, make_scheduler(dfm), 4)["tokens"] == 9


def test_ar_nll_refuses_packed_rows(tiny_causal_lm):
    batch = batch_from_documents([[1, 2, 3, 4, 5, 6]])
    batch["cu_seqlens"] = torch.tensor([0, 3, 6], dtype=torch.int32)  # two documents in one row
    with pytest.raises(ValueError, match="several documents"):
        ar_nll(tiny_causal_lm, [batch])
