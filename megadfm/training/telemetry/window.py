"""The logging window: what happened between two logging steps, turned into one flat record.

It sums the already-reduced bucket vectors of its steps (so a record costs no communication of its
own), averages grad norms and scalars, counts skipped steps and spikes, and keeps the EMAs that run
across windows (and across a resume: :meth:`state_dict`).
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Optional

import torch

from megadfm.training.grad_norms import GradNorms
from megadfm.training.telemetry.buckets import Buckets, summarize
from megadfm.training.telemetry.sinks import json_safe

EMA_METRICS = ("loss", "ce")
LAST_VALUE_SCALARS = ("opt/lr", "opt/loss_scale")
"""Scalars whose last value in the window is reported; every other scalar is averaged."""


def scalar_name(name: str) -> str:
    """Bare scalar names get a group: lr -> opt/lr, mem_* -> mem/..., anything else -> perf/...; 'a/b' stays."""
    if "/" in name:
        return name
    if name in ("lr", "loss_scale"):
        return f"opt/{name}"
    if name.startswith("mem"):
        return f"mem/{name}"
    return f"perf/{name}"


class MetricsWindow:
    def __init__(self, buckets: Buckets, ema_decay: float, clock=time.time):
        self.buckets = buckets
        self.ema_decay = ema_decay
        self.ema: Dict[str, float] = {}
        self.spikes_total = 0
        self.skipped_total = 0
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self.vector = self.buckets.zeros("cpu")
        self.steps = 0
        self.skipped = 0
        self.spike_steps: List[int] = []
        self.grads: List[GradNorms] = []
        self.scalars: Dict[str, List[float]] = {}
        self.started = self._clock()

    def add_vector(self, reduced: torch.Tensor) -> None:
        self.vector += reduced.to("cpu", torch.float64)

    def add_spike(self, step: int) -> None:
        self.spike_steps.append(step)
        self.spikes_total += 1

    def end_step(self, skipped: bool, grads: Optional[GradNorms], scalars: Dict[str, float]) -> None:
        self.steps += 1
        if skipped:
            self.skipped += 1
            self.skipped_total += 1
        if grads is not None:
            self.grads.append(grads)
        for k, v in scalars.items():
            self.scalars.setdefault(k, []).append(v)

    def _update_ema(self, key: str, value: Optional[float]) -> Optional[float]:
        if value is None or not math.isfinite(value):
            return self.ema.get(key)
        d = self.ema_decay
        self.ema[key] = value if key not in self.ema else d * self.ema[key] + (1.0 - d) * value
        return self.ema[key]

    def record(self, step: int) -> Dict[str, Any]:
        """The flat ``kind: train`` record of this window (updates the EMAs, then starts a new window)."""
        now = self._clock()
        rec: Dict[str, Any] = {"kind": "train", "step": step, "time": now}
        summary = summarize(self.vector, self.buckets, "train")
        rec.update(summary)
        keys = ["train/" + m for m in EMA_METRICS] + [f"train/{b}/{m}" for b in self.buckets.names for m in EMA_METRICS]
        for key in keys:
            rec[f"{key}_ema"] = self._update_ema(key, summary[key])
        rec["train/steps"] = self.steps
        rec["train/skipped_steps"] = self.skipped
        rec["spikes/count"] = len(self.spike_steps)
        rec["spikes/total"] = self.spikes_total
        rec["spikes/skipped_total"] = self.skipped_total
        if self.spike_steps:
            rec["spikes/steps"] = list(self.spike_steps)
        if self.grads:
            n = len(self.grads)
            rec.update({k: sum(g.as_dict()[k] for g in self.grads) / n for k in self.grads[-1].as_dict()})
            rec["grad/total_max"] = max(g.total for g in self.grads)
            rec["grad/clipped_fraction"] = sum(g.clipped for g in self.grads) / n
        for k, values in self.scalars.items():
            rec[k] = values[-1] if k in LAST_VALUE_SCALARS else sum(values) / len(values)
        rec["perf/window_seconds"] = now - self.started
        self.reset()
        return json_safe(rec)

    def state_dict(self) -> Dict[str, Any]:
        return {"ema": dict(self.ema), "spikes_total": self.spikes_total, "skipped_total": self.skipped_total}

    def load_state_dict(self, state: Dict[str, Any], keep_emas: bool = True) -> None:
        self.ema = dict(state.get("ema", {})) if keep_emas else {}
        self.spikes_total = int(state.get("spikes_total", 0))
        self.skipped_total = int(state.get("skipped_total", 0))
