"""The greedy fast path (no [N, V] softmax) against the softmax path it replaces."""

import pytest
import torch

from megadfm.conversion.hf_modeling import generation_megadfm as exported
from megadfm.dfm.logits_processing import confidence_scores, greedy_with_confidence, sample_from_logits


def _logits(n: int = 64, vocab: int = 5000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=g)
    logits[: n // 2, 7] += 30.0  # half the rows are confident (p near 1), half near-uniform
    logits[:, -3:] = float("-inf")  # the mask and the never-drawn rows
    logits[1, 11] = logits[1].max()  # an exact tie: both paths must take the first maximal index
    return logits


@pytest.mark.parametrize("kind", ["probability", "margin", "entropy", None])
@pytest.mark.parametrize("impl", [greedy_with_confidence, exported.greedy_with_confidence], ids=["in_tree", "exported"])
def test_greedy_fast_path_equals_the_softmax_path(kind, impl):
    logits = _logits()
    tokens, probs = sample_from_logits(logits, 0.0, 0, 1.0, None)
    fast_tokens, fast_scores = impl(logits, kind)
    assert torch.equal(fast_tokens, tokens)
    if kind is None:
        assert fast_scores is None
        return
    want = confidence_scores(probs, tokens, kind)
    torch.testing.assert_close(fast_scores, want, rtol=1e-5, atol=1e-6)
    if kind != "entropy":
        confident = torch.ones(64, dtype=torch.bool)
        confident[1] = False  # the tied row: two tokens share the mass
        assert float(fast_scores[:32][confident[:32]].min()) > 0.9  # the confident half really is confident
        assert float(fast_scores[32:].max()) < 0.5


def test_greedy_fast_path_refuses_an_unknown_confidence():
    with pytest.raises(ValueError, match="confidence"):
        greedy_with_confidence(_logits(4, 100), "likelihood")
