"""Temperature / top-k / top-p sampling from fp32 logits, and confidence scores for the sampler."""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits [N, V] with everything outside the top-k and the top-p nucleus set to -inf.

    top_k = 0 and top_p = 1 disable the filters. The most likely token always survives.
    """
    out = logits
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass strictly before it already reaches top_p (keeps the first).
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def sample_from_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                       generator: Optional[torch.Generator]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row of ``logits`` [N, V]; return (tokens [N], the distribution drawn from [N, V]).

    temperature 0 is greedy (argmax); the returned distribution is then the unscaled softmax, so
    confidence scores stay meaningful. Tokens whose logit is -inf (the mask token) are never drawn.
    """
    logits = logits.float()
    if temperature == 0.0:
        probs = torch.softmax(filter_logits(logits, top_k, top_p), dim=-1)
        return probs.argmax(dim=-1), probs
    probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, probs


def greedy_with_confidence(logits: torch.Tensor, kind: Optional[str]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Greedy tokens [N] and, if ``kind``, their confidence scores [N] from fp32 ``logits`` [N, V] (no filters).

    The same tokens as ``sample_from_logits(logits, 0.0, 0, 1.0, ...)`` and, up to fp32 rounding, the
    same scores as :func:`confidence_scores` on its softmax, without materialising that [N, V]
    softmax: p(token) = exp(max - logsumexp) and the margin from the top two logits. On [32, 151,936]
    fp32 logits, one thread: 10 ms instead of 16 ms for softmax + argmax + gather; the head matmul
    (about 15 ms) and fresh logit buffers make the whole draw only a few percent faster
    (bench/bench_sampler.py prints it). Entropy needs every probability, so it takes the softmax.
    """
    if kind == "entropy":
        probs = torch.softmax(logits, dim=-1)
        tokens = probs.argmax(dim=-1)
        return tokens, confidence_scores(probs, tokens, kind)
    values, tokens = logits.max(dim=-1)  # the first maximal index, as argmax
    if kind is None:
        return tokens, None
    lse = torch.logsumexp(logits, dim=-1)
    if kind == "probability":
        return tokens, (values - lse).exp()
    if kind == "margin":
        top2 = torch.topk(logits, 2, dim=-1).values
        return tokens, (top2[:, 0] - lse).exp() - (top2[:, 1] - lse).exp()
    raise ValueError(f"unknown confidence {kind!r}; expected probability, margin or entropy")


def confidence_scores(probs: torch.Tensor, tokens: torch.Tensor, kind: str) -> torch.Tensor:
    """Higher is more confident. probability: p(drawn token); margin: p1 - p2; entropy: -H(p)."""
    if kind == "probability":
        return probs.gather(-1, tokens[:, None]).squeeze(-1)
    if kind == "margin":
        top2 = torch.topk(probs, 2, dim=-1).values
        return top2[:, 0] - top2[:, 1]
    if kind == "entropy":
        logp = torch.log(probs.clamp_min(1e-30))
        return (probs * logp).sum(dim=-1)
    raise ValueError(f"unknown confidence {kind!r}; expected probability, margin or entropy")
