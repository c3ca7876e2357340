"""The response-length distribution of SFT batches, as sums that ride in the bucket vector.

An SFT batch (megadfm/data/sft.py) carries ``response_lengths``: the response tokens of every
example in it (its end-of-turn token included; the row's trained EOS tail under ``padding:
eos_train`` is not part of any example's length). Per logging window the telemetry reports how many
examples it saw, their mean and standard deviation and a histogram over fixed power-of-two bins,
``train/response_tokens/hist/16-31`` = examples with 16 to 31 response tokens. The numbers are sums
(examples, tokens, squared tokens, one count per bin), so they cross ranks in the same all-reduce as
the bucket statistics and a resumed run continues them exactly. Pre-training batches have no
``response_lengths``: their records carry none of these metrics.

Why a histogram and not quantiles: a quantile is not a sum, so it would cost a gather per step;
the bins show the same thing (are the responses short? does the EOS tail dominate the rows?).
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch

BIN_EDGES: List[int] = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
"""Lower edges of the bins (the last one is open): 1-7, 8-15, ..., 4096-8191, 8192+."""
SUMS = ("examples", "tokens", "tokens_sq")
SIZE = len(SUMS) + len(BIN_EDGES)


def bin_labels() -> List[str]:
    return [f"{lo}-{hi - 1}" for lo, hi in zip(BIN_EDGES[:-1], BIN_EDGES[1:])] + [f"{BIN_EDGES[-1]}+"]


def add(slot: torch.Tensor, lengths: torch.Tensor) -> None:
    """Add one micro-batch's example response lengths (a 1-D integer tensor) to ``slot`` [SIZE] in place."""
    lengths = lengths.reshape(-1).to(slot.device)
    if lengths.numel() == 0:
        return
    if bool((lengths < 1).any()):
        raise ValueError(f"response_lengths must be >= 1 (an SFT response ends with its end-of-turn token), got "
                         f"{lengths.min().item()}")
    x = lengths.to(torch.float64)
    slot[0] += x.numel()
    slot[1] += x.sum()
    slot[2] += (x * x).sum()
    index = torch.bucketize(lengths, torch.tensor(BIN_EDGES[1:], device=lengths.device, dtype=lengths.dtype), right=True)
    slot[len(SUMS):].index_add_(0, index, torch.ones_like(x))


def summarize(slot: torch.Tensor, prefix: str) -> Dict[str, Optional[float]]:
    """``{prefix}/response_tokens/...`` metrics of a reduced slot; empty when no example was seen."""
    values = slot.detach().to("cpu", torch.float64).tolist()
    examples, tokens, tokens_sq = values[:len(SUMS)]
    if examples <= 0:
        return {}
    mean = tokens / examples
    name = f"{prefix}/response_tokens"
    out: Dict[str, Optional[float]] = {f"{name}/examples": examples, f"{name}/mean": mean,
                                       f"{name}/std": max(0.0, tokens_sq / examples - mean * mean) ** 0.5}
    for label, count in zip(bin_labels(), values[len(SUMS):]):
        out[f"{name}/hist/{label}"] = count
    return out
