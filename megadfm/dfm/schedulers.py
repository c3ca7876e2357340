"""Schedulers kappa(t): the probability that a token is clean at time t (docs/DESIGN.md §3).

t = 0 is the source (every maskable token masked), t = 1 is data. The mask ratio is
r = 1 - kappa(t). The loss weight of a mask-source path is kappa'(t) / (1 - kappa(t)).

    polynomial   kappa = t^n                 kappa' = n t^(n-1)          w = n t^(n-1) / (1 - t^n)
    linear       polynomial with n = 1       kappa' = 1                  w = 1 / (1 - t) = 1 / r
    cosine       kappa = 1 - cos(pi t / 2)   kappa' = (pi/2) sin(pi t/2) w = (pi/2) tan(pi t / 2)

The cosine scheduler is MaskGIT's: the mask ratio is r = cos(pi t / 2).

All functions take and return tensors (any shape); they compute in float64 internally where a
closed-form inverse loses precision near the ends, and return the input's dtype.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from megadfm.dfm.config import DFMConfig


class Scheduler(ABC):
    """kappa(t) with its derivative and inverse. Subclasses implement kappa, d_kappa, t_for_kappa."""

    @abstractmethod
    def kappa(self, t: torch.Tensor) -> torch.Tensor:
        """Probability that a token is clean at time t."""

    @abstractmethod
    def d_kappa(self, t: torch.Tensor) -> torch.Tensor:
        """d kappa / d t."""

    @abstractmethod
    def t_for_kappa(self, kappa: torch.Tensor) -> torch.Tensor:
        """Inverse of kappa on [0, 1]."""

    def mask_ratio(self, t: torch.Tensor) -> torch.Tensor:
        """r = 1 - kappa(t): the probability that a maskable token is masked at time t."""
        return 1.0 - self.kappa(t)

    def t_for_mask_ratio(self, mask_ratio: torch.Tensor) -> torch.Tensor:
        """The time at which the expected mask ratio is ``mask_ratio``."""
        return self.t_for_kappa(1.0 - mask_ratio)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """Generalized-KL weight of a mask source, kappa'(t) / (1 - kappa(t)).

        Infinite at t = 1 (r = 0): callers keep r >= eps (time sampling does).
        """
        t64 = t.double()  # 1 - kappa cancels near r = eps in fp32
        return (self.d_kappa(t64) / (1.0 - self.kappa(t64))).to(t.dtype)


class PolynomialConvex(Scheduler):
    """kappa(t) = t^n (n > 0). n = 1 is the linear scheduler; n > 1 keeps more tokens masked longer."""

    def __init__(self, exponent: float = 1.0):
        if exponent <= 0:
            raise ValueError(f"PolynomialConvex exponent must be positive, got {exponent}")
        self.exponent = float(exponent)

    def kappa(self, t: torch.Tensor) -> torch.Tensor:
        return t.pow(self.exponent)

    def d_kappa(self, t: torch.Tensor) -> torch.Tensor:
        if self.exponent == 1.0:
            return torch.ones_like(t)
        return self.exponent * t.pow(self.exponent - 1.0)

    def t_for_kappa(self, kappa: torch.Tensor) -> torch.Tensor:
        return kappa.double().clamp(0.0, 1.0).pow(1.0 / self.exponent).to(kappa.dtype)

    def __repr__(self) -> str:
        return f"PolynomialConvex(n={self.exponent:g})"


class Cosine(Scheduler):
    """kappa(t) = 1 - cos(pi t / 2), so the mask ratio is MaskGIT's cos(pi t / 2)."""

    def kappa(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - torch.cos(0.5 * math.pi * t)

    def d_kappa(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def t_for_kappa(self, kappa: torch.Tensor) -> torch.Tensor:
        return (torch.arccos((1.0 - kappa.double()).clamp(0.0, 1.0)) * (2.0 / math.pi)).to(kappa.dtype)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        # Closed form (pi/2) tan(pi t / 2): avoids 1 - kappa cancelling near t = 1.
        return (0.5 * math.pi * torch.tan(0.5 * math.pi * t.double())).to(t.dtype)

    def __repr__(self) -> str:
        return "Cosine()"


def make_scheduler(cfg: DFMConfig) -> Scheduler:
    """The scheduler named by ``cfg.scheduler`` (``linear`` ignores ``scheduler_exponent``)."""
    if cfg.scheduler == "polynomial":
        return PolynomialConvex(cfg.scheduler_exponent)
    if cfg.scheduler == "linear":
        return PolynomialConvex(1.0)
    if cfg.scheduler == "cosine":
        return Cosine()
    raise ValueError(f"dfm.scheduler: unknown scheduler {cfg.scheduler!r}; expected polynomial, linear or cosine")
