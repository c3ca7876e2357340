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
    ema_decay: float = doc(0.9, "Decay of the per-bucket and overall loss EMAs.")
    spike_window: int = doc(50, "Rolling window (logging steps) of the robust z-score.")
    spike_threshold: float = doc(6.0, "Robust z-score above which a logging step is a spike.")
    spike_warmup: int = doc(20, "Logging steps before the detector may fire.")
    spike_action: Literal["log", "skip_step", "stop"] = doc("log", "What a spike does besides writing its event.")
    wandb: Literal["offline", "online", "disabled"] = doc("offline", "W&B sink mode; offline never needs an account or network.")
    wandb_project: str = doc("megadfm", "W&B project name.")
    tensorboard: bool = doc(False, "Also write TensorBoard event files.")

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
