"""Configuration of loss-spike telemetry (buckets over the mask ratio, spike detection, sinks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal, Optional

from megadfm.config_base import doc, require


@dataclass
class TelemetryConfig:
    """Per-mask-ratio-bucket loss accounting, grad-norm logging, spike detection and sinks."""

    num_buckets: int = doc(10, "Equal-width buckets over the mask ratio r in [0, 1] (ignored when bucket_edges is set).")
    bucket_edges: Optional[List[float]] = doc(None, "Explicit increasing bucket edges over r, from 0 to 1.")
    log_spaced_low_buckets: int = doc(0, "Extra log-spaced buckets subdividing the lowest bucket (small r, where 1/r weights are large).")
    log_spaced_min_ratio: float = doc(
        1e-3, "With log_spaced_low_buckets = k: the lowest bucket [0, e1) is cut at k edges spaced evenly in log r strictly between "
        "this ratio and e1 (use dfm.mask_ratio_eps), e.g. k=2, e1=0.1: edges 0, 0.0046, 0.022, 0.1.")
    ema_decay: float = doc(0.9, "Decay of the per-bucket and overall loss EMAs (updated once per logging step).")
    spike_detection: Literal["step", "log_step"] = doc(
        "step", "step: judge every optimizer step before optimizer.step() (one all-reduce of the step's bucket sums, which is "
        "also the logging reduction; needed for spike_action=skip_step); log_step: judge logging windows only (one all-reduce "
        "per logging step, nothing in between).")
    spike_method: Literal["mad", "ema"] = doc(
        "mad", "mad: robust z-score (x - median) / (1.4826 MAD) over the rolling window; ema: (x - EMA) / sqrt(EMV) with "
        "decay 2 / (spike_window + 1).")
    spike_window: int = doc(50, "Rolling window of the detector, in observations (optimizer steps, or logging steps with log_step).")
    spike_threshold: float = doc(6.0, "Robust z-score above which an observation is a spike (only upward jumps; NaN/Inf always are).")
    spike_warmup: int = doc(20, "Observations of a series before the detector may fire on it (at least 5 are always required).")
    spike_min_relative_scale: float = doc(
        0.02, "Floor of the detector's spread as a fraction of the median, so a nearly constant series does not flag tiny wiggles.")
    spike_min_bucket_tokens: int = doc(
        64, "A bucket's own series (its w*CE and CE) may fire only when the observation holds at least this many masked tokens: "
        "a mean over a handful of tokens (typical of small-r buckets) is too noisy to call a spike. Overall series always may.")
    spike_small_mask_ratio: float = doc(
        0.1, "Buckets whose upper mask-ratio edge is <= this are 'small r'. A spike confined to them while every unweighted CE is in "
        "range is labelled 'weighting' (the kappa'/(1-kappa) weight amplified few masked tokens), otherwise 'instability'.")
    spike_action: Literal["log", "skip_step", "stop"] = doc(
        "log", "What a spike does besides writing its event: log only; skip_step (the engine skips that optimizer update; counted); "
        "stop (the engine saves and stops).")
    spike_act_on_weighting: bool = doc(False, "Also apply spike_action to spikes labelled 'weighting' (by default they are only logged).")
    wandb: Literal["offline", "online", "disabled"] = doc(
        "offline", "W&B sink mode; offline never needs an account or network; disabled never imports wandb.")
    wandb_project: str = doc("megadfm", "W&B project name.")
    wandb_run_name: Optional[str] = doc(None, "W&B run name (null: the run directory's name).")
    tensorboard: bool = doc(False, "Also write TensorBoard event files to RUN_DIR/telemetry/tensorboard (skipped, with the reason "
                                   "logged, when the tensorboard package is not installed).")

    def __post_init__(self) -> None:
        require(self.num_buckets > 0, "num_buckets", f"must be positive, got {self.num_buckets}")
        if self.bucket_edges is not None:
            e = self.bucket_edges
            require(len(e) >= 2 and e[0] == 0.0 and e[-1] == 1.0 and all(a < b for a, b in zip(e, e[1:])),
                    "bucket_edges", f"must increase strictly from 0.0 to 1.0, got {e}")
        require(self.log_spaced_low_buckets >= 0, "log_spaced_low_buckets", f"must be >= 0, got {self.log_spaced_low_buckets}")
        require(0 < self.ema_decay < 1, "ema_decay", f"must be in (0, 1), got {self.ema_decay}")
        require(self.spike_window >= 5, "spike_window", f"must be >= 5, got {self.spike_window}")
        require(self.spike_threshold > 0, "spike_threshold", f"must be positive, got {self.spike_threshold}")
        require(self.spike_warmup >= 0, "spike_warmup", f"must be >= 0, got {self.spike_warmup}")
        require(self.spike_min_relative_scale >= 0, "spike_min_relative_scale", f"must be >= 0, got {self.spike_min_relative_scale}")
        require(self.spike_min_bucket_tokens >= 0, "spike_min_bucket_tokens", f"must be >= 0, got {self.spike_min_bucket_tokens}")
        require(0 <= self.spike_small_mask_ratio <= 1, "spike_small_mask_ratio", f"must be in [0, 1], got {self.spike_small_mask_ratio}")
        if self.log_spaced_low_buckets > 0:
            lowest_upper = self.bucket_edges[1] if self.bucket_edges is not None else 1.0 / self.num_buckets
            require(0 < self.log_spaced_min_ratio < lowest_upper, "log_spaced_min_ratio",
                    f"must be in (0, {lowest_upper}) (the lowest bucket's upper edge), got {self.log_spaced_min_ratio}")
        require(not (self.spike_action == "skip_step" and self.spike_detection != "step"), "spike_action",
                "skip_step needs spike_detection: step (a logging-window verdict comes too late to skip the update)")
