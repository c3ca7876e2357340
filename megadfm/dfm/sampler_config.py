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


@dataclass
class SamplerConfig:
    """How to turn masks into tokens: solver, time grid, decoding filters, stopping."""

    method: str = doc(
        "euler", "A method of megadfm/dfm/sampling/. euler: the exact-rate Euler DFM solver (random unmasking, "
        "(k(t+h)-k(t))/(1-k(t)) per step); confidence: unmask the k most confident positions per step (optionally in "
        "semi-AR blocks).", choices=SAMPLER_METHODS)
    steps: int = doc(32, "Solver steps from t = 0 to 1 (per generation; split over blocks in semi-AR mode).")
    time_grid: Literal["uniform", "scheduler"] = doc(
        "uniform", "uniform: t_k = k/steps; scheduler: uniform in kappa (each step unmasks the same expected number).")
    confidence: Literal["probability", "margin", "entropy"] = doc(
        "probability", "Confidence score of the confidence sampler: p(token), top1 - top2 margin, or negative entropy.")
    block_length: int = doc(0, "Confidence sampler only: semi-autoregressive blocks of this many new tokens, left to right; 0 = one block.")
    temperature: float = doc(1.0, "Softmax temperature; 0 is greedy (argmax).")
    top_k: int = doc(0, "Keep the k most likely tokens (0 = off).")
    top_p: float = doc(1.0, "Nucleus sampling mass (1 = off).")
    eos_token_id: Optional[int] = doc(ENDOFTEXT_TOKEN_ID, "End of text: the output stops before the first one (null = never stop).")
    seed: int = doc(0, "Seed of the sampler's generator (when none is passed in).")

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.steps > 0, "steps", f"must be positive, got {self.steps}")
        require(self.block_length >= 0, "block_length", f"must be >= 0, got {self.block_length}")
        require(self.method == "confidence" or self.block_length == 0, "block_length",
                "semi-autoregressive blocks are a confidence-sampler option (set method: confidence)")
        require(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        require(self.top_k >= 0, "top_k", f"must be >= 0, got {self.top_k}")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")


@dataclass
class SampleResult:
    """What :func:`megadfm.dfm.sampler.generate` returns."""

    tokens: List[List[int]]  # new tokens per row (the middle for infill), cut before the first EOS
    sequences: torch.Tensor  # [B, L] final rows: prompt + new tokens + suffix, right padding; never a mask
    finished: List[bool]  # row produced an EOS
    steps: int  # solver steps that evaluated the model
    model_evals: int  # forward passes of the model
    new_tokens: int  # positions decoded: sum of max_new_tokens over rows
    seconds: float  # wall time of the decoding loop
    tokens_per_second: float  # new_tokens / seconds

    def summary(self) -> dict:
        return {"steps": self.steps, "model_evals": self.model_evals, "new_tokens": self.new_tokens,
                "seconds": round(self.seconds, 4), "tokens_per_second": round(self.tokens_per_second, 2)}
