"""Likelihood of held-out tokens: the DFM negative ELBO and the exact NLL of an AR model, per token.

**Which tokens.** The scored tokens of a batch are the positions the DFM path may mask
(:func:`megadfm.dfm.path.maskable_positions`): real tokens, not ``prompt_mask`` tokens and, with
``shift_logits`` on, not the first token of a document, which nothing predicts. For batches of
:func:`megadfm.data.batch.batch_from_documents` (one document per row) these are exactly the
tokens an AR model predicts from a strictly earlier context, so :func:`dfm_nelbo` and
:func:`ar_nll` divide by the same count (``tokens`` in both results).

**The bound.** For a mask source, the negative ELBO of a sequence is

    NELBO = ∫_0^1 w(t) E_{x_t}[ Σ_{i masked} −log p_θ(x_1^i | x_t, t) ] dt,   w(t) = κ'(t)/(1 − κ(t))

(docs/FORMATS.md §4; the generalized-KL weight, ``loss_weighting: kl``). It is computed here from
the DFM loss's (``dfm.mode``'s: full or block) *unweighted* per-sequence CE sums and this weight, never from the loss the run was
trained with, so it is a bound whatever ``loss_weighting`` / ``loss_normalizer`` training used.

**Quadrature.** With r = 1 − κ(t), dr = −κ'(t) dt, so w(t) dt = dr / r and the integral is
∫_0^1 E[Σ_masked CE | r] / r dr: the same integral in the mask ratio for every scheduler. Its
integrand is about (scored tokens) × (mean masked CE at r), smooth and bounded on (0, 1]. It is
integrated with **Gauss-Legendre on num_points nodes in r**: exact for polynomials of degree
2·num_points − 1, and its nodes are interior, so neither r = 0 (infinite weight, nothing masked)
nor the all-masked end is ever evaluated. Each node k is fed to the model at t_k = κ⁻¹(1 − r_k)
(the t training pairs with that mask ratio), with per-token weight w(t_k) · dt/dr = 1 / r_k.
Masks are fixed: node k of batch j draws from a generator seeded by (seed, k, j).

The bound is of the plain path (each scored token masked independently with probability r):
CoDA's training strategies (unmaskable prefix, suffix truncation, block masking) are augmentations
of training, not part of the model's likelihood, and are switched off for the estimate. A
``uniform``/``mixture`` source has a different bound and is refused.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Iterable, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from megadfm.dfm.config import DFMConfig
from megadfm.dfm.objectives import DFM_MODES
from megadfm.dfm.path import maskable_positions
from megadfm.dfm.schedulers import Scheduler
from megadfm.dfm.shift import segment_starts
from megadfm.dfm.weighting import LOSS_WEIGHTINGS
from megadfm.tokens import PAD_TOKEN_ID


def scored_positions(batch: Dict[str, torch.Tensor], shift: bool) -> torch.Tensor:
    """Bool [B, L]: the tokens a likelihood is measured on (see the module docstring)."""
    bsz, seq_len = batch["input_ids"].shape
    starts = segment_starts(batch["cu_seqlens"], bsz, seq_len).to(batch["loss_mask"].device)
    return maskable_positions(batch["loss_mask"], starts, shift, batch.get("prompt_mask"))


def gauss_legendre_mask_ratios(num_points: int):
    """Nodes r_k in (0, 1) and weights q_k (summing to 1) of Gauss-Legendre on [0, 1], float64."""
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    x, w = np.polynomial.legendre.leggauss(num_points)
    return torch.from_numpy((x + 1.0) / 2.0), torch.from_numpy(w / 2.0)


def _generator(device: torch.device, seed: int, point: int, batch_index: int) -> torch.Generator:
    # SeedSequence mixes the three integers, so neighbouring (point, batch) pairs get unrelated streams.
    state = np.random.SeedSequence([seed, point, batch_index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & ((1 << 63) - 1))


def _to(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@torch.no_grad()
def dfm_nelbo(model: torch.nn.Module, batches: Iterable[Dict[str, torch.Tensor]], dfm_cfg: DFMConfig,
              scheduler: Scheduler, num_points: int = 16, seed: int = 0, pad_token_id: int = PAD_TOKEN_ID,
              mask_token_id: Optional[int] = None) -> Dict[str, object]:
    """Negative ELBO per scored token of ``model`` on ``batches`` (nats), with the CE at every node.

    ``batches`` follow the batch contract (megadfm/data/batch.py) and are iterated once.
    Deterministic for a given ``seed`` (and device).
    """
    if dfm_cfg.source != "mask":
        raise ValueError(f"dfm.source={dfm_cfg.source!r}: dfm_nelbo estimates the mask-source bound only")
    cfg = dataclasses.replace(dfm_cfg, prefix_mask_prob=0.0, truncate_suffix_prob=0.0, block_mask_prob=0.0)
    # full DFM's loss, or block diffusion's (in eval mode every block of a row shares the row's t; the
    # integral is linear, so the sum over blocks is the block model's bound, BD3LM's)
    loss = DFM_MODES.get(cfg.mode)
    r_nodes, q = gauss_legendre_mask_ratios(num_points)
    t_nodes = scheduler.t_for_mask_ratio(r_nodes).double()
    # w(t) dt = w(t) |dt/dr| dr with dt/dr = 1/kappa'(t): equals 1/r; written through the kl weight
    # so that the estimate is visibly the ELBO of megadfm/dfm/weighting.py's kl, for any scheduler.
    per_token_weight = LOSS_WEIGHTINGS.get("kl")(t_nodes, r_nodes, scheduler).double() / scheduler.d_kappa(t_nodes).double()
    device = next(model.parameters()).device
    ce_sum = torch.zeros(num_points, dtype=torch.float64)
    masked = torch.zeros(num_points, dtype=torch.long)
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        for j, batch in enumerate(batches):
            batch = _to(batch, device)
            tokens += int(scored_positions(batch, cfg.shift_logits).sum())
            bsz = batch["input_ids"].shape[0]
            for k in range(num_points):
                t = torch.full((bsz,), float(t_nodes[k]), dtype=torch.float32, device=device)
                out = loss(model, batch, t, cfg, scheduler, _generator(device, seed, k, j),
                           mask_token_id=mask_token_id, pad_token_id=pad_token_id)
                ce_sum[k] += float(out.per_seq_unweighted_sum.double().sum())
                masked[k] += int(out.per_seq_masked_count.sum())
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("dfm_nelbo: the batches have no scored token (empty, or only first tokens of documents)")
    nelbo = float((q * per_token_weight * ce_sum).sum()) / tokens
    points: List[Dict[str, object]] = []
    for k in range(num_points):
        points.append({"t": float(t_nodes[k]), "mask_ratio": float(r_nodes[k]), "quadrature_weight": float(q[k]),
                       "ce": float(ce_sum[k]) / int(masked[k]) if masked[k] else None, "masked_tokens": int(masked[k])})
    return {"task": "likelihood", "nelbo_per_token": nelbo, "ppl_upper_bound": math.exp(nelbo), "tokens": tokens,
            "quadrature": f"gauss-legendre in the mask ratio r on (0, 1), {num_points} nodes, weight 1/r (= kl w(t) dt)",
            "num_points": num_points, "seed": seed, "scheduler": repr(scheduler), "shift_logits": cfg.shift_logits,
            "points": points}


def _check_one_document_per_row(batch: Dict[str, torch.Tensor]) -> None:
    bsz, seq_len = batch["input_ids"].shape
    real = batch["loss_mask"].bool()
    if bool((real[:, 1:] & ~real[:, :-1]).any()):
        raise ValueError("ar_nll: loss_mask must be a prefix of every row (right padding, batch_from_documents)")
    starts = segment_starts(batch["cu_seqlens"], bsz, seq_len).to(real.device)
    if bool((starts & real)[:, 1:].any()):
        raise ValueError("ar_nll: a row holds several documents (packed); a causal LM would attend across them. "
                         "Use one document per row (batch_from_documents)")


@torch.no_grad()
def ar_nll(hf_causal_lm: torch.nn.Module, batches: Iterable[Dict[str, torch.Tensor]]) -> Dict[str, object]:
    """Exact NLL per scored token of a transformers causal LM: token i+1 from tokens <= i of its row."""
    device = next(hf_causal_lm.parameters()).device
    total = torch.zeros((), dtype=torch.float64)
    tokens = 0
    was_training = hf_causal_lm.training
    hf_causal_lm.eval()
    try:
        for batch in batches:
            batch = _to(batch, device)
            _check_one_document_per_row(batch)
            ids = batch["input_ids"]
            target = scored_positions(batch, shift=True)[:, 1:]  # the logit at i predicts token i + 1
            logits = hf_causal_lm(input_ids=ids, attention_mask=batch["loss_mask"].long()).logits[:, :-1]
            for b in range(ids.shape[0]):  # one row at a time: fp32 logits of a whole batch can be GBs
                sel = target[b]
                total += F.cross_entropy(logits[b][sel].float(), ids[b, 1:][sel], reduction="sum").double().cpu()
                tokens += int(sel.sum())
    finally:
        hf_causal_lm.train(was_training)
    if tokens == 0:
        raise ValueError("ar_nll: the batches have no scored token")
    nll = float(total) / tokens
    return {"task": "likelihood", "nll_per_token": nll, "ppl": math.exp(nll), "tokens": tokens}
