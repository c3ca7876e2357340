"""The telemetry protocol of one training run on one rank, composed of its parts:

    BucketAccumulator  per-bucket sums of the micro-batches, reduced once per judgement (accumulator.py)
    SpikeMonitor       detector + rules + weighting/instability label + action           (spikes.py)
    SequenceLog        which sequences the step saw, for a replayable spike event        (identities.py)
    MetricsWindow      the logging window and its EMAs                                   (window.py)
    sinks              JSONL always, W&B and TensorBoard optionally, rank 0 only          (sinks.py)

One optimizer step, on every rank in the same order (``check_spike`` and a logging ``end_step`` are
collectives)::

    for each micro-batch:  record(out, batch, replay)        # local, no communication
    record_grad_norms(norms); record_scalars(lr=..., ...)
    decision = check_spike(step)                             # before optimizer.step(): skip/stop possible
    record = end_step(step, skipped=...)                     # a dict on logging steps, else None

Communication: with ``spike_detection: step`` (default) check_spike all-reduces the step's vector
once, and the logging record sums those already-reduced vectors, so logging adds nothing. With
``log_step`` nothing is reduced between logging steps and a logging step costs one all-reduce. A
spike additionally all-gathers the step's sequence identities (rare).

Files under RUN_DIR/telemetry/: ``metrics.jsonl`` (one line per logging step, kind "train", and per
validation pass, kind "val"), ``spikes.jsonl`` (one event per spike), ``run_meta.json`` (bucket edges
and labels, detector settings, sink status).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, List, Mapping, Optional

import torch

from megadfm.dfm.loss import DFMLossOutput
from megadfm.training.grad_norms import GROUPS, GradNorms
from megadfm.training.telemetry import response_lengths
from megadfm.training.telemetry.accumulator import BucketAccumulator
from megadfm.training.telemetry.buckets import Buckets, summarize
from megadfm.training.telemetry.config import TelemetryConfig
from megadfm.training.telemetry.identities import SequenceLog
from megadfm.training.telemetry.reduce import GatherFn, ReduceFn, local_gather, local_sum
from megadfm.training.telemetry.sinks import JsonlSink, make_metric_sinks, write_json_atomic
from megadfm.training.telemetry.spikes import NO_SPIKE, SpikeDecision, SpikeJudgement, SpikeMonitor
from megadfm.training.telemetry.window import MetricsWindow, scalar_name

log = logging.getLogger(__name__)

METRIC_MEANINGS = {
    "train/loss": "sum of weighted losses / sum of normalizers over the logging window (what the optimiser sees)",
    "train/ce": "unweighted cross-entropy per masked token",
    "train/bucket_XX/loss": "weighted CE per masked token (w * CE) of sequences whose r is in the bucket",
    "train/bucket_XX/ce": "unweighted CE per masked token in the bucket",
    "train/bucket_XX/contribution": "the bucket's part of train/loss (contributions add up to it)",
    "train/weighting_var_explained": "fraction of the across-sequence spread of w*CE explained by the weights alone",
    "train/response_tokens/...": "SFT only: examples in the window, mean/std of their response tokens (end-of-turn "
                                 "included, EOS tail excluded), histogram hist/LO-HI (response_lengths.py)",
}


def t_of_mask_ratio_fn(scheduler: Any):
    """float r -> float t from a megadfm Scheduler; None keeps the linear default (t = 1 - r)."""
    if scheduler is None:
        return None
    return lambda r: float(scheduler.t_for_mask_ratio(torch.tensor(float(r), dtype=torch.float64)))


class Telemetry:
    def __init__(self, cfg: TelemetryConfig, run_dir: str, *, log_interval: int = 1, grad_clip: float = 0.0,
                 scheduler: Any = None, run_config: Optional[dict] = None, rank: int = 0, world_size: int = 1,
                 is_writer: bool = True, reduce: ReduceFn = local_sum, gather: GatherFn = local_gather):
        if log_interval <= 0:
            raise ValueError(f"log_interval must be positive, got {log_interval}")
        self.cfg = cfg
        self.dir = os.path.join(run_dir, "telemetry")
        self.log_interval = log_interval
        self.grad_clip = float(grad_clip)
        self.world_size = world_size
        self.is_writer = is_writer
        self.buckets = Buckets.from_config(cfg, t_of_mask_ratio_fn(scheduler))
        self.scheduler_description = "linear (t = 1 - r)" if scheduler is None else repr(scheduler)
        self.accumulator = BucketAccumulator(self.buckets, reduce)
        self.monitor = SpikeMonitor(cfg, self.buckets)
        self.sequences = SequenceLog(rank, gather)
        self.window = MetricsWindow(self.buckets, cfg.ema_decay)
        self._reduce = reduce
        self._judged_step: Optional[int] = None
        self._decision = NO_SPIKE
        self._event: Optional[dict] = None
        self._step_grad: Optional[GradNorms] = None
        self._step_scalars: Dict[str, float] = {}
        self._sinks: List[Any] = []
        self._spike_sink: Optional[JsonlSink] = None
        self.sink_status: Dict[str, str] = {}
        if is_writer:
            os.makedirs(self.dir, exist_ok=True)
            wandb_config = {"config": run_config or {}, "buckets": {b["name"]: b["label"] for b in self.buckets.describe()}}
            self._sinks, self.sink_status = make_metric_sinks(run_dir, self.dir, cfg.wandb, cfg.wandb_project, cfg.wandb_run_name,
                                                              cfg.tensorboard, wandb_config)
            self._spike_sink = JsonlSink(os.path.join(self.dir, "spikes.jsonl"))
            self._write_run_meta(run_config)
            log.info("telemetry: %d mask-ratio buckets, spike detection per %s (%s, z > %g, window %d, action %s), sinks %s",
                     len(self.buckets), cfg.spike_detection, cfg.spike_method, cfg.spike_threshold, cfg.spike_window,
                     cfg.spike_action, self.sink_status)

    @property
    def num_reductions(self) -> int:
        return self.accumulator.num_reductions

    def _write_run_meta(self, run_config: Optional[dict]) -> None:
        meta = {
            "format": "megadfm-telemetry/1", "created": time.time(),
            "conventions": "t=0 all masked, t=1 clean; mask ratio r = 1 - kappa(t); weight w = kappa'(t)/(1 - kappa(t)) (1/r when linear)",
            "scheduler": self.scheduler_description, "bucket_edges": self.buckets.edges, "buckets": self.buckets.describe(),
            "small_ratio_buckets": self.monitor.small_ratio_buckets, "world_size": self.world_size,
            "log_interval": self.log_interval, "grad_clip": self.grad_clip, "grad_groups": list(GROUPS),
            "spike": self.monitor.describe(), "sinks": self.sink_status, "metrics": METRIC_MEANINGS,
            "response_length_bins": response_lengths.bin_labels(),
        }
        if run_config is not None:
            meta["config"] = run_config
        write_json_atomic(os.path.join(self.dir, "run_meta.json"), meta)

    # ---- recording (local) ---------------------------------------------------------------------
    def record(self, out: DFMLossOutput, batch: Mapping[str, torch.Tensor], replay: Optional[dict] = None) -> None:
        """One micro-batch's loss output and the batch it came from (for sample identities). No communication."""
        if self._judged_step is not None and self.cfg.spike_detection == "step":
            raise RuntimeError("Telemetry.record after check_spike in the same step: call end_step(step) first")
        bucket = self.accumulator.add(out, batch.get("response_lengths"))
        self.sequences.add(out, batch, bucket, replay)

    def record_grad_norms(self, norms: GradNorms) -> None:
        self._step_grad = norms

    def record_scalars(self, **scalars: Optional[float]) -> None:
        """lr, tokens_per_s, mfu, mem_*_gb, ... (bare names get opt/, mem/ or perf/)."""
        for name, value in scalars.items():
            if value is not None:
                self._step_scalars[scalar_name(name)] = float(value)

    # ---- judging (collective) ------------------------------------------------------------------
    def _is_log_step(self, step: int) -> bool:
        return step % self.log_interval == 0

    def check_spike(self, step: int) -> SpikeDecision:
        """Verdict for this step; on every rank after the last backward, before optimizer.step()."""
        if self._judged_step is not None:  # asked twice in one step: same verdict, no second reduction
            return self._decision
        if self.cfg.spike_detection == "log_step" and not self._is_log_step(step):
            return NO_SPIKE
        return self._judge(step)

    def _judge(self, step: int) -> SpikeDecision:
        vec = self.accumulator.reduce()
        self.window.add_vector(vec)
        observed = vec if self.cfg.spike_detection == "step" else self.window.vector
        self._judged_step = step
        summary = summarize(observed, self.buckets, "train")
        judgement: SpikeJudgement = self.monitor.judge(summary, step)
        self._decision = judgement.decision
        if judgement.decision.is_spike:
            self.sequences.stamp(step)
            sequences, replay = self.sequences.gather()
            self.window.add_spike(step)
            self._event = self.monitor.event(judgement, summary, sequences, replay, time.time())
        return self._decision

    def end_step(self, step: int, *, skipped: Optional[bool] = None, force_log: bool = False) -> Optional[Dict[str, Any]]:
        """Close the step (collective on logging steps). Returns the flat record on logging steps
        (step % log_interval == 0, or force_log), else None. ``skipped`` defaults to the spike decision."""
        log_now = force_log or self._is_log_step(step)
        self.sequences.stamp(step)
        if self._judged_step is None and (self.cfg.spike_detection == "step" or log_now):
            self._judge(step)  # nobody asked before optimizer.step(): judge now (nothing can be skipped any more)
        elif self.accumulator.has_pending and log_now:
            raise RuntimeError("Telemetry.record after check_spike in the same step: call end_step(step) first")
        was_skipped = self._decision.skip if skipped is None else bool(skipped)
        self.window.end_step(was_skipped, self._step_grad, self._step_scalars)
        if self._event is not None:
            self._finish_event(was_skipped)
        record = None
        if log_now:
            record = self.window.record(step)
            self.write(record)
        if self.cfg.spike_detection == "step" or log_now:
            self.sequences.clear()
        self._judged_step, self._decision = None, NO_SPIKE
        self._step_grad, self._step_scalars = None, {}
        return record

    def _finish_event(self, skipped: bool) -> None:
        event, self._event = self._event, None
        event["skipped"] = skipped
        event["grad_norms"] = self._step_grad.as_dict() if self._step_grad is not None else None
        event["lr"] = self._step_scalars.get("opt/lr")
        event["scalars"] = dict(self._step_scalars)
        if self.is_writer:
            self._spike_sink.write(event)
            trig = ", ".join(f"{f['key']}={_fmt(f['value'])} (expected <= {_fmt(f['expected'][1])})" for f in event["fired"])
            where = "; ".join(b["label"] for b in event["buckets"]) or "no single bucket"
            log.warning("loss spike at step %d [%s]: %s; buckets: %s; action: %s%s", event["step"], event["label"], trig, where,
                        event["action"], " (update skipped)" if skipped else "")

    def write(self, record: Dict[str, Any]) -> None:
        """Send a record (train or val) to every sink; rank 0 only."""
        if self.is_writer:
            for sink in self._sinks:
                sink.write(record)

    # ---- checkpoint state, shutdown ------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """EMAs, detector windows and counters, so a resumed run continues the same statistics."""
        return {**self.window.state_dict(), "detector": self.monitor.detector.state_dict(),
                "bucket_edges": list(self.buckets.edges)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        same_buckets = list(state.get("bucket_edges", self.buckets.edges)) == list(self.buckets.edges)
        if not same_buckets:
            log.warning("telemetry: bucket edges changed since the checkpoint; per-bucket EMAs and detector windows restart")
        self.window.load_state_dict(state, keep_emas=same_buckets)
        if same_buckets and "detector" in state:
            self.monitor.detector.load_state_dict(state["detector"])

    def close(self) -> None:
        if self._event is not None:  # a spike whose step never ended (the run stopped right away)
            self._finish_event(self._decision.skip)
        for sink in self._sinks:
            sink.close()
        if self._spike_sink is not None:
            self._spike_sink.close()
        self._sinks, self._spike_sink = [], None

    def __enter__(self) -> "Telemetry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_line(record: Mapping[str, Any]) -> str:
    """One human line for a train record: loss (EMA), CE, grad norm pre->post clip, lr, tokens/s, spikes."""
    parts = [f"step {record['step']}", f"loss {_fmt(record.get('train/loss'))} (ema {_fmt(record.get('train/loss_ema'))})",
             f"ce {_fmt(record.get('train/ce'))}"]
    if "grad/total" in record:
        parts.append(f"grad {_fmt(record['grad/total'])}->{_fmt(record.get('grad/total_post_clip'))}")
    if "opt/lr" in record:
        parts.append(f"lr {record['opt/lr']:.3g}")
    if "perf/tokens_per_s" in record:
        parts.append(f"{record['perf/tokens_per_s']:.4g} tok/s")
    if record.get("spikes/count"):
        parts.append(f"spikes {record['spikes/count']} (skipped {record.get('train/skipped_steps', 0)})")
    return " | ".join(parts)


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)
