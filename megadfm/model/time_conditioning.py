"""Time conditioning: t -> sinusoidal embedding -> MLP -> per-block AdaLN modulation (docs/DESIGN.md §3).

Every block gets six [B, H] vectors, in this order:
``shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp``, used as
``h = rmsnorm(x) * (1 + scale) + shift`` and ``x + (1 + gate) * f(h)`` for each sub-block.

Modes (ModelConfig.time_conditioning):

- ``adaln``: each block has its own projection ``layers.{i}.adaln.proj`` (Linear H -> 6H applied to
  SiLU(c)). Costs 6·H²·n_layers parameters (~705M for Qwen3-1.7B's H=2048, 28 layers).
- ``adaln_single`` (PixArt-α's adaLN-single): one shared projection ``adaln_single.proj`` plus a
  learned per-block offset table ``layers.{i}.adaln.table`` [6, H]; 6·H² + 6·H·n_layers parameters.
- ``none``: no time input (a mask-source model can infer t from the mask count); the baseline.

The modulation outputs (the projections' weights and biases, and the offset tables) are
ZERO-initialized, so at init every block computes exactly the pretrained Qwen3 block whatever t is.
(DiT's adaLN-Zero initializes the gate to 0, i.e. multiplies each branch by 0: that would switch off
every pretrained block, so it is not used here; the gate enters as 1 + gate.)
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import nn
import torch.nn.functional as F

from megadfm.model.param_init import Linear, ParamInit

N_MODULATIONS = 6
"""shift/scale/gate for the attention sub-block, then for the MLP sub-block."""

TIME_SCALE = 1000.0
"""t in [0, 1] is embedded as 1000·t, so the sinusoid frequencies (periods 1 .. 10^4) resolve
differences of 1e-3 in t, the granularity that matters for the mask ratio, as in DiT/DDPM."""


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] (cos half, then sin half) of t [B], computed in fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.to(torch.float32) * TIME_SCALE)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbedding(nn.Module):
    """t [B] -> conditioning vector c [B, H]: sinusoid -> Linear -> SiLU -> Linear."""

    def __init__(self, frequency_dim: int, hidden_size: int, init: ParamInit):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.linear_1 = Linear(frequency_dim, hidden_size, True, init)  # normal(0, std), zero bias
        self.linear_2 = Linear(hidden_size, hidden_size, True, init)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.frequency_dim).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(emb)))


class AdaLNProjection(nn.Module):
    """SiLU(c) -> Linear(H, 6H): the modulation projection (per block, or the shared adaln_single one)."""

    def __init__(self, hidden_size: int, init: ParamInit):
        super().__init__()
        self.proj = Linear(hidden_size, N_MODULATIONS * hidden_size, True, init, zero=True)  # zero: exact at init

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.proj(F.silu(c)).view(c.shape[0], N_MODULATIONS, -1)


class AdaLNTable(nn.Module):
    """adaln_single's per-block learned offsets [6, H], added to the shared modulation."""

    def __init__(self, hidden_size: int, init: ParamInit):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(N_MODULATIONS, hidden_size, dtype=init.dtype))  # zero: exact at init

    def forward(self, shared: torch.Tensor) -> torch.Tensor:
        return shared + self.table[None]


class TokenTimes(NamedTuple):
    """Time conditioning that differs between the tokens of a row (block diffusion's two streams: the noisy
    block at its t, the clean context at t = 1): the conditioning of each distinct t, and which one each token uses.

    Every block computes its modulations once per distinct t (``values``), not once per token: a row has
    only a few times, and the projection is H x 6H per block.
    """

    values: torch.Tensor  # [U, H] (adaln) or [U, 6, H] (adaln_single's shared modulation): one per distinct t
    index: torch.Tensor  # long [B, L]: the row of ``values`` each token uses


def make_block_adaln(mode: str, hidden_size: int, init: ParamInit) -> Optional[nn.Module]:
    """The per-block module (``layers.{i}.adaln``) for a time-conditioning mode."""
    if mode == "adaln":
        return AdaLNProjection(hidden_size, init)
    if mode == "adaln_single":
        return AdaLNTable(hidden_size, init)
    if mode == "none":
        return None
    raise ValueError(f"time_conditioning must be adaln, adaln_single or none, got {mode!r}")

