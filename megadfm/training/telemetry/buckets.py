"""Buckets over the mask ratio r and the [sum, count] statistics kept per bucket.

Worked example (linear scheduler, r = 1 - t, weight w = 1/r, 10 buckets + 2 log-spaced low ones,
log_spaced_min_ratio = 1e-3): the edges are 0, 0.0046, 0.022, 0.1, 0.2, ..., 1, so bucket_00 holds
r in [0, 0.0046) (t in (0.9954, 1], weights above 215) and bucket_11 holds r in [0.9, 1] (t in [0, 0.1]).
A sequence with r = 0.004 and 3 masked tokens of CE 2.0 adds, to bucket_00's row: weighted_sum 1500
(= 3 * 2.0 / 0.004), unweighted_sum 6, masked_tokens 3, sequences 1, weight_sum 250, ...

Every statistic is a *sum* (never a mean), so micro-batches, steps and ranks combine by addition and
all of them travel in one flat float64 vector: ``num_buckets * len(COLUMNS)`` bucket entries followed
by ``EXTRAS`` and the response-length sums of SFT batches (response_lengths.py). Means are taken only
after the reduction (:func:`summarize`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from megadfm.training.telemetry import response_lengths
from megadfm.training.telemetry.config import TelemetryConfig

# Per-bucket sums. y = weighted loss per masked token of one sequence (w * CE), c = its unweighted CE per
# masked token; the y/c/w columns count only sequences with >= 1 masked token and finite sums ("scored").
COLUMNS = ("weighted_sum", "unweighted_sum", "masked_tokens", "sequences", "weight_sum", "t_sum", "mask_ratio_sum",
           "scored_sequences", "y_sum", "y_sq_sum", "c_sum", "c_sq_sum", "w_sum", "w_sq_sum", "yw_sum", "nonfinite_sequences")
COL = {name: i for i, name in enumerate(COLUMNS)}
EXTRAS = ("normalizer", "micro_batches")


def linear_t_of_mask_ratio(r: float) -> float:
    """t for the linear scheduler kappa(t) = t (r = 1 - t); the default when no scheduler is given."""
    return 1.0 - r


def make_bucket_edges(cfg: TelemetryConfig) -> List[float]:
    """Edges over r from 0 to 1: explicit or equal-width, then the log-spaced split of the lowest bucket."""
    edges = list(cfg.bucket_edges) if cfg.bucket_edges is not None else [i / cfg.num_buckets for i in range(cfg.num_buckets + 1)]
    edges[0], edges[-1] = 0.0, 1.0
    k = cfg.log_spaced_low_buckets
    if k > 0:
        top, low = edges[1], cfg.log_spaced_min_ratio
        inner = [top * (low / top) ** (j / (k + 1)) for j in range(k, 0, -1)]  # increasing, strictly inside (low, top)
        edges = [0.0] + inner + edges[1:]
    return edges


def format_ratio(x: float) -> str:
    """Enough decimals to tell x from 0 and from 1 (2-3 significant digits): 0.1, 0.00464, 0.894, 0.999536."""
    if x <= 0.0 or x >= 1.0:
        return "0" if x <= 0.0 else "1"
    decimals = max(1, math.ceil(-math.log10(min(x, 1.0 - x))) + 2)
    return f"{x:.{decimals}f}".rstrip("0").rstrip(".") or "0"


@dataclass
class Buckets:
    """The bucket edges over r plus everything derived from them (names, labels, t ranges)."""

    edges: List[float]
    t_of_mask_ratio: Callable[[float], float] = linear_t_of_mask_ratio

    def __post_init__(self) -> None:
        if len(self.edges) < 2 or self.edges[0] != 0.0 or self.edges[-1] != 1.0 or any(a >= b for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError(f"bucket edges must increase strictly from 0.0 to 1.0, got {self.edges}")
        self._inner: Dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg: TelemetryConfig, t_of_mask_ratio: Optional[Callable[[float], float]] = None) -> "Buckets":
        return cls(make_bucket_edges(cfg), t_of_mask_ratio or linear_t_of_mask_ratio)

    def __len__(self) -> int:
        return len(self.edges) - 1

    @property
    def width(self) -> int:
        return max(2, len(str(len(self) - 1)))

    def name(self, i: int) -> str:
        return f"bucket_{i:0{self.width}d}"

    @property
    def names(self) -> List[str]:
        return [self.name(i) for i in range(len(self))]

    def mask_ratio_range(self, i: int) -> List[float]:
        return [self.edges[i], self.edges[i + 1]]

    def t_range(self, i: int) -> List[float]:
        """[t_low, t_high]: r decreases with t, so the bucket's upper r edge gives its lower t."""
        a, b = (self.t_of_mask_ratio(r) for r in self.mask_ratio_range(i))
        return [min(a, b), max(a, b)]

    def label(self, i: int) -> str:
        lo, hi = self.mask_ratio_range(i)
        t_lo, t_hi = self.t_range(i)
        r_close = "]" if i == len(self) - 1 else ")"
        t_open = "[" if i == len(self) - 1 else "("
        return f"r∈[{format_ratio(lo)}, {format_ratio(hi)}{r_close} t∈{t_open}{format_ratio(t_lo)}, {format_ratio(t_hi)}]"

    def midpoint(self, i: int) -> float:
        lo, hi = self.mask_ratio_range(i)
        return 0.5 * (lo + hi)

    def is_small_ratio(self, i: int, threshold: float) -> bool:
        return self.edges[i + 1] <= threshold + 1e-12

    def describe(self) -> List[dict]:
        return [{"index": i, "name": self.name(i), "label": self.label(i), "mask_ratio": self.mask_ratio_range(i),
                 "t": self.t_range(i), "mask_ratio_mid": self.midpoint(i)} for i in range(len(self))]

    def index(self, mask_ratio: torch.Tensor) -> torch.Tensor:
        """Bucket of each r: [e_i, e_{i+1}) (the last bucket includes r = 1). Edges are compared in r's own
        dtype, so a float32 r of 0.9 lands in the bucket that starts at 0.9."""
        r = mask_ratio.detach()
        if not r.is_floating_point():
            r = r.to(torch.float64)
        key = (r.device, r.dtype)
        inner = self._inner.get(key)
        if inner is None:
            inner = self._inner[key] = torch.tensor(self.edges[1:-1], dtype=r.dtype, device=r.device)
        return torch.bucketize(r, inner, right=True)

    # ---- the flat statistics vector ----
    @property
    def vector_size(self) -> int:
        return len(self) * len(COLUMNS) + len(EXTRAS) + response_lengths.SIZE

    def zeros(self, device) -> torch.Tensor:
        return torch.zeros(self.vector_size, dtype=torch.float64, device=device)

    def table(self, vec: torch.Tensor) -> torch.Tensor:
        """The [num_buckets, len(COLUMNS)] view of a flat vector."""
        return vec[: len(self) * len(COLUMNS)].view(len(self), len(COLUMNS))

    def extras(self, vec: torch.Tensor) -> torch.Tensor:
        start = len(self) * len(COLUMNS)
        return vec[start:start + len(EXTRAS)]

    def response_slot(self, vec: torch.Tensor) -> torch.Tensor:
        """The response-length sums (response_lengths.py) of a flat vector."""
        return vec[len(self) * len(COLUMNS) + len(EXTRAS):]


def per_sequence_rows(mask_ratio: torch.Tensor, t: torch.Tensor, weight: torch.Tensor, weighted_sum: torch.Tensor,
                      unweighted_sum: torch.Tensor, masked_count: torch.Tensor) -> torch.Tensor:
    """[B, len(COLUMNS)] float64 contributions of B sequences (summed into buckets by the caller)."""
    f = lambda x: x.detach().to(torch.float64).reshape(-1)  # noqa: E731
    r, tt, w, ws, us, m = map(f, (mask_ratio, t, weight, weighted_sum, unweighted_sum, masked_count))
    finite = torch.isfinite(ws) & torch.isfinite(us)
    scored = finite & (m > 0)
    safe_m = torch.where(scored, m, torch.ones_like(m))
    y = torch.where(scored, ws / safe_m, torch.zeros_like(ws))
    c = torch.where(scored, us / safe_m, torch.zeros_like(us))
    w_s = torch.where(scored, w, torch.zeros_like(w))
    s = scored.to(torch.float64)
    ones = torch.ones_like(r)
    cols = [ws, us, m, ones, w, tt, r, s, y, y * y, c, c * c, w_s, w_s * w_s, y * w_s, (~finite).to(torch.float64)]
    return torch.stack(cols, dim=1)


def _div(a: float, b: float) -> Optional[float]:
    return a / b if b > 0 else None


def summarize(vec: torch.Tensor, buckets: Buckets, prefix: str) -> Dict[str, Optional[float]]:
    """Means of a reduced vector as flat metric names ``{prefix}/loss``, ``{prefix}/bucket_03/ce``, ...

    - ``loss``: sum of weighted losses / sum of normalizers (the objective the optimiser sees);
      ``ce``: unweighted CE per masked token.
    - per bucket: ``loss`` = weighted CE per masked token (w * CE), ``ce``, ``contribution`` (this bucket's
      share of ``loss``: the contributions add up to it), counts and the mean weight, t and r.
    - spread across sequences of the per-sequence losses per masked token: ``seq_std_weighted`` (of w*CE),
      ``seq_std_unweighted`` (of CE), and ``weighting_var_explained``: the fraction of the weighted spread
      that the weights alone account for, 1 - sum (y_i - w_i cbar)^2 / sum (y_i - ybar)^2 clipped to [0, 1]
      (1: the loss swings only because sequences carry different kappa'/(1-kappa) weights; 0: the CE itself moves).
    """
    v = vec.detach().to("cpu", torch.float64)
    tab = buckets.table(v).tolist()
    normalizer, micro_batches = buckets.extras(v).tolist()
    out: Dict[str, Optional[float]] = {}
    tot = [sum(row[j] for row in tab) for j in range(len(COLUMNS))]
    C = COL
    out[f"{prefix}/loss"] = _div(tot[C["weighted_sum"]], normalizer)
    out[f"{prefix}/ce"] = _div(tot[C["unweighted_sum"]], tot[C["masked_tokens"]])
    out[f"{prefix}/masked_tokens"] = tot[C["masked_tokens"]]
    out[f"{prefix}/sequences"] = tot[C["sequences"]]
    out[f"{prefix}/normalizer"] = normalizer
    out[f"{prefix}/micro_batches"] = micro_batches
    out[f"{prefix}/nonfinite_sequences"] = tot[C["nonfinite_sequences"]]
    n = tot[C["scored_sequences"]]
    std_w = std_u = explained = None
    if n >= 2:
        sy, syy, sc, scc = tot[C["y_sum"]], tot[C["y_sq_sum"]], tot[C["c_sum"]], tot[C["c_sq_sum"]]
        sww, syw = tot[C["w_sq_sum"]], tot[C["yw_sum"]]
        ss_tot = max(0.0, syy - sy * sy / n)
        cbar = sc / n
        std_w = math.sqrt(ss_tot / n)
        std_u = math.sqrt(max(0.0, scc / n - cbar * cbar))
        if ss_tot > 1e-12 * max(1.0, syy):
            ss_res = max(0.0, syy - 2.0 * cbar * syw + cbar * cbar * sww)
            explained = min(1.0, max(0.0, 1.0 - ss_res / ss_tot))
    out[f"{prefix}/seq_std_weighted"] = std_w
    out[f"{prefix}/seq_std_unweighted"] = std_u
    out[f"{prefix}/weighting_var_explained"] = explained
    for i, row in enumerate(tab):
        b = f"{prefix}/{buckets.name(i)}"
        seqs, masked = row[C["sequences"]], row[C["masked_tokens"]]
        out[f"{b}/loss"] = _div(row[C["weighted_sum"]], masked)
        out[f"{b}/ce"] = _div(row[C["unweighted_sum"]], masked)
        out[f"{b}/contribution"] = _div(row[C["weighted_sum"]], normalizer)  # 0 for an empty bucket: it contributed nothing
        out[f"{b}/masked_tokens"] = masked
        out[f"{b}/sequences"] = seqs
        out[f"{b}/mean_weight"] = _div(row[C["weight_sum"]], seqs)
        out[f"{b}/mean_t"] = _div(row[C["t_sum"]], seqs)
        out[f"{b}/mean_mask_ratio"] = _div(row[C["mask_ratio_sum"]], seqs)
    out.update(response_lengths.summarize(buckets.response_slot(v), prefix))
    return out

