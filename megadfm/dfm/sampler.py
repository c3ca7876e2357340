"""Generation with a DFM model: Euler solver and confidence-based unmasking (FORMATS.md §4).

Both samplers integrate from t = 0 (every new position masked) to t = 1 (clean) and never touch a
prompt or suffix position: only the new positions of :class:`~megadfm.dfm.layout.GenerationLayout`
are ever written.

**Euler** (``method: euler``), for a time grid 0 = t_0 < ... < t_S = 1: at step k each still-masked
position is unmasked with probability (kappa(t_{k+1}) - kappa(t_k)) / (1 - kappa(t_k)) and gets a
token drawn from the model's posterior at time t_k (logits are computed only where a position
jumps; a step where none jumps evaluates nothing). That is
the exact probability that a token masked at t_k is clean at t_{k+1} under the mask-source path
(the first-order h kappa'/(1 - kappa) undershoots for large h); at the last step it is 1, so
nothing stays masked. With a uniform/mixture source every new position jumps with that
probability to a posterior draw.

**Confidence** (``method: confidence``, mask source): each step draws a token at every masked
position of the current block and keeps the k most confident (probability, margin or negative
entropy), k chosen so that after step s a fraction r(t_{s+1}) of the block is still masked
(deterministic counts on the same time grid). With ``block_length`` > 0 the new positions are
decoded in semi-autoregressive blocks, left to right, ``steps // num_blocks`` steps each. The
model receives t = t_for_mask_ratio(fraction of the row's new positions still masked), the time at
which training would have produced that mask ratio.

Hidden states are picked by :func:`megadfm.dfm.shift.gather_predictions`, the same function the loss uses.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence, Tuple, Union

import torch

from megadfm.dfm.config import DFMConfig
from megadfm.dfm.layout import GenerationLayout, build_layout
from megadfm.dfm.logits_processing import confidence_scores, sample_from_logits
from megadfm.dfm.sampler_config import SampleResult, SamplerConfig
from megadfm.dfm.schedulers import Scheduler, make_scheduler
from megadfm.dfm.shift import gather_predictions

DEFAULT_PAD_TOKEN_ID = 151643


def time_grid(steps: int, kind: str, scheduler: Scheduler) -> torch.Tensor:
    """[steps + 1] float64 times from 0 to 1: uniform in t, or uniform in kappa (``scheduler``)."""
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "uniform":
        return u
    if kind == "scheduler":
        grid = scheduler.t_for_kappa(u)
        grid[0], grid[-1] = 0.0, 1.0
        return grid
    raise ValueError(f"unknown time_grid {kind!r}; expected uniform or scheduler")


LOGITS_BUDGET = 1 << 24
"""fp32 logits held at once while decoding (64 MiB): positions are decoded in chunks of
LOGITS_BUDGET // vocab rows, so a large batch x block never materializes [N, 151936] logits."""


def predict_tokens(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, layout: GenerationLayout,
                   targets: torch.Tensor, shift: bool, cfg: SamplerConfig, generator: torch.Generator,
                   confidence: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Draw a token for every ``targets`` [B, L] position of ``x`` at times ``t`` [B].

    Returns (flat target indices [N], tokens [N], confidence scores [N] or None). One model forward;
    the head, the filters and the draw run in chunks (:data:`LOGITS_BUDGET`). Ids above the mask
    are Qwen3's never-trained padding rows (DESIGN.md §3) and, like the mask, are never drawn.
    """
    batch = layout.batch
    hidden = model(x, t=t, position_ids=batch["position_ids"], cu_seqlens=batch["cu_seqlens"], max_seqlen=batch["max_seqlen"])
    hidden_sel, target = gather_predictions(hidden, targets, layout.segment_start, shift)
    chunk = max(1, LOGITS_BUDGET // model.cfg.vocab_size)
    tokens, scores = [], []
    for lo in range(0, hidden_sel.shape[0], chunk):
        logits = model.logits(hidden_sel[lo: lo + chunk]).float()
        logits[:, model.cfg.mask_token_id + 1:] = float("-inf")
        drawn, probs = sample_from_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p, generator)
        tokens.append(drawn)
        if confidence is not None:
            scores.append(confidence_scores(probs, drawn, confidence))
    token = torch.cat(tokens) if tokens else target.new_zeros(0)
    score = (torch.cat(scores) if scores else hidden_sel.new_zeros(0)) if confidence is not None else None
    return target, token, score


def _write(x: torch.Tensor, flat_index: torch.Tensor, tokens: torch.Tensor) -> None:
    x.view(-1).index_copy_(0, flat_index, tokens.to(x.dtype))


def _euler(model, x, layout, cfg: SamplerConfig, dfm: DFMConfig, scheduler: Scheduler, mask_id: int,
           generator: torch.Generator) -> int:
    grid = time_grid(cfg.steps, cfg.time_grid, scheduler)
    kappa = scheduler.kappa(grid)
    bsz = x.shape[0]
    evals = 0
    for k in range(cfg.steps):
        candidates = layout.generate & (x == mask_id) if dfm.source == "mask" else layout.generate
        if k == cfg.steps - 1:
            jump = candidates
        else:
            p_unmask = float((kappa[k + 1] - kappa[k]) / (1.0 - kappa[k]))
            jump = candidates & (torch.rand(x.shape, generator=generator, device=x.device) < p_unmask)
        # Whether a position jumps is independent of the token it would draw, so deciding first and
        # computing logits only where it jumps has the same distribution and costs one head
        # evaluation per new token over the whole run; a step where nothing jumps costs nothing.
        if not bool(jump.any()):
            continue
        t = torch.full((bsz,), float(grid[k]), dtype=torch.float32, device=x.device)
        target, tokens, _ = predict_tokens(model, x, t, layout, jump, dfm.shift_logits, cfg, generator)
        evals += 1
        _write(x, target, tokens)
    return evals


def _confidence(model, x, layout, cfg: SamplerConfig, dfm: DFMConfig, scheduler: Scheduler, mask_id: int,
                generator: torch.Generator) -> int:
    bsz, seq_len = x.shape
    n_max = layout.max_new_tokens
    block = cfg.block_length or n_max
    blocks = [(a, min(a + block, n_max)) for a in range(0, n_max, block)]
    steps_per_block = max(1, cfg.steps // len(blocks))
    ratio_after = scheduler.mask_ratio(time_grid(steps_per_block, cfg.time_grid, scheduler))[1:]
    ratio_after[-1] = 0.0
    offset = layout.offset()
    evals = 0
    for a, b in blocks:
        in_block = layout.generate & (offset >= a) & (offset < b)
        block_size = in_block.sum(dim=1).double()  # rows with fewer new tokens have smaller (or empty) blocks
        for s in range(steps_per_block):
            still = in_block & (x == mask_id)
            keep_masked = torch.round(block_size * float(ratio_after[s])).long()
            k_rows = (still.sum(dim=1) - keep_masked).clamp(min=0)
            k_max = int(k_rows.max())
            if k_max == 0:
                continue
            ratio = (layout.generate & (x == mask_id)).sum(dim=1).double() / layout.new_tokens.double()
            t = scheduler.t_for_mask_ratio(ratio).to(torch.float32)
            target, tokens, scores = predict_tokens(model, x, t, layout, still, dfm.shift_logits, cfg, generator,
                                                    confidence=cfg.confidence)
            evals += 1
            conf = torch.full((bsz * seq_len,), float("-inf"), device=x.device)
            conf[target] = scores.float()
            drawn = torch.zeros(bsz * seq_len, dtype=x.dtype, device=x.device)
            drawn[target] = tokens.to(x.dtype)
            best = torch.topk(conf.view(bsz, seq_len), k_max, dim=1).indices  # [B, k_max] columns
            chosen = torch.arange(k_max, device=x.device)[None, :] < k_rows[:, None]
            flat = (best + torch.arange(bsz, device=x.device)[:, None] * seq_len)[chosen]
            _write(x, flat, drawn[flat])
        if cfg.eos_token_id is not None and _all_rows_ended(x, layout, b, cfg.eos_token_id):
            break
    return evals


def _all_rows_ended(x: torch.Tensor, layout: GenerationLayout, decoded_upto: int, eos: int) -> bool:
    """Every row has an EOS among its first ``decoded_upto`` new positions (all decoded by then) or is complete."""
    done = layout.generate & (layout.offset() < decoded_upto)
    complete = layout.new_tokens <= decoded_upto
    return bool((((x == eos) & done).any(dim=1) | complete).all())


def _initial_state(layout: GenerationLayout, dfm: DFMConfig, mask_id: int, generator: torch.Generator) -> torch.Tensor:
    x = layout.batch["input_ids"].clone()
    if dfm.source == "mask":
        return x
    # Non-mask sources start the new positions from a source draw (uniform real token or mask).
    fraction = 1.0 if dfm.source == "uniform" else dfm.mixture_uniform_fraction
    noise = torch.randint(0, mask_id, x.shape, generator=generator, device=x.device)
    use_uniform = torch.rand(x.shape, generator=generator, device=x.device) < fraction
    return torch.where(layout.generate & use_uniform, noise, x)


@torch.inference_mode()
def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: Union[int, Sequence[int]],
             cfg: SamplerConfig,
             dfm: DFMConfig, scheduler: Optional[Scheduler] = None, *,
             suffixes: Optional[Sequence[Sequence[int]]] = None, mask_token_id: Optional[int] = None,
             pad_token_id: int = DEFAULT_PAD_TOKEN_ID, generator: Optional[torch.Generator] = None) -> SampleResult:
    """Generate ``max_new_tokens`` (one int, or one per row) after each prompt (before each suffix, for infill).

    ``dfm`` must be the training run's DFMConfig (shift convention, scheduler, source).
    ``mask_token_id`` defaults to ``model.cfg.mask_token_id``. Deterministic given ``generator``
    (default: seeded from ``cfg.seed`` on the model's device).
    """
    if cfg.method == "confidence" and dfm.source != "mask":
        raise ValueError("the confidence sampler needs a mask source (dfm.source: mask); use method: euler")
    scheduler = scheduler or make_scheduler(dfm)
    mask_id = int(model.cfg.mask_token_id) if mask_token_id is None else int(mask_token_id)
    device = next(model.parameters()).device
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    layout = build_layout(prompts, max_new_tokens, mask_id, pad_token_id, dfm.shift_logits, suffixes, device)
    x = _initial_state(layout, dfm, mask_id, generator)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    loop = _euler if cfg.method == "euler" else _confidence
    evals = loop(model, x, layout, cfg, dfm, scheduler, mask_id, generator)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start

    # Only an early EOS stop leaves masks (after the EOS); they become EOS so no mask is returned.
    fill = cfg.eos_token_id if cfg.eos_token_id is not None else pad_token_id
    x = torch.where(layout.generate & (x == mask_id), torch.full_like(x, fill), x)
    tokens, finished = [], []
    for b in range(x.shape[0]):
        start_col = int(layout.gen_start[b])
        row = x[b, start_col: start_col + int(layout.new_tokens[b])].tolist()
        ended = cfg.eos_token_id is not None and cfg.eos_token_id in row
        tokens.append(row[: row.index(cfg.eos_token_id)] if ended else row)
        finished.append(ended)
    new_tokens = int(layout.new_tokens.sum())
    return SampleResult(tokens=tokens, sequences=x.cpu(), finished=finished, steps=evals, model_evals=evals,
                        new_tokens=new_tokens, seconds=seconds, tokens_per_second=new_tokens / max(seconds, 1e-9))
