"""``model.diffusion_generate(...)``: megadfm's DFM sampler for the exported model, self-contained.

Copied into every HF export next to modeling_megadfm.py (which mixes :class:`MegaDFMGenerationMixin`
into ``MegaDFMQwen3ForMaskedLM``). Imports only torch and transformers: the folder has no megadfm.

It is a re-implementation of megadfm's in-tree sampler (megadfm/dfm/sampler.py and
megadfm/dfm/sampling/), written to give the SAME tokens for the same seed and settings: the same
batch layout (``prompt + [mask] * n + suffix``, right padding), the same time grids and schedulers,
the same number of positions unmasked per step, the same random draws in the same order on one
``torch.Generator`` seeded with ``seed`` on the model's device, the same ``torch.topk`` tie-breaking,
the same EOS retirement of rows, and the same shift convention (with ``shift_logits`` the output
at column i predicts the token at column i + 1). Prompt and suffix positions are never written.
tests/conversion/test_diffusion_generate.py checks the equality against the in-tree sampler.

Only the mask source (training's ``dfm.source: mask``, megadfm's default) is supported: the export's
generation_config.json records the source (``dfm_sampler.source``) and any other is refused, since a
uniform/mixture source draws its start state and its jumps differently.

``cache``: ``none`` recomputes every column at every step (exact). ``prefix`` / ``dual`` are
Fast-dLLM's block-wise K/V caches (confidence and threshold methods): a row's first evaluation in
a block is one full forward that gives that step's predictions and stores every layer's K/V
(after k-norm and rotary); its later evaluations in the block recompute only the columns from
the block's start s (s - 1 with ``shift_logits``: the output at s - 1 predicts s) to the last
column (``prefix``) or to the block's end (``dual``), attending to the stored K/V of the other
columns. Those are the block's first step's K/V (its tokens and its t) and go stale as the block
is decoded: an APPROXIMATION of the full forward (faster, not exact). :class:`CachedForward` has
the rules in full.

A block-diffusion model (``config.dfm_mode == "block"``) decodes in its own blocks, with the two-stream
forward (``cache="none"``) or an exact prefix cache: block_generation_megadfm.py.
"""

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from .block_generation_megadfm import block_plan, check_block_settings, make_block_forward, model_block_size
from .cache_generation_megadfm import CachedForward, gather_predictions

METHODS = ("confidence", "threshold", "euler")
BLOCK_METHODS = ("confidence", "threshold")  # the methods that decode in semi-autoregressive blocks
CONFIDENCES = ("probability", "margin", "entropy")
THRESHOLD_MODES = ("fixed", "factor")
CACHES = ("none", "prefix", "dual")
TIME_GRIDS = ("uniform", "scheduler")
SCHEDULERS = ("polynomial", "linear", "cosine")

LOGITS_BUDGET = 1 << 24
"""fp32 logits held at once (64 MiB): the head runs on chunks of LOGITS_BUDGET // vocab positions.
The chunk size is megadfm's, so the head's matmuls have the same shapes (and the same rounding)."""

# megadfm.dfm.sampler_config.SamplerConfig's defaults: used for any setting that neither the
# call nor the folder's generation_config.json (``dfm_sampler``) gives.
SAMPLER_DEFAULTS = {"method": "euler", "steps": 32, "time_grid": "uniform", "confidence": "probability",
                    "block_length": 0, "threshold": 0.9, "threshold_mode": "fixed", "threshold_factor": 1.0,
                    "temperature": 1.0, "top_k": 0, "top_p": 1.0, "cache": "none",
                    "scheduler": "polynomial", "scheduler_exponent": 1.0}


# ---- schedulers kappa(t) (megadfm/dfm/schedulers.py): t = 0 all masked, t = 1 clean ---------------

class PolynomialScheduler:
    """kappa(t) = t^n; ``linear`` is n = 1."""

    def __init__(self, exponent):
        if not exponent > 0:
            raise ValueError(f"scheduler_exponent must be positive, got {exponent}")
        self.exponent = float(exponent)

    def kappa(self, t):
        return t.pow(self.exponent)

    def t_for_kappa(self, kappa):
        return kappa.double().clamp(0.0, 1.0).pow(1.0 / self.exponent).to(kappa.dtype)

    def mask_ratio(self, t):
        return 1.0 - self.kappa(t)

    def t_for_mask_ratio(self, ratio):
        return self.t_for_kappa(1.0 - ratio)


class CosineScheduler(PolynomialScheduler):
    """kappa(t) = 1 - cos(pi t / 2): the mask ratio is MaskGIT's cos(pi t / 2)."""

    def __init__(self):
        self.exponent = None

    def kappa(self, t):
        return 1.0 - torch.cos(0.5 * math.pi * t)

    def t_for_kappa(self, kappa):
        return (torch.arccos((1.0 - kappa.double()).clamp(0.0, 1.0)) * (2.0 / math.pi)).to(kappa.dtype)


def make_scheduler(name, exponent):
    if name == "polynomial":
        return PolynomialScheduler(exponent)
    if name == "linear":
        return PolynomialScheduler(1.0)
    if name == "cosine":
        return CosineScheduler()
    raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {name!r}")


def time_grid(steps, kind, scheduler):
    """[steps + 1] float64 times from 0 to 1: uniform in t, or uniform in kappa."""
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "uniform":
        return u
    if kind == "scheduler":
        grid = scheduler.t_for_kappa(u)
        grid[0], grid[-1] = 0.0, 1.0
        return grid
    raise ValueError(f"time_grid must be one of {', '.join(TIME_GRIDS)}, got {kind!r}")


# ---- drawing tokens (megadfm/dfm/logits_processing.py) ---------------------------------------------

def filter_logits(logits, top_k, top_p):
    """Everything outside the top-k and the top-p nucleus to -inf; the most likely token survives."""
    out = logits
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # a token goes once the mass before it reaches top_p
        drop = torch.zeros_like(before, dtype=torch.bool).scatter(-1, order, before >= top_p)
        out = out.masked_fill(drop, float("-inf"))
    return out


def sample_from_logits(logits, temperature, top_k, top_p, generator):
    """(tokens [N], the distribution they were drawn from [N, V]); temperature 0 is argmax of the unscaled softmax."""
    logits = logits.float()
    if temperature == 0.0:
        probs = torch.softmax(filter_logits(logits, top_k, top_p), dim=-1)
        return probs.argmax(dim=-1), probs
    probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1), probs


def greedy_with_confidence(logits, kind):
    """Greedy tokens and (if ``kind``) confidences from fp32 logits with no filters, without the [N, V] softmax:
    p(token) = exp(max - logsumexp), the margin from the top two logits; entropy takes the softmax."""
    if kind == "entropy":
        probs = torch.softmax(logits, dim=-1)
        tokens = probs.argmax(dim=-1)
        return tokens, confidence_scores(probs, tokens, kind)
    values, tokens = logits.max(dim=-1)
    if kind is None:
        return tokens, None
    lse = torch.logsumexp(logits, dim=-1)
    if kind == "probability":
        return tokens, (values - lse).exp()
    if kind == "margin":
        top2 = torch.topk(logits, 2, dim=-1).values
        return tokens, (top2[:, 0] - lse).exp() - (top2[:, 1] - lse).exp()
    raise ValueError(f"confidence must be one of {', '.join(CONFIDENCES)}, got {kind!r}")


def confidence_scores(probs, tokens, kind):
    """Higher is more confident: p(drawn token), top1 - top2, or -entropy."""
    if kind == "probability":
        return probs.gather(-1, tokens[:, None]).squeeze(-1)
    if kind == "margin":
        top2 = torch.topk(probs, 2, dim=-1).values
        return top2[:, 0] - top2[:, 1]
    if kind == "entropy":
        return (probs * torch.log(probs.clamp_min(1e-30))).sum(dim=-1)
    raise ValueError(f"confidence must be one of {', '.join(CONFIDENCES)}, got {kind!r}")


# ---- the batch (megadfm/dfm/layout.py) ---------------------------------------------------------------

class Layout:
    """Row b = prompt_b + [mask] * n_b + suffix_b, right-padded with the pad id to the longest row."""

    def __init__(self, prompts, counts, suffixes, mask_id, pad_id, shift, device):
        docs = []
        for b, prompt in enumerate(prompts):
            if mask_id in prompt:
                raise ValueError(f"input_ids: prompt {b} contains the mask token {mask_id}")
            if shift and not prompt:
                raise ValueError(f"input_ids: prompt {b} is empty; with shift_logits the first token of a row cannot be "
                                 "predicted, so generation needs a prompt of at least one token (e.g. <|endoftext|>)")
            suffix = suffixes[b] if suffixes is not None else []
            if mask_id in suffix:
                raise ValueError(f"suffix_ids: suffix {b} contains the mask token {mask_id}")
            docs.append(list(prompt) + [mask_id] * counts[b] + list(suffix))
        B, L = len(docs), max(len(d) for d in docs)
        self.input_ids = torch.full((B, L), pad_id, dtype=torch.long)
        self.real = torch.zeros(B, L, dtype=torch.bool)  # the attention mask: False on padding
        for b, doc in enumerate(docs):
            self.input_ids[b, :len(doc)] = torch.tensor(doc, dtype=torch.long)
            self.real[b, :len(doc)] = True
        self.input_ids, self.real = self.input_ids.to(device), self.real.to(device)
        self.gen_start = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device)
        self.new_tokens = torch.tensor(counts, dtype=torch.long, device=device)
        cols = torch.arange(L, device=device)[None, :]
        self.generate = (cols >= self.gen_start[:, None]) & (cols < (self.gen_start + self.new_tokens)[:, None])
        self.offset = cols - self.gen_start[:, None]  # 0 at a row's first new position
        self.max_new_tokens = int(self.new_tokens.max())


# ---- the model seam: hidden states predicting some targets ----------------------------------------

class FullForward:
    """The backbone over whole rows (prompt, new positions, suffix): exact, one ``nfe_full`` per call."""

    def __init__(self, model, layout, shift):
        self.model, self.layout, self.shift = model, layout, shift
        self.nfe_full = self.nfe_block = self.rows = 0

    def hidden_for(self, x, rows, t, targets, block):
        """Hidden states [N, H] predicting ``targets`` (bool [R, L] over ``x[rows]``) and their flat indices [N]."""
        hidden = self.model.model(x.index_select(0, rows), t=t,
                                  attention_mask=self.layout.real.index_select(0, rows)).last_hidden_state
        self.nfe_full += 1
        self.rows += int(rows.numel())
        return gather_predictions(hidden, targets, self.shift)


# ---- the sampling state (megadfm/dfm/sampling/context.py) -----------------------------------------------

class State:
    def __init__(self, model, layout, settings, scheduler, mask_id, generator, forward, block_size=None):
        self.model, self.layout, self.s, self.scheduler = model, layout, settings, scheduler
        self.block_size = block_size  # a block-diffusion model's blocks; None: full mode
        self.mask_id, self.generator, self.forward = mask_id, generator, forward
        self.x = layout.input_ids.clone()
        self.offset = layout.offset
        self.active = torch.ones(self.x.shape[0], dtype=torch.bool, device=self.x.device)
        self.steps = 0

    def masked(self):
        return self.layout.generate & (self.x == self.mask_id)

    def settle_rows(self):
        """Retire a row once its output is final: no mask left, or an EOS with no mask before it."""
        masked = self.masked()
        settled = ~masked.any(dim=1)
        eos = self.s["eos_token_id"]
        if eos is not None:
            never = self.x.shape[1]
            first_masked = torch.where(masked, self.offset, never).min(dim=1).values
            first_eos = torch.where(self.layout.generate & (self.x == eos), self.offset, never).min(dim=1).values
            settled |= first_eos < first_masked
        self.active &= ~settled

    def any_active(self):
        return bool(self.active.any())

    def blocks(self):
        """The confidence and threshold methods' blocks, left to right, and how many hold new positions of each
        row: ``block_length`` offsets of the new positions (0: one block), or a block model's own blocks."""
        if self.block_size is not None:
            return block_plan(self.layout, self.block_size)
        size = self.s["block_length"] or self.layout.max_new_tokens
        return block_bounds(self.layout.max_new_tokens, size), (self.layout.new_tokens + size - 1) // size

    def predict(self, rows, t, targets, block, confidence=None):
        hidden, target = self.forward.hidden_for(self.x, rows, t, targets, block)
        token, score = self.draw(hidden, confidence)
        return target, token, score

    def draw(self, hidden, confidence):
        """Tokens (and confidences) from the head; ids >= the mask (the mask, Qwen3's padding rows) are never drawn."""
        s, vocab = self.s, self.model.config.vocab_size
        weight = self.model.lm_head.weight
        chunk = max(1, LOGITS_BUDGET // vocab)
        plain_greedy = s["temperature"] == 0.0 and s["top_k"] == 0 and s["top_p"] == 1.0
        tokens, scores = [], []
        for lo in range(0, hidden.shape[0], chunk):
            logits = F.linear(hidden[lo: lo + chunk], weight).float()
            logits[:, self.mask_id:] = float("-inf")
            if plain_greedy:
                drawn, score = greedy_with_confidence(logits, confidence)
            else:
                drawn, probs = sample_from_logits(logits, s["temperature"], s["top_k"], s["top_p"], self.generator)
                score = None if confidence is None else confidence_scores(probs, drawn, confidence)
            tokens.append(drawn)
            if score is not None:
                scores.append(score)
        token = torch.cat(tokens) if tokens else torch.zeros(0, dtype=torch.long, device=hidden.device)
        if confidence is None:
            return token, None
        return token, torch.cat(scores) if scores else hidden.new_zeros(0, dtype=torch.float32)

    def write(self, rows, flat_index, tokens):
        sub = self.x.index_select(0, rows)
        sub.view(-1).index_copy_(0, flat_index, tokens.to(sub.dtype))
        self.x.index_copy_(0, rows, sub)


# ---- the methods (megadfm/dfm/sampling/{euler,confidence,threshold,blocks}.py) ----------------------

def run_euler(st):
    """Exact-rate Euler: each masked position is unmasked with (kappa(t_{k+1}) - kappa(t_k)) / (1 - kappa(t_k))."""
    s, x = st.s, st.x
    grid = time_grid(s["steps"], s["time_grid"], st.scheduler)
    kappa = st.scheduler.kappa(grid)
    whole = (0, st.layout.max_new_tokens)
    for k in range(s["steps"]):
        candidates = st.masked()
        if k == s["steps"] - 1:
            jump = candidates
        else:
            p_unmask = float((kappa[k + 1] - kappa[k]) / (1.0 - kappa[k]))
            # drawn for every row, retired or not, so the random stream does not depend on who is left
            jump = candidates & (torch.rand(x.shape, generator=st.generator, device=x.device) < p_unmask)
        jump &= st.active[:, None]
        rows = jump.any(dim=1).nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        t = torch.full((rows.numel(),), float(grid[k]), dtype=torch.float32, device=x.device)
        target, tokens, _ = st.predict(rows, t, jump.index_select(0, rows), whole)
        st.write(rows, target, tokens)
        st.steps += 1
        st.settle_rows()
        if not st.any_active():
            break


def block_bounds(n_max, block_length):
    size = block_length or n_max
    return [(a, min(a + size, n_max)) for a in range(0, n_max, size)]


def block_masked(st, block):
    a, b = block
    return st.masked() & (st.offset >= a) & (st.offset < b)


def block_step(st, block, counts=None, rule=None):
    """Unmask each active row's most confident masked positions of ``block``; False if no row ran.

    ``counts`` [B] (fixed before the model runs; a row with 0 is not run) or ``rule`` (sorted
    confidences [R, K], candidates [R] -> how many, at least one). t is the time at which training
    produces the row's current mask ratio over its new positions.
    """
    still_all = block_masked(st, block)
    want = still_all.any(dim=1) & st.active
    if counts is not None:
        want &= counts > 0
    rows = want.nonzero(as_tuple=True)[0]
    if rows.numel() == 0:
        return False
    layout, x = st.layout, st.x
    still = still_all.index_select(0, rows)
    ratio = st.masked().index_select(0, rows).sum(dim=1).double() / layout.new_tokens.index_select(0, rows).double()
    t = st.scheduler.t_for_mask_ratio(ratio).to(torch.float32)
    target, tokens, scores = st.predict(rows, t, still, block, confidence=st.s["confidence"])
    n_rows, seq_len = still.shape
    conf = torch.full((n_rows * seq_len,), float("-inf"), device=x.device)
    conf[target] = scores.float()
    drawn = torch.zeros(n_rows * seq_len, dtype=x.dtype, device=x.device)
    drawn[target] = tokens.to(x.dtype)
    candidates = still.sum(dim=1)
    best = torch.topk(conf.view(n_rows, seq_len), int(candidates.max()), dim=1)  # most confident first
    keep = counts.index_select(0, rows) if counts is not None else rule(best.values, candidates).clamp(min=1)
    keep = torch.minimum(keep, candidates)
    chosen = torch.arange(best.indices.shape[1], device=x.device)[None, :] < keep[:, None]
    flat = (best.indices + torch.arange(n_rows, device=x.device)[:, None] * seq_len)[chosen]
    st.write(rows, flat, drawn[flat])
    st.steps += 1
    st.settle_rows()
    return True


def run_confidence(st):
    """Keep the k most confident per step, k such that after step s a fraction r(t_{s+1}) of the block stays masked.

    Row-local schedule: row b has ceil(n_b / block_length) blocks and max(1, steps // that) steps in each."""
    layout, s = st.layout, st.s
    blocks, blocks_per_row = st.blocks()
    row_steps = (s["steps"] // blocks_per_row).clamp(min=1)
    ratio_after = torch.zeros(layout.new_tokens.shape[0], int(row_steps.max()), dtype=torch.float64,
                              device=layout.new_tokens.device)
    for n in sorted(set(row_steps.tolist())):
        ratio = st.scheduler.mask_ratio(time_grid(n, s["time_grid"], st.scheduler))[1:].to(ratio_after.device)
        ratio[-1] = 0.0
        ratio_after[row_steps == n, :n] = ratio
    for block in blocks:
        block_size = (layout.generate & (st.offset >= block[0]) & (st.offset < block[1])).sum(dim=1).double()
        for k in range(ratio_after.shape[1]):
            still = block_masked(st, block).sum(dim=1)
            keep_masked = torch.round(block_size * ratio_after[:, k]).long()
            block_step(st, block, counts=(still - keep_masked).clamp(min=0))
        if not st.any_active():
            break


def _unit_confidence(scores, kind):
    return scores.exp() if kind == "entropy" else scores  # exp(-H) puts entropy on [0, 1]


def threshold_rule(mode, threshold, factor, kind):
    def fixed(values, candidates):
        return (_unit_confidence(values, kind) >= threshold).sum(dim=1).clamp(min=1)

    def by_factor(values, candidates):
        c = _unit_confidence(values, kind)
        m = torch.arange(1, c.shape[1] + 1, device=c.device, dtype=c.dtype)
        passes = c >= 1.0 - factor / (m + 1.0)  # (m + 1)(1 - c_m) <= factor, a prefix of the sorted list
        passes[:, 0] = True
        passes &= m[None, :] <= candidates[:, None]
        return passes.long().cumprod(dim=1).sum(dim=1)

    return fixed if mode == "fixed" else by_factor


def run_threshold(st):
    """Fast-dLLM parallel decoding: unmask every masked position of the block passing the threshold rule
    (at least one); ``steps`` bounds the steps per block, the last unmasks what remains."""
    s = st.s
    rule = threshold_rule(s["threshold_mode"], s["threshold"], s["threshold_factor"], s["confidence"])
    for block in st.blocks()[0]:
        for k in range(s["steps"]):
            last = k == s["steps"] - 1
            if not block_step(st, block, rule=(lambda values, candidates: candidates) if last else rule):
                break
        if not st.any_active():
            break


RUNNERS = {"euler": run_euler, "confidence": run_confidence, "threshold": run_threshold}


# ---- the user-facing method ---------------------------------------------------------------------------

@dataclass
class DiffusionGenerateOutput(ModelOutput):
    """``sequences`` [B, L]: prompt + new tokens + suffix per row, right-padded with the pad id, never a mask
    (positions left after an early EOS hold the EOS). ``tokens``: each row's new tokens cut before the first EOS.
    ``finished``: the row produced an EOS. ``steps``: steps that ran the model; ``nfe_full`` / ``nfe_block``:
    forward passes over whole rows / over only a block's columns (a cache); ``forward_rows``: rows run, summed."""

    sequences: Optional[torch.Tensor] = None
    tokens: Optional[List[List[int]]] = None
    finished: Optional[List[bool]] = None
    steps: Optional[int] = None
    nfe_full: Optional[int] = None
    nfe_block: Optional[int] = None
    forward_rows: Optional[int] = None


def _rows_of(value, name, batch_size=None):
    """A batch of token rows from a LongTensor [B, L] / [L] or a list of lists / one list."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 1:
            value = value[None]
        if value.dim() != 2 or value.dtype.is_floating_point or value.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor [B, L] (or [L]), got shape {tuple(value.shape)} "
                             f"dtype {value.dtype}")
        return [[int(v) for v in row] for row in value.tolist()]
    value = list(value)
    if all(isinstance(v, int) for v in value):
        rows = [value] * (batch_size or 1)  # one sequence for every row
    else:
        rows = [[int(v) for v in row] for row in value]
    return rows


class _FromGenerationConfig:
    """Default of ``eos_token_id``: the folder's generation_config.json value (None means never stop)."""

    def __repr__(self):
        return "<generation_config.eos_token_id>"


FROM_GENERATION_CONFIG = _FromGenerationConfig()


class MegaDFMGenerationMixin:
    """Adds :meth:`diffusion_generate` to the exported masked-LM class."""

    def _dfm_sampler_defaults(self):
        """The folder's generation_config.json ``dfm_sampler`` (megadfm's defaults, the run's scheduler and shift),
        its eos and pad ids."""
        gen = getattr(self, "generation_config", None)
        if getattr(gen, "dfm_sampler", None) is None:
            # transformers attaches generation_config.json only to models it considers generative; read it here
            from transformers import GenerationConfig

            path = getattr(self.config, "_name_or_path", None)
            if not path:
                raise ValueError("diffusion_generate needs generation_config.dfm_sampler (scheduler, scheduler_exponent, "
                                 "shift_logits, sampler defaults): load the model from its exported folder, or set "
                                 "model.generation_config.dfm_sampler = {...}")
            gen = GenerationConfig.from_pretrained(path)
            if getattr(gen, "dfm_sampler", None) is None:
                raise ValueError(f"{path}: generation_config.json has no dfm_sampler (not a megadfm export?)")
            self.generation_config = gen  # the folder's own file: read once
        return dict(gen.dfm_sampler), getattr(gen, "eos_token_id", None), getattr(gen, "pad_token_id", None)

    @torch.no_grad()
    def diffusion_generate(self, input_ids, attention_mask=None, max_new_tokens=None, steps=None, method=None,
                           block_length=None, threshold=None, threshold_mode=None, threshold_factor=None,
                           confidence=None, temperature=None, top_k=None, top_p=None, eos_token_id=FROM_GENERATION_CONFIG,
                           cache=None, seed=0, suffix_ids=None, time_grid=None, generator=None):
        """Generate ``max_new_tokens`` after each prompt (and before each suffix: infilling), as megadfm's sampler.

        Args (None: the folder's generation_config.json ``dfm_sampler``, else megadfm's SamplerConfig default):
            input_ids: LongTensor [B, L] of prompts (or a list of token lists, ragged allowed).
            attention_mask: [B, L], 1 on prompt tokens, 0 on padding (left or right); None: no padding.
            max_new_tokens: new positions per row (one int, or one per row). Required.
            steps: euler: solver steps; confidence: steps per generation, split over the blocks;
                threshold: an upper bound per block.
            method: "confidence" | "threshold" | "euler".
            block_length: semi-autoregressive blocks of new positions (confidence, threshold); 0 = one block.
                A block-diffusion model (config.dfm_mode "block") decodes in its own blocks: 0 or its block size.
            threshold, threshold_mode ("fixed" | "factor"), threshold_factor: the threshold method's rule.
            confidence: "probability" | "margin" | "entropy" (the block methods' ranking).
            temperature (0 = greedy), top_k (0 = off), top_p (1 = off): the token draw.
            eos_token_id: output stops before the first one; a row that has decoded it with no mask
                before it stops running. Default: generation_config's eos_token_id; None: never stop.
            cache: "none" (exact) | "prefix" | "dual" (Fast-dLLM's block K/V caches: approximate, faster). For a
                block-diffusion model "prefix" is exact and "dual" is refused.
            seed: seeds the generator (on the model's device) unless ``generator`` is given.
            suffix_ids: per-row suffixes (a list of token lists or one list for every row; a LongTensor
                [B, Ls]) for infilling: the new tokens go between prompt and suffix.
            time_grid: "uniform" | "scheduler" (uniform in kappa).
        Returns a :class:`DiffusionGenerateOutput`.
        """
        defaults, gen_eos, gen_pad = self._dfm_sampler_defaults()
        source = defaults.get("source", "mask")
        if source != "mask":
            raise ValueError(f"generation_config dfm_sampler.source is {source!r}: diffusion_generate supports the mask "
                             "source only (use megadfm's own sampler)")
        given = {"method": method, "steps": steps, "time_grid": time_grid, "confidence": confidence,
                 "block_length": block_length, "threshold": threshold, "threshold_mode": threshold_mode,
                 "threshold_factor": threshold_factor, "temperature": temperature, "top_k": top_k, "top_p": top_p,
                 "cache": cache}
        s = {}
        for name, default in SAMPLER_DEFAULTS.items():
            value = given.get(name)
            s[name] = value if value is not None else defaults.get(name, default)
        s["eos_token_id"] = gen_eos if eos_token_id is FROM_GENERATION_CONFIG else eos_token_id
        if isinstance(s["eos_token_id"], (list, tuple)):
            raise ValueError(f"eos_token_id must be one id or None, got {s['eos_token_id']!r}")
        _check_settings(s)
        block_size = model_block_size(self.config, defaults)  # None: full mode
        if block_size is not None:
            check_block_settings(s, block_size, BLOCK_METHODS)
        shift = bool(defaults.get("shift_logits", getattr(self.config, "shift_logits", True)))
        scheduler = make_scheduler(s["scheduler"], s["scheduler_exponent"])
        mask_id = int(self.config.mask_token_id)
        pad_id = gen_pad if gen_pad is not None else self.config.pad_token_id  # fills the rows' right padding
        if pad_id is None:
            raise ValueError("diffusion_generate needs a pad id: generation_config.json and config.json have no pad_token_id")
        pad_id = int(pad_id)
        device = self.lm_head.weight.device

        prompts = _rows_of(input_ids, "input_ids")
        if attention_mask is not None:
            attention_mask = torch.as_tensor(attention_mask)
            if not isinstance(input_ids, torch.Tensor) or attention_mask.shape != input_ids.reshape(len(prompts), -1).shape:
                raise ValueError(f"attention_mask must have input_ids' shape (a tensor [B, L]), got {tuple(attention_mask.shape)}"
                                 f" for input_ids {tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else 'as lists'}")
            keep = attention_mask.reshape(len(prompts), -1).bool().tolist()
            prompts = [[tok for tok, k in zip(row, m) if k] for row, m in zip(prompts, keep)]
        B = len(prompts)
        if B == 0:
            raise ValueError("input_ids: at least one prompt is needed")
        if max_new_tokens is None:
            raise ValueError("max_new_tokens is required (an int, or one per row)")
        counts = [int(max_new_tokens)] * B if isinstance(max_new_tokens, int) else [int(n) for n in max_new_tokens]
        if len(counts) != B:
            raise ValueError(f"max_new_tokens: {len(counts)} values for {B} prompts")
        if min(counts) <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {counts}")
        suffixes = None
        if suffix_ids is not None:
            suffixes = _rows_of(suffix_ids, "suffix_ids", B)
            if len(suffixes) != B:
                raise ValueError(f"suffix_ids: {len(suffixes)} suffixes for {B} prompts")
        total = max(len(p) + n + (len(suffixes[b]) if suffixes else 0) for b, (p, n) in enumerate(zip(prompts, counts)))
        if total > self.config.max_position_embeddings:
            raise ValueError(f"max_new_tokens: rows of {total} tokens exceed max_position_embeddings="
                             f"{self.config.max_position_embeddings}")

        if generator is None:
            generator = torch.Generator(device=device).manual_seed(int(seed))
        layout = Layout(prompts, counts, suffixes, mask_id, pad_id, shift, device)
        if block_size is not None:
            forward = make_block_forward(self, layout, shift, block_size, s["cache"])
        elif s["cache"] == "none":
            forward = FullForward(self, layout, shift)
        else:
            forward = CachedForward(self, layout, shift, s["cache"])
        st = State(self, layout, s, scheduler, mask_id, generator, forward, block_size)
        RUNNERS[s["method"]](st)

        # only an early EOS stop leaves masks (after the EOS); they become EOS so no mask is returned
        fill = s["eos_token_id"] if s["eos_token_id"] is not None else pad_id
        x = torch.where(layout.generate & (st.x == mask_id), torch.full_like(st.x, fill), st.x)
        tokens, finished = [], []
        for b in range(B):
            start = int(layout.gen_start[b])
            row = x[b, start: start + counts[b]].tolist()
            ended = s["eos_token_id"] is not None and s["eos_token_id"] in row
            tokens.append(row[: row.index(s["eos_token_id"])] if ended else row)
            finished.append(ended)
        return DiffusionGenerateOutput(sequences=x, tokens=tokens, finished=finished, steps=st.steps,
                                       nfe_full=forward.nfe_full, nfe_block=forward.nfe_block,
                                       forward_rows=forward.rows)


def _check_settings(s):
    """The SamplerConfig rules, each error naming its argument."""
    choices = {"method": METHODS, "confidence": CONFIDENCES, "threshold_mode": THRESHOLD_MODES, "cache": CACHES,
               "time_grid": TIME_GRIDS, "scheduler": SCHEDULERS}
    for name, allowed in choices.items():
        if s[name] not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {s[name]!r}")
    checks = [
        ("steps", isinstance(s["steps"], int) and s["steps"] > 0, "a positive int"),
        ("block_length", isinstance(s["block_length"], int) and s["block_length"] >= 0, "an int >= 0"),
        ("threshold", 0.0 <= s["threshold"] <= 1.0, "in [0, 1]"),
        ("threshold_factor", s["threshold_factor"] > 0, "> 0"),
        ("temperature", s["temperature"] >= 0, ">= 0"),
        ("top_k", isinstance(s["top_k"], int) and s["top_k"] >= 0, "an int >= 0"),
        ("top_p", 0 < s["top_p"] <= 1, "in (0, 1]"),
    ]
    for name, ok, what in checks:
        if not ok:
            raise ValueError(f"{name} must be {what}, got {s[name]!r}")
    if s["block_length"] and s["method"] not in BLOCK_METHODS:
        raise ValueError(f"block_length: semi-autoregressive blocks are an option of the {' and '.join(BLOCK_METHODS)} "
                         f"methods, not of method {s['method']!r}")
    if s["cache"] != "none" and s["method"] not in BLOCK_METHODS:
        raise ValueError(f"cache: the {s['cache']} cache is built per block; use method confidence or threshold, "
                         f"not {s['method']!r}")
