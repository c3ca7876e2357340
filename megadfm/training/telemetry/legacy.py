"""Loss telemetry per mask-ratio bucket, grad norms, spike detection and sinks (issue 7).

The engine drives one :class:`Telemetry` per rank; it never calls the engine. One optimizer step:

    for micro, batch in enumerate(micro_batches):
        out = dfm_loss(model, batch, t, cfg.dfm, scheduler, gen)
        engine.backward(out.loss)
        telemetry.record_loss_output(out, batch, replay={"seed": seed})  # local, no sync
        if micro < accum - 1: engine.step()                               # DeepSpeed's non-boundary micro-step
    telemetry.record_grad_norms(compute_grad_norms(engine, model.parameter_group, clip))   # collective
    telemetry.record_scalars(lr=lr, tokens_per_s=tps, mfu=mfu, mem_allocated_gb=mem)
    decision = telemetry.check_spike(step)                                 # collective, BEFORE engine.step()
    if decision.stop: save and leave after end_step()
    if not decision.skip: engine.step()                                    # skip_step: the update is dropped
    record = telemetry.end_step(step, skipped=decision.skip)               # dict on logging steps, else None

Every rank must make the same calls in the same order (check_spike, end_step on logging steps,
log_validation and compute_grad_norms are collectives); only global rank 0 writes files.

Communication: the per-bucket [sum, count] statistics of all micro-batches travel in one flat
float64 vector (see telemetry_buckets.py). With ``spike_detection: step`` (default) check_spike
all-reduces the step's vector once -- the verdict must exist before optimizer.step() -- and the
logging record is the sum of those already-reduced vectors, so logging adds no communication. With
``spike_detection: log_step`` nothing is reduced between logging steps and a logging step costs one
all-reduce. A spike additionally all-gathers the step's sample identities (rare).

Files under RUN_DIR/telemetry/: ``metrics.jsonl`` (one line per logging step, kind "train", and per
validation pass, kind "val"; append-only, flushed each line), ``spikes.jsonl`` (one event per spike:
what fired, expected ranges, buckets, grad norms, lr, and every sequence's rank / sample_index /
dataset_index / dataset_sample_index / t / mask ratio so the batch can be replayed), ``run_meta.json``
(bucket edges and labels, detector settings, sink status).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import torch
import torch.distributed as dist

from megadfm.training.grad_norms import GROUPS, GradNorms
from megadfm.training.telemetry.spikes import SpikeDetector, classify
from megadfm.training.telemetry.buckets import COL, Buckets, per_sequence_rows, summarize
from megadfm.training.telemetry.config import TelemetryConfig
from megadfm.training.telemetry.sinks import JsonlSink, json_safe, make_metric_sinks, write_json_atomic

log = logging.getLogger(__name__)

IDENTITY_FIELDS = ("sample_index", "dataset_index", "dataset_sample_index")
SEQUENCE_FIELDS = ("t", "mask_ratio", "weight", "weighted_sum", "unweighted_sum", "masked_tokens")
_EMA_METRICS = ("loss", "ce")
_LAST_VALUE_SCALARS = ("opt/lr", "opt/loss_scale")


@dataclass(frozen=True)
class SpikeDecision:
    """check_spike's answer. ``action``: none | log | skip_step | stop."""

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


def t_of_mask_ratio_fn(scheduler: Any) -> Optional[Callable[[float], float]]:
    """float r -> float t from a megadfm Scheduler (``t_for_mask_ratio`` on tensors) or a plain callable."""
    if scheduler is None:
        return None
    if hasattr(scheduler, "t_for_mask_ratio"):
        return lambda r: float(scheduler.t_for_mask_ratio(torch.tensor(float(r), dtype=torch.float64)))
    if callable(scheduler):
        return lambda r: float(scheduler(r))
    raise TypeError(f"scheduler must be a megadfm Scheduler or a callable r -> t, got {type(scheduler).__name__}")


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def scalar_name(name: str) -> str:
    """Bare scalar names get a group: lr -> opt/lr, mem_* -> mem/..., anything else -> perf/...; 'a/b' stays."""
    if "/" in name:
        return name
    if name in ("lr", "loss_scale"):
        return f"opt/{name}"
    if name.startswith("mem"):
        return f"mem/{name}"
    return f"perf/{name}"


class Telemetry:
    """Per-bucket loss accounting, grad norms, spikes and sinks for one training run (one instance per rank)."""

    def __init__(self, cfg: TelemetryConfig, run_dir: str, *, log_interval: int = 1, grad_clip: float = 0.0,
                 scheduler: Any = None, process_group=None, run_config: Optional[dict] = None):
        if log_interval <= 0:
            raise ValueError(f"log_interval must be positive, got {log_interval}")
        self.cfg = cfg
        self.run_dir = run_dir
        self.dir = os.path.join(run_dir, "telemetry")
        self.log_interval = log_interval
        self.grad_clip = float(grad_clip)
        self.buckets = Buckets.from_config(cfg, t_of_mask_ratio_fn(scheduler))
        self.scheduler_description = "linear (t = 1 - r)" if scheduler is None else repr(scheduler)
        self.group = process_group
        self.distributed = dist.is_available() and dist.is_initialized()
        self.world_size = dist.get_world_size(process_group) if self.distributed else 1
        self.rank = dist.get_rank(process_group) if self.distributed else 0
        self.is_writer = (dist.get_rank() == 0) if self.distributed else True
        self.detector = SpikeDetector(cfg.spike_window, cfg.spike_threshold, cfg.spike_warmup, cfg.spike_method,
                                      cfg.spike_min_relative_scale)
        self.small_ratio_buckets = [i for i in range(len(self.buckets)) if self.buckets.is_small_ratio(i, cfg.spike_small_mask_ratio)]
        self.num_reductions = 0          # all-reduces of bucket vectors so far (observable by tests)
        self.ema: Dict[str, float] = {}
        self.spikes_total = 0
        self.skipped_total = 0
        self._device: Optional[torch.device] = None
        self._pending: Optional[torch.Tensor] = None       # local, not yet reduced sums
        self._window = self.buckets.zeros("cpu")           # reduced sums since the last logging step
        self._ids: List[Dict[str, Any]] = []               # per-micro-batch identities kept for a spike event
        self._micro = 0
        self._checked_step: Optional[int] = None
        self._decision = NO_SPIKE
        self._event: Optional[dict] = None
        self._step_grad: Optional[GradNorms] = None
        self._step_scalars: Dict[str, float] = {}
        self._reset_window()
        self._sinks: List[Any] = []
        self._spike_sink: Optional[JsonlSink] = None
        self.sink_status: Dict[str, str] = {}
        if self.is_writer:
            os.makedirs(self.dir, exist_ok=True)
            wandb_config = {"config": run_config or {}, "buckets": {b["name"]: b["label"] for b in self.buckets.describe()}}
            self._sinks, self.sink_status = make_metric_sinks(run_dir, self.dir, cfg.wandb, cfg.wandb_project, cfg.wandb_run_name,
                                                              cfg.tensorboard, wandb_config)
            self._spike_sink = JsonlSink(os.path.join(self.dir, "spikes.jsonl"))
            self.write_run_meta(run_config)
            log.info("telemetry: %d mask-ratio buckets, spike detection per %s (%s, z > %g, window %d, action %s), sinks %s",
                     len(self.buckets), cfg.spike_detection, cfg.spike_method, cfg.spike_threshold, cfg.spike_window,
                     cfg.spike_action, self.sink_status)

    # ------------------------------------------------------------------ metadata
    def write_run_meta(self, run_config: Optional[dict] = None) -> None:
        cfg = self.cfg
        meta = {
            "format": "megadfm-telemetry/1",
            "created": time.time(),
            "conventions": "t=0 all masked, t=1 clean; mask ratio r = 1 - kappa(t); weight w = kappa'(t)/(1 - kappa(t)) (1/r when linear)",
            "scheduler": self.scheduler_description,
            "bucket_edges": self.buckets.edges,
            "buckets": self.buckets.describe(),
            "small_ratio_buckets": self.small_ratio_buckets,
            "world_size": self.world_size,
            "log_interval": self.log_interval,
            "grad_clip": self.grad_clip,
            "grad_groups": list(GROUPS),
            "spike": {"detection": cfg.spike_detection, "method": cfg.spike_method, "window": cfg.spike_window,
                      "min_bucket_tokens": cfg.spike_min_bucket_tokens,
                      "threshold": cfg.spike_threshold, "warmup": cfg.spike_warmup, "action": cfg.spike_action,
                      "act_on_weighting": cfg.spike_act_on_weighting, "small_mask_ratio": cfg.spike_small_mask_ratio},
            "sinks": self.sink_status,
            "metrics": {
                "train/loss": "sum of weighted losses / sum of normalizers over the logging window (what the optimiser sees)",
                "train/ce": "unweighted cross-entropy per masked token",
                "train/bucket_XX/loss": "weighted CE per masked token (w * CE) of sequences whose r is in the bucket",
                "train/bucket_XX/ce": "unweighted CE per masked token in the bucket",
                "train/bucket_XX/contribution": "the bucket's part of train/loss (contributions add up to it)",
                "train/weighting_var_explained": "fraction of the across-sequence spread of w*CE explained by the weights alone",
            },
        }
        if run_config is not None:
            meta["config"] = run_config
        write_json_atomic(os.path.join(self.dir, "run_meta.json"), meta)

    # ------------------------------------------------------------------ recording (local)
    def record_micro_batch(self, *, mask_ratio: torch.Tensor, t: torch.Tensor, weight: torch.Tensor,
                           per_seq_weighted_sum: torch.Tensor, per_seq_unweighted_sum: torch.Tensor,
                           per_seq_masked_count: torch.Tensor, normalizer: Union[float, torch.Tensor],
                           sample_index: torch.Tensor, dataset_index: Optional[torch.Tensor] = None,
                           dataset_sample_index: Optional[torch.Tensor] = None, replay: Optional[dict] = None) -> None:
        """Add one micro-batch (per-sequence tensors of shape [B], any device). No synchronisation."""
        fields = {"mask_ratio": mask_ratio, "t": t, "weight": weight, "per_seq_weighted_sum": per_seq_weighted_sum,
                  "per_seq_unweighted_sum": per_seq_unweighted_sum, "per_seq_masked_count": per_seq_masked_count,
                  "sample_index": sample_index}
        for name, value in (("dataset_index", dataset_index), ("dataset_sample_index", dataset_sample_index)):
            if value is not None:
                fields[name] = value
        b = per_seq_weighted_sum.numel()
        for name, value in fields.items():
            if not torch.is_tensor(value):
                raise TypeError(f"record_micro_batch: {name} must be a tensor of shape [B], got {type(value).__name__}")
            if value.numel() != b:
                raise ValueError(f"record_micro_batch: {name} has {value.numel()} elements, per_seq_weighted_sum has {b} "
                                 "(one value per sequence)")
        if self._checked_step is not None and self.cfg.spike_detection == "step":
            raise RuntimeError("record_micro_batch after check_spike in the same step: call end_step(step) first")
        device = per_seq_weighted_sum.device
        if self._device is None:
            self._device = device
        if self._pending is None:
            self._pending = self.buckets.zeros(self._device)
        rows = per_sequence_rows(mask_ratio, t, weight, per_seq_weighted_sum, per_seq_unweighted_sum, per_seq_masked_count)
        index = self.buckets.index(mask_ratio.reshape(-1))
        self.buckets.table(self._pending).index_add_(0, index.to(self._device), rows.to(self._device))
        extras = self.buckets.extras(self._pending)
        extras[0] += torch.as_tensor(normalizer, dtype=torch.float64, device=self._device).sum()
        extras[1] += 1
        ids = {"micro_batch": self._micro, "bucket": index.detach()}
        for name in IDENTITY_FIELDS:
            if name in fields:
                ids[name] = fields[name].detach().reshape(-1)
        per_seq = (t, mask_ratio, weight, per_seq_weighted_sum, per_seq_unweighted_sum, per_seq_masked_count)
        for name, value in zip(SEQUENCE_FIELDS, per_seq):
            ids[name] = value.detach().reshape(-1)
        if replay:
            ids["replay"] = dict(replay)
        self._ids.append(ids)
        self._micro += 1

    def record_loss_output(self, out: Any, batch: Mapping[str, torch.Tensor], replay: Optional[dict] = None) -> None:
        """record_micro_batch from a dfm_loss output (attributes or keys) and its batch dict."""
        self.record_micro_batch(
            mask_ratio=_field(out, "mask_ratio"), t=_field(out, "t"), weight=_field(out, "weight"),
            per_seq_weighted_sum=_field(out, "per_seq_weighted_sum"), per_seq_unweighted_sum=_field(out, "per_seq_unweighted_sum"),
            per_seq_masked_count=_field(out, "per_seq_masked_count"), normalizer=_field(out, "normalizer"),
            sample_index=batch["sample_index"], dataset_index=batch.get("dataset_index"),
            dataset_sample_index=batch.get("dataset_sample_index"), replay=replay)

    def record_grad_norms(self, norms: GradNorms) -> None:
        """This step's norms (from grad_norms.compute_grad_norms); kept for the log record and any spike event."""
        self._step_grad = norms

    def record_scalars(self, **scalars: float) -> None:
        """lr, tokens_per_s, mfu, mem_*_gb, ... (bare names get opt/, mem/ or perf/). Averaged over the logging
        window, except lr and loss_scale (last value)."""
        for name, value in scalars.items():
            if value is None:
                continue
            self._step_scalars[scalar_name(name)] = float(value)

    # ------------------------------------------------------------------ reductions (collective)
    def _reduction_device(self) -> torch.device:
        if self._device is not None:
            return self._device
        if self.distributed and dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _reduce_pending(self) -> torch.Tensor:
        vec = self._pending if self._pending is not None else self.buckets.zeros(self._reduction_device())
        if self.distributed and self.world_size > 1:
            dist.all_reduce(vec, group=self.group)
        self.num_reductions += 1
        self._pending = None
        return vec.to("cpu")

    def _is_log_step(self, step: int) -> bool:
        return step % self.log_interval == 0

    def check_spike(self, step: int) -> SpikeDecision:
        """Verdict for this step; call on every rank after the last micro-batch's backward, before optimizer.step().

        With spike_detection=step this is one all-reduce every step; with log_step it is free except on
        logging steps. A spike also all-gathers the sample identities of the step (window)."""
        if self._checked_step is not None:  # asked twice in one step: same verdict, no second reduction
            return self._decision
        if self.cfg.spike_detection == "log_step" and not self._is_log_step(step):
            return NO_SPIKE
        return self._check(step)

    def _check(self, step: int) -> SpikeDecision:
        vec = self._reduce_pending()
        self._window += vec  # the logging record sums the reduced steps: no further communication
        observed = vec if self.cfg.spike_detection == "step" else self._window
        self._checked_step = step
        summary = summarize(observed, self.buckets, "train")
        values = {"train/loss": summary["train/loss"], "train/ce": summary["train/ce"]}
        for name in self.buckets.names:
            for m in ("loss", "ce", "contribution"):
                values[f"train/{name}/{m}"] = summary[f"train/{name}/{m}"]
        verdicts = self.detector.observe(values)
        for name in self.buckets.names:
            if summary[f"train/{name}/masked_tokens"] < self.cfg.spike_min_bucket_tokens:
                for m in ("loss", "ce"):
                    v = verdicts.get(f"train/{name}/{m}")
                    if v is not None and v.fired and v.reason == "zscore":
                        v.fired, v.reason = False, "too few masked tokens to judge"
        verdict = classify(verdicts, self.buckets.names, self.small_ratio_buckets, "train")
        if not verdict.is_spike:
            self._decision = NO_SPIKE
            return self._decision
        for ids in self._ids:
            ids.setdefault("step", step)
        sequences, replay = self._gather_identities()
        acts = verdict.label == "instability" or self.cfg.spike_act_on_weighting
        action = self.cfg.spike_action if acts else "log"
        self._decision = SpikeDecision(action, verdict.label, step)
        self.spikes_total += 1
        self._w_spikes += 1
        self._w_spike_steps.append(step)

        def expected(key: str):
            v = verdicts.get(key)
            return None if v is None else [v.low, v.high]

        self._event = {
            "step": step, "time": time.time(), "label": verdict.label, "action": action, "detection": self.cfg.spike_detection,
            "loss": summary["train/loss"], "loss_expected": expected("train/loss"),
            "ce": summary["train/ce"], "ce_expected": expected("train/ce"),
            "weighting_var_explained": summary["train/weighting_var_explained"],
            "fired": [verdicts[k].as_dict() for k in verdict.fired],
            "buckets": [{
                "index": i, "name": self.buckets.name(i), "label": self.buckets.label(i),
                "mask_ratio": self.buckets.mask_ratio_range(i), "t": self.buckets.t_range(i),
                "small_ratio": i in self.small_ratio_buckets,
                **{m: summary[f"train/{self.buckets.name(i)}/{m}"]
                   for m in ("loss", "ce", "contribution", "sequences", "masked_tokens", "mean_weight")},
                **{f"{m}_expected": expected(f"train/{self.buckets.name(i)}/{m}") for m in ("loss", "ce", "contribution")},
            } for i in verdict.buckets],
            "sequences": sequences,
            "replay": replay,
        }
        return self._decision

    def _gather_identities(self):
        """Every sequence of the observed step(s) on every rank, as plain lists (one all_gather_object)."""
        local_seqs, local_replay = [], []
        for ids in self._ids:
            cols = {k: v.tolist() for k, v in ids.items() if torch.is_tensor(v)}
            n = len(cols["sample_index"])
            for j in range(n):
                row = {"step": ids["step"], "rank": self.rank, "micro_batch": ids["micro_batch"], "row": j}
                for k in IDENTITY_FIELDS + SEQUENCE_FIELDS + ("bucket",):
                    if k in cols:
                        row[k] = cols[k][j]
                local_seqs.append(row)
            if "replay" in ids:
                local_replay.append({"step": ids["step"], "rank": self.rank, "micro_batch": ids["micro_batch"], **ids["replay"]})
        if self.distributed and self.world_size > 1:
            gathered: List[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, (local_seqs, local_replay), group=self.group)
            local_seqs = [row for seqs, _ in gathered for row in seqs]
            local_replay = [r for _, rep in gathered for r in rep]
        return json_safe(local_seqs), json_safe(local_replay)

    # ------------------------------------------------------------------ end of step
    def end_step(self, step: int, *, skipped: Optional[bool] = None, force_log: bool = False) -> Optional[Dict[str, Any]]:
        """Close the step (collective). Returns the flat log record on logging steps (step % log_interval == 0,
        or force_log, e.g. the last step), else None. ``skipped`` defaults to the spike decision's skip_step.

        Pass the same step number as to check_spike (the step being completed, counting from 1); the
        verdict of check_spike applies to the next end_step whatever its number."""
        log_now = force_log or self._is_log_step(step)
        for ids in self._ids:  # log_step detection keeps a whole window of identities: remember each one's step
            ids.setdefault("step", step)
        if self._checked_step is None and (self.cfg.spike_detection == "step" or log_now):
            self._check(step)  # the engine did not ask before optimizer.step(): judge now (nothing can be skipped)
        elif self._pending is not None and log_now:
            raise RuntimeError("record_micro_batch after check_spike in the same step: call end_step(step) first")
        decision = self._decision
        was_skipped = decision.skip if skipped is None else bool(skipped)
        self._w_steps += 1
        if was_skipped:
            self._w_skipped += 1
            self.skipped_total += 1
        if self._step_grad is not None:
            self._w_grads.append(self._step_grad)
        for k, v in self._step_scalars.items():
            self._w_scalars.setdefault(k, []).append(v)
        if self._event is not None:
            self._finish_event(was_skipped)
        record = None
        if log_now:
            record = self._build_record(step)
            self._write(record)
            self._reset_window()
        if self.cfg.spike_detection == "step" or log_now:
            self._ids = []
            self._micro = 0
        self._checked_step = None
        self._decision = NO_SPIKE
        self._step_grad = None
        self._step_scalars = {}
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

    def _reset_window(self) -> None:
        self._window = self.buckets.zeros("cpu")
        self._w_steps = 0
        self._w_skipped = 0
        self._w_spikes = 0
        self._w_spike_steps: List[int] = []
        self._w_grads: List[GradNorms] = []
        self._w_scalars: Dict[str, List[float]] = {}
        self._w_start = time.time()

    def _ema(self, key: str, value: Optional[float]) -> Optional[float]:
        if value is None or not math.isfinite(value):
            return self.ema.get(key)
        d = self.cfg.ema_decay
        self.ema[key] = value if key not in self.ema else d * self.ema[key] + (1.0 - d) * value
        return self.ema[key]

    def _build_record(self, step: int) -> Dict[str, Any]:
        now = time.time()
        rec: Dict[str, Any] = {"kind": "train", "step": step, "time": now}
        summary = summarize(self._window, self.buckets, "train")
        rec.update(summary)
        for key in ["train/" + m for m in _EMA_METRICS] + [f"train/{b}/{m}" for b in self.buckets.names for m in _EMA_METRICS]:
            rec[f"{key}_ema"] = self._ema(key, summary[key])
        rec["train/steps"] = self._w_steps
        rec["train/skipped_steps"] = self._w_skipped
        rec["spikes/count"] = self._w_spikes
        rec["spikes/total"] = self.spikes_total
        rec["spikes/skipped_total"] = self.skipped_total
        if self._w_spike_steps:
            rec["spikes/steps"] = list(self._w_spike_steps)
        if self._w_grads:
            n = len(self._w_grads)
            mean = {k: sum(g.as_dict()[k] for g in self._w_grads) / n for k in self._w_grads[-1].as_dict()}
            rec.update(mean)
            rec["grad/total_max"] = max(g.total for g in self._w_grads)
            rec["grad/clipped_fraction"] = sum(g.clipped for g in self._w_grads) / n
        for k, values in self._w_scalars.items():
            rec[k] = values[-1] if k in _LAST_VALUE_SCALARS else sum(values) / len(values)
        rec["perf/window_seconds"] = now - self._w_start
        return json_safe(rec)

    def _write(self, record: Dict[str, Any]) -> None:
        if not self.is_writer:
            return
        for sink in self._sinks:
            sink.write(record)

    # ------------------------------------------------------------------ validation
    def validation_points(self) -> List[Dict[str, Any]]:
        """One evaluation point per bucket: its mid mask ratio and the t the scheduler maps it to."""
        return [{"bucket": i, "name": self.buckets.name(i), "label": self.buckets.label(i), "mask_ratio": self.buckets.midpoint(i),
                 "t": self.buckets.t_of_mask_ratio(self.buckets.midpoint(i))} for i in range(len(self.buckets))]

    def log_validation(self, step: int, loss_at_t: Callable[[float], Any]) -> Dict[str, Any]:
        """Evaluate every bucket at its fixed mid mask ratio and log ``val/...`` like training (collective).

        ``loss_at_t(t)`` runs the engine's validation batches at that t and returns one dfm_loss output or a
        list of them (per_seq_weighted_sum, per_seq_unweighted_sum, per_seq_masked_count, weight, normalizer;
        mask_ratio and t default to the fixed point). It must make the same collective calls on every rank
        (under ZeRO-3 a forward is one). All buckets travel in one all-reduce.

        ``val/bucket_XX/loss`` and ``/ce`` are defined as in training. ``val/loss`` and ``val/ce`` weight each
        bucket by its width in t (t is uniform in training), so they estimate the same averages as
        ``train/loss`` and ``train/ce``: a midpoint quadrature over the buckets. A bucket whose mid ratio masks
        no token of the validation batches has a null CE and is left out of the quadrature."""
        points = self.validation_points()
        n = len(self.buckets)
        vec: Optional[torch.Tensor] = None
        for p in points:
            outs = loss_at_t(p["t"])
            for out in (outs if isinstance(outs, (list, tuple)) else [outs]):
                ws = _field(out, "per_seq_weighted_sum")
                if ws is None:
                    raise ValueError("log_validation: loss_at_t must return dfm_loss outputs with per_seq_weighted_sum")
                b = ws.numel()
                full = lambda v: torch.full((b,), float(v), dtype=torch.float64, device=ws.device)  # noqa: E731
                mask_ratio = _field(out, "mask_ratio")
                t = _field(out, "t")
                rows = per_sequence_rows(mask_ratio if mask_ratio is not None else full(p["mask_ratio"]),
                                         t if t is not None else full(p["t"]), _field(out, "weight"), ws,
                                         _field(out, "per_seq_unweighted_sum"), _field(out, "per_seq_masked_count"))
                if vec is None:  # the bucket statistics, then one normalizer sum per bucket
                    vec = torch.zeros(self.buckets.vector_size + n, dtype=torch.float64, device=ws.device)
                main = vec[: self.buckets.vector_size]
                self.buckets.table(main)[p["bucket"]] += rows.to(vec.device).sum(0)
                normalizer = torch.as_tensor(_field(out, "normalizer"), dtype=torch.float64, device=vec.device).sum()
                self.buckets.extras(main)[0] += normalizer
                self.buckets.extras(main)[1] += 1
                vec[self.buckets.vector_size + p["bucket"]] += normalizer
        if vec is None:
            vec = torch.zeros(self.buckets.vector_size + n, dtype=torch.float64, device=self._reduction_device())
        if self.distributed and self.world_size > 1:
            dist.all_reduce(vec, group=self.group)
        self.num_reductions += 1
        vec = vec.cpu()
        main, per_bucket_normalizer = vec[: self.buckets.vector_size], vec[self.buckets.vector_size:].tolist()
        rec: Dict[str, Any] = {"kind": "val", "step": step, "time": time.time()}
        summary = summarize(main, self.buckets, "val")
        rec.update({k: v for k, v in summary.items() if not k.endswith(("/mean_t", "/mean_mask_ratio"))})
        table = self.buckets.table(main).tolist()
        num_w = num_u = den_n = den_m = 0.0
        for p in points:
            i, row = p["bucket"], table[p["bucket"]]
            rec[f"val/{p['name']}/mask_ratio"] = p["mask_ratio"]
            rec[f"val/{p['name']}/t"] = p["t"]
            seqs = row[COL["sequences"]]
            if seqs <= 0 or row[COL["masked_tokens"]] <= 0:
                continue
            lo, hi = self.buckets.t_range(i)
            width = hi - lo
            num_w += width * row[COL["weighted_sum"]] / seqs
            num_u += width * row[COL["unweighted_sum"]] / seqs
            den_n += width * per_bucket_normalizer[i] / seqs
            den_m += width * row[COL["masked_tokens"]] / seqs
        rec["val/loss"] = num_w / den_n if den_n > 0 else None
        rec["val/ce"] = num_u / den_m if den_m > 0 else None
        rec = json_safe(rec)
        self._write(rec)
        return rec

    # ------------------------------------------------------------------ checkpoint state, shutdown
    def state_dict(self) -> Dict[str, Any]:
        """EMAs, detector windows and counters, so a resumed run continues the same statistics."""
        return {"ema": dict(self.ema), "detector": self.detector.state_dict(), "spikes_total": self.spikes_total,
                "skipped_total": self.skipped_total, "bucket_edges": list(self.buckets.edges)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if list(state.get("bucket_edges", self.buckets.edges)) != list(self.buckets.edges):
            log.warning("telemetry: bucket edges changed since the checkpoint; per-bucket EMAs and detector windows restart")
            state = {k: v for k, v in state.items() if k not in ("ema", "detector")}
        self.ema = dict(state.get("ema", {}))
        if "detector" in state:
            self.detector.load_state_dict(state["detector"])
        self.spikes_total = int(state.get("spikes_total", 0))
        self.skipped_total = int(state.get("skipped_total", 0))

    def close(self) -> None:
        if self._event is not None:  # a spike whose step never ended (the engine stopped right away)
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

    @staticmethod
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
