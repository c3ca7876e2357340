"""Configuration and result of the DFM sampler (megadfm/dfm/sampler.py).

``method`` takes its allowed values from the registry of megadfm/dfm/sampling/ (importing that
package registers every method; the methods import this module only for type checking).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal, Optional

import torch

from megadfm.config_base import check_choices, doc, require
from megadfm.dfm.sampling import SAMPLER_METHODS
from megadfm.tokens import ENDOFTEXT_TOKEN_ID

BLOCK_METHODS = ("confidence", "threshold")  # the methods that decode in semi-autoregressive blocks


@dataclass
class SamplerConfig:
    """How to turn masks into tokens: solver, time grid, decoding filters, stopping."""

    method: str = doc(
        "euler", "A method of megadfm/dfm/sampling/. euler: the exact-rate Euler DFM solver (random unmasking, "
        "(k(t+h)-k(t))/(1-k(t)) per step); confidence: unmask the k most confident positions per step (optionally in "
        "semi-AR blocks); threshold: unmask every position of the block whose confidence passes `threshold` "
        "(Fast-dLLM's parallel decoding), at least one per step.", choices=SAMPLER_METHODS)
    steps: int = doc(32, "euler: solver steps from t = 0 to 1. confidence: steps per generation, split evenly over "
                         "each row's blocks. threshold: an UPPER BOUND per block (a block stops once it has no mask "
                         "left; its steps-th evaluation unmasks whatever remains).")
    time_grid: Literal["uniform", "scheduler"] = doc(
        "uniform", "uniform: t_k = k/steps; scheduler: uniform in kappa (each step unmasks the same expected number).")
    confidence: Literal["probability", "margin", "entropy"] = doc(
        "probability", "Confidence score of the confidence sampler: p(token), top1 - top2 margin, or negative entropy.")
    block_length: int = doc(0, "confidence and threshold methods: semi-autoregressive blocks of this many new tokens, "
                               "left to right; 0 = one block.")
    threshold: float = doc(0.9, "threshold method, threshold_mode fixed: unmask every masked position of the block whose "
                                "confidence is >= this, in [0, 1] (probability: p(token); margin: p1 - p2; entropy: "
                                "exp(-H)). 1 unmasks one position per step, 0 the whole block at once.")
    threshold_mode: Literal["fixed", "factor"] = doc(
        "fixed", "threshold method: fixed (confidence >= threshold) or factor (Fast-dLLM: the largest n with "
        "(m + 1)(1 - c_m) <= threshold_factor for every m <= n, c_m the m-th highest confidence).")
    threshold_factor: float = doc(1.0, "threshold method, threshold_mode factor: the factor f (> 0; larger unmasks more per step).")
    cache: Literal["none", "prefix", "dual"] = doc(
        "none", "confidence and threshold methods: K/V cache of the block samplers (Fast-dLLM style, "
        "megadfm/dfm/sampling/cached_forward.py). none: the EXACT sampler, every step a full forward. prefix and dual "
        "are APPROXIMATIONS for a bidirectional model: each block starts with one full forward that builds the cache "
        "and its later steps run only the block (prefix: the block and everything after it, over the cached K/V of "
        "the columns before it; dual: the block only, over the cached K/V of every other column, suffix included); "
        "the cached K/V are those of the block's first step (its tokens and its t) and go stale as the block is "
        "decoded. Exact only where nothing a cached position depends on changes (e.g. a causal model without time "
        "conditioning).")
    temperature: float = doc(1.0, "Softmax temperature; 0 is greedy (argmax).")
    top_k: int = doc(0, "Keep the k most likely tokens (0 = off).")
    top_p: float = doc(1.0, "Nucleus sampling mass (1 = off).")
    eos_token_id: Optional[int] = doc(ENDOFTEXT_TOKEN_ID, "End of text: the output stops before the first one (null = never stop).")
    seed: int = doc(0, "Seed of the sampler's generator (when none is passed in).")

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.steps > 0, "steps", f"must be positive, got {self.steps}")
        require(self.block_length >= 0, "block_length", f"must be >= 0, got {self.block_length}")
        require(self.method in BLOCK_METHODS or self.block_length == 0, "block_length",
                f"semi-autoregressive blocks are an option of the {' and '.join(BLOCK_METHODS)} methods, "
                f"not of method {self.method!r}")
        require(0.0 <= self.threshold <= 1.0, "threshold", f"must be in [0, 1], got {self.threshold}")
        require(self.threshold_mode in ("fixed", "factor"), "threshold_mode",
                f"must be fixed or factor, got {self.threshold_mode!r}")
        require(self.threshold_factor > 0, "threshold_factor", f"must be > 0, got {self.threshold_factor}")
        require(self.cache in ("none", "prefix", "dual"), "cache", f"must be none, prefix or dual, got {self.cache!r}")
        require(self.cache == "none" or self.method in BLOCK_METHODS, "cache",
                f"cache {self.cache!r} is an option of the {' and '.join(BLOCK_METHODS)} methods (it caches around a "
                f"block), not of method {self.method!r}; use cache: none")
        require(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        require(self.top_k >= 0, "top_k", f"must be >= 0, got {self.top_k}")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")


@dataclass
class SampleResult:
    """What :func:`megadfm.dfm.sampler.generate` returns. Throughput counts new tokens only."""

    tokens: List[List[int]]  # new tokens per row (the middle for infill), cut before the first EOS
    sequences: torch.Tensor  # [B, L] final rows: prompt + new tokens + suffix, right padding; never a mask
    finished: List[bool]  # row produced an EOS
    steps: int  # solver steps that evaluated the model
    nfe_full: int  # forward passes over whole rows
    nfe_block: int  # forward passes over only a block's columns (cache prefix / dual; 0 with cache none)
    forward_rows: int  # rows passed to the model, summed over forward passes (rows stopped at EOS drop out)
    new_tokens: int  # sum of len(tokens): prompt, suffix, the EOS and everything after it excluded
    decoded_positions: int  # new positions the sampler decoded (<= the sum of budgets: an EOS stop skips the rest)
    seconds: float  # wall time of the decoding loop
    tokens_per_second: float  # new_tokens / seconds

    @property
    def model_evals(self) -> int:
        """All forward passes, nfe_full + nfe_block (the name older callers read)."""
        return self.nfe_full + self.nfe_block

    def summary(self) -> dict:
        return {"steps": self.steps, "model_evals": self.model_evals, "nfe_full": self.nfe_full,
                "nfe_block": self.nfe_block, "forward_rows": self.forward_rows, "new_tokens": self.new_tokens,
                "decoded_positions": self.decoded_positions, "seconds": round(self.seconds, 4),
                "tokens_per_second": round(self.tokens_per_second, 2)}
