"""Deterministic parameter initialization at construction time.

Every leaf layer draws its initial values inside its own ``__init__`` (``reset_parameters``), from
one private generator shared in construction order. Initializing there, not in a pass over the
finished model, is what makes it work under ``deepspeed.zero.Init``, which partitions a module's
parameters as soon as its ``__init__`` returns (the trainer builds the model that way with ZeRO-3);
the model code itself never imports DeepSpeed. The global RNG is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass
class ParamInit:
    generator: torch.Generator
    std: float
    dtype: torch.dtype

    @classmethod
    def seeded(cls, seed: int, std: float, dtype: torch.dtype) -> "ParamInit":
        return cls(torch.Generator().manual_seed(seed), std, dtype)

    @torch.no_grad()
    def normal_(self, tensor: torch.Tensor) -> None:
        """normal(0, std) drawn in fp32 on the CPU generator (identical on every machine and rank)."""
        tensor.copy_(torch.randn(tensor.shape, generator=self.generator) * self.std)


class Linear(nn.Linear):
    """nn.Linear with weight normal(0, std) (or zeros when ``zero``) and zero bias, at construction."""

    def __init__(self, in_features: int, out_features: int, bias: bool, init: Optional[ParamInit], zero: bool = False):
        self._param_init, self._zero = init, zero  # plain attributes: allowed before Module.__init__
        super().__init__(in_features, out_features, bias=bias, dtype=init.dtype if init else None)
        self._param_init = None  # keep no generator reference in the built model

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self._zero:
                self.weight.zero_()
            elif self._param_init is not None:
                self._param_init.normal_(self.weight)
            if self.bias is not None:
                self.bias.zero_()


class Embedding(nn.Embedding):
    """nn.Embedding with weight normal(0, std) at construction."""

    def __init__(self, num_embeddings: int, dim: int, init: Optional[ParamInit]):
        self._param_init = init
        super().__init__(num_embeddings, dim, dtype=init.dtype if init else None)
        self._param_init = None

    def reset_parameters(self) -> None:
        if self._param_init is not None:
            self._param_init.normal_(self.weight)
