"""Robust loss-spike detection over named series, and the weighting-vs-instability verdict.

Each series (overall weighted loss, overall CE, and per bucket the weighted CE, the CE and the
contribution to the loss) keeps a rolling window. A new value x gets the robust z-score

    z = (x - median) / max(1.4826 * MAD, min_relative_scale * |median|, 1e-12)

(or (x - EMA) / sqrt(EMV) with ``method="ema"``) computed *before* x joins the window. The median
is the default: a trending loss (early training) inflates the EMV by the EMA's lag, which blunts the
ema method; ema reacts faster to a genuine level shift. A fired value enters the EMA winsorized. A series may
fire once it has ``warmup`` observations and z > threshold; NaN/Inf always fire. Only upward jumps
count: a loss that suddenly drops is not an incident. The expected range reported with an event is
center +- threshold * scale.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, Iterable, List, Literal, Optional, Sequence, Tuple

from megadfm.training.telemetry.buckets import Buckets
from megadfm.training.telemetry.config import TelemetryConfig

MAD_TO_STD = 1.4826  # MAD of a normal distribution times this is its standard deviation


@dataclass
class Verdict:
    key: str
    value: Optional[float]
    z: Optional[float]          # None during warm-up or for a non-finite value
    center: Optional[float]
    low: Optional[float]
    high: Optional[float]
    fired: bool
    reason: str = ""            # "zscore" | "nonfinite" | ""

    def as_dict(self) -> dict:
        return {"key": self.key, "value": self.value, "z": self.z, "expected": [self.low, self.high], "median": self.center,
                "reason": self.reason}


class Series:
    """One rolling window with its robust (or EMA) center and scale."""

    def __init__(self, window: int, method: str, min_relative_scale: float):
        self.values: Deque[float] = deque(maxlen=window)
        self.method = method
        self.min_relative_scale = min_relative_scale
        self.alpha = 2.0 / (window + 1.0)
        self.mean: Optional[float] = None
        self.var = 0.0
        self.count = 0

    def center_scale(self) -> Optional[Tuple[float, float]]:
        if not self.values:
            return None
        if self.method == "ema":
            center, spread = self.mean, math.sqrt(max(self.var, 0.0))
        else:
            ordered = sorted(self.values)
            center = _median(ordered)
            spread = MAD_TO_STD * _median(sorted(abs(v - center) for v in ordered))
        return center, max(spread, self.min_relative_scale * abs(center), 1e-12)

    def push(self, x: float) -> None:
        self.values.append(x)
        self.count += 1
        if self.mean is None:
            self.mean = x
        else:
            d = x - self.mean
            self.mean += self.alpha * d
            self.var = (1.0 - self.alpha) * (self.var + self.alpha * d * d)

    def state(self) -> dict:
        return {"values": list(self.values), "mean": self.mean, "var": self.var, "count": self.count}

    def load(self, state: dict) -> None:
        self.values.clear()
        self.values.extend(state["values"])
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


def _median(ordered: Sequence[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


class SpikeDetector:
    """Rolling robust z-scores over any number of named series."""

    def __init__(self, window: int = 50, threshold: float = 6.0, warmup: int = 20, method: Literal["mad", "ema"] = "mad",
                 min_relative_scale: float = 0.02):
        if method not in ("mad", "ema"):
            raise ValueError(f"spike detector method must be 'mad' or 'ema', got {method!r}")
        self.window, self.threshold, self.method = window, threshold, method
        self.warmup = max(5, warmup)  # a median/MAD of fewer values is too fragile to judge anything
        self.min_relative_scale = min_relative_scale
        self.series: Dict[str, Series] = {}

    def observe(self, values: Dict[str, Optional[float]]) -> Dict[str, Verdict]:
        """Score every present value against its history, then add the finite ones to it. None = no observation."""
        verdicts: Dict[str, Verdict] = {}
        for key, x in values.items():
            if x is None:
                continue
            s = self.series.get(key)
            if s is None:
                s = self.series[key] = Series(self.window, self.method, self.min_relative_scale)
            if not math.isfinite(x):
                verdicts[key] = Verdict(key, x, None, None, None, None, True, "nonfinite")
                continue
            cs = s.center_scale() if s.count >= self.warmup else None
            if cs is None:
                verdicts[key] = Verdict(key, x, None, None, None, None, False)
            else:
                center, scale = cs
                z = (x - center) / scale
                fired = z > self.threshold
                verdicts[key] = Verdict(key, x, z, center, center - self.threshold * scale, center + self.threshold * scale,
                                        fired, "zscore" if fired else "")
                if fired and self.method == "ema":  # winsorize, so one spike does not blind the EMV to the next
                    x = center + self.threshold * scale
            s.push(x)
        return verdicts

    def state_dict(self) -> dict:
        return {k: s.state() for k, s in self.series.items()}

    def load_state_dict(self, state: dict) -> None:
        self.series = {}
        for k, st in state.items():
            s = self.series[k] = Series(self.window, self.method, self.min_relative_scale)
            s.load(st)


@dataclass
class SpikeVerdict:
    """What one observation step amounts to."""

    is_spike: bool
    label: Optional[str] = None                # "weighting" | "instability"
    fired: Tuple[str, ...] = ()                # the series that fired
    buckets: Tuple[int, ...] = ()              # buckets involved (fired, or the largest contributor to an overall spike)


def classify(verdicts: Dict[str, Verdict], bucket_names: Sequence[str], small_ratio_buckets: Iterable[int],
             prefix: str = "train") -> SpikeVerdict:
    """Weighting-vs-instability verdict from the per-series verdicts of one step.

    Trigger series: ``{prefix}/loss``, ``{prefix}/ce``, ``{prefix}/bucket_XX/loss`` and ``.../ce``;
    ``.../contribution`` only attributes an overall spike to buckets (when no bucket series fired). The spike is ``weighting`` when no
    unweighted CE fired (overall or in any bucket), nothing is non-finite and every involved bucket is a
    small-r bucket: the weighted loss moved only because a large kappa'/(1-kappa) weight multiplied the
    CE of a few masked tokens. Anything else is ``instability``.
    """
    small = set(small_ratio_buckets)
    trigger = [f"{prefix}/loss", f"{prefix}/ce"] + [f"{prefix}/{b}/{m}" for b in bucket_names for m in ("loss", "ce")]
    fired = tuple(k for k in trigger if k in verdicts and verdicts[k].fired)
    if not fired:
        return SpikeVerdict(False)
    involved = [i for i, b in enumerate(bucket_names)
                if any(verdicts.get(f"{prefix}/{b}/{m}") is not None and verdicts[f"{prefix}/{b}/{m}"].fired for m in ("loss", "ce"))]
    if not involved:
        # only the overall series fired: blame the fewest buckets whose contributions rose by at least half of the
        # total rise over their medians (a bucket's contribution also moves with how many sequences it drew)
        rises = sorted(((v.value - v.center, i) for i, b in enumerate(bucket_names)
                        for v in [verdicts.get(f"{prefix}/{b}/contribution")]
                        if v is not None and v.center is not None and v.value is not None and math.isfinite(v.value)), reverse=True)
        total = sum(r for r, _ in rises if r > 0)
        covered = 0.0
        for rise, i in rises:
            if rise <= 0 or covered >= 0.5 * total:
                break
            involved.append(i)
            covered += rise
    nonfinite = any(v.reason == "nonfinite" for v in verdicts.values())
    ce_fired = any(k.endswith("/ce") for k in fired)
    weighting = not nonfinite and not ce_fired and bool(involved) and all(i in small for i in involved)
    return SpikeVerdict(True, "weighting" if weighting else "instability", fired, tuple(involved))


@dataclass(frozen=True)
class SpikeDecision:
    """What the monitor says about one step. ``action``: none | log | skip_step | stop."""

    action: str = "none"
    label: Optional[str] = None      # "weighting" | "instability" when a spike was found
    step: Optional[int] = None

    @property
    def is_spike(self) -> bool:
        return self.action != "none"

    @property
    def skip(self) -> bool:
        return self.action == "skip_step"

    @property
    def stop(self) -> bool:
        return self.action == "stop"


NO_SPIKE = SpikeDecision()

_JUDGED = ("loss", "ce", "contribution")
_EVENT_BUCKET_METRICS = ("loss", "ce", "contribution", "sequences", "masked_tokens", "mean_weight")


@dataclass
class SpikeJudgement:
    decision: SpikeDecision
    verdict: SpikeVerdict
    verdicts: Dict[str, Verdict]


class SpikeMonitor:
    """The detector plus every rule about what counts: which series are judged, the too-few-masked-tokens
    rule for a bucket's own series, the weighting-vs-instability label and the configured action."""

    def __init__(self, cfg: TelemetryConfig, buckets: Buckets):
        self.cfg = cfg
        self.buckets = buckets
        self.detector = SpikeDetector(cfg.spike_window, cfg.spike_threshold, cfg.spike_warmup, cfg.spike_method,
                                      cfg.spike_min_relative_scale)
        self.small_ratio_buckets = [i for i in range(len(buckets)) if buckets.is_small_ratio(i, cfg.spike_small_mask_ratio)]

    def judge(self, summary: Dict[str, Optional[float]], step: int) -> SpikeJudgement:
        """Score one observation (a ``summarize`` of reduced sums) and decide."""
        values = {"train/loss": summary["train/loss"], "train/ce": summary["train/ce"]}
        for name in self.buckets.names:
            for m in _JUDGED:
                values[f"train/{name}/{m}"] = summary[f"train/{name}/{m}"]
        verdicts = self.detector.observe(values)
        for name in self.buckets.names:
            # a mean over a handful of masked tokens (typical of small-r buckets) is too noisy to call a spike
            if summary[f"train/{name}/masked_tokens"] < self.cfg.spike_min_bucket_tokens:
                for m in ("loss", "ce"):
                    v = verdicts.get(f"train/{name}/{m}")
                    if v is not None and v.fired and v.reason == "zscore":
                        v.fired, v.reason = False, "too few masked tokens to judge"
        verdict = classify(verdicts, self.buckets.names, self.small_ratio_buckets, "train")
        if not verdict.is_spike:
            return SpikeJudgement(NO_SPIKE, verdict, verdicts)
        acts = verdict.label == "instability" or self.cfg.spike_act_on_weighting
        decision = SpikeDecision(self.cfg.spike_action if acts else "log", verdict.label, step)
        return SpikeJudgement(decision, verdict, verdicts)

    def event(self, judgement: SpikeJudgement, summary: Dict[str, Optional[float]], sequences: List[dict],
              replay: List[dict], now: float) -> Dict[str, Any]:
        """The spikes.jsonl record: what fired, the expected ranges, the buckets involved, every sequence."""
        verdicts, verdict, decision = judgement.verdicts, judgement.verdict, judgement.decision

        def expected(key: str):
            v = verdicts.get(key)
            return None if v is None else [v.low, v.high]

        b = self.buckets
        return {
            "step": decision.step, "time": now, "label": verdict.label, "action": decision.action,
            "detection": self.cfg.spike_detection,
            "loss": summary["train/loss"], "loss_expected": expected("train/loss"),
            "ce": summary["train/ce"], "ce_expected": expected("train/ce"),
            "weighting_var_explained": summary["train/weighting_var_explained"],
            "fired": [verdicts[k].as_dict() for k in verdict.fired],
            "buckets": [{
                "index": i, "name": b.name(i), "label": b.label(i), "mask_ratio": b.mask_ratio_range(i), "t": b.t_range(i),
                "small_ratio": i in self.small_ratio_buckets,
                **{m: summary[f"train/{b.name(i)}/{m}"] for m in _EVENT_BUCKET_METRICS},
                **{f"{m}_expected": expected(f"train/{b.name(i)}/{m}") for m in _JUDGED},
            } for i in verdict.buckets],
            "sequences": sequences,
            "replay": replay,
        }

    def describe(self) -> Dict[str, Any]:
        cfg = self.cfg
        return {"detection": cfg.spike_detection, "method": cfg.spike_method, "window": cfg.spike_window,
                "min_bucket_tokens": cfg.spike_min_bucket_tokens, "threshold": cfg.spike_threshold, "warmup": cfg.spike_warmup,
                "action": cfg.spike_action, "act_on_weighting": cfg.spike_act_on_weighting,
                "small_mask_ratio": cfg.spike_small_mask_ratio}
