"""Where telemetry records go: JSONL files (always), W&B (offline by default), TensorBoard (optional).

Only rank 0 creates sinks. A record is a flat dict of metric names (``train/bucket_03/loss``,
``grad/backbone``, ``opt/lr``) plus ``step``, ``time`` and ``kind`` ("train" | "val"); non-finite
numbers are written as null so every line is strict JSON (the dashboard's JSON.parse rejects NaN).
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, List, Optional

from megadfm.io_utils import write_text_atomic

log = logging.getLogger(__name__)

META_KEYS = ("step", "time", "kind")


def json_safe(obj: Any) -> Any:
    """NaN/Inf -> None, tensors and numpy scalars -> Python numbers, tuples -> lists (recursively)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, bool, int)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):  # torch tensors, numpy arrays and scalars
        return json_safe(obj.tolist())
    if hasattr(obj, "item"):
        return json_safe(obj.item())
    return str(obj)


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON to a temporary name in the same folder, fsync, rename: never a half-written file."""
    write_text_atomic(path, json.dumps(json_safe(obj), indent=1, allow_nan=False))


class JsonlSink:
    """Append-only JSON lines, flushed after every record (a crash loses at most the line being written)."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._f = open(path, "a", encoding="utf-8")
        if self._f.tell() > 0:
            self._terminate_partial_line()

    def _terminate_partial_line(self) -> None:
        # a previous run killed mid-write left no trailing newline: start our lines on a fresh one
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                self._f.write("\n")

    def write(self, record: Dict[str, Any]) -> None:
        self._f.write(json.dumps(json_safe(record), allow_nan=False, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class WandbSink:
    """W&B run (``mode`` offline/online). Keys keep their ``train/bucket_XX/...`` grouping; None values are dropped."""

    def __init__(self, run_dir: str, project: str, name: Optional[str], mode: str, config: Optional[dict]):
        import wandb  # imported only when this sink is on

        self._wandb = wandb
        os.makedirs(run_dir, exist_ok=True)
        if mode == "offline":
            _silence_wandb_telemetry()
        settings = wandb.Settings(mode=mode, console="off", quiet=True, x_disable_stats=True, x_disable_machine_info=True,
                                  disable_git=True, save_code=False, x_save_requirements=False)
        # wandb's own usage telemetry (an OpenTelemetry exporter thread) is built from the process-wide wandb.setup()
        # settings, not from init's: with only init(mode="offline") it still resolves and POSTs to the W&B host
        # (10 s timeout) at the first export / at exit. Setting the mode at setup() too turns that exporter off.
        wandb.setup(settings=settings)
        self.run = wandb.init(project=project, name=name, dir=run_dir, mode=mode, config=json_safe(config or {}), settings=settings)
        self._last_step = -1

    def write(self, record: Dict[str, Any]) -> None:
        data = {k: v for k, v in record.items() if k not in META_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v)}
        step = int(record["step"])
        if step < self._last_step:  # W&B refuses to go back in time (a resumed run): log under its own step
            data["step"] = step
            self.run.log(data)
            return
        self._last_step = step
        self.run.log(data, step=step)

    def close(self) -> None:
        self.run.finish()


def _silence_wandb_telemetry() -> None:
    """An offline run reports nothing to W&B: error reporting off in this process and in the wandb-core service.

    WANDB_ERROR_REPORTING=false makes wandb's Python telemetry recorder a no-op and starts wandb-core with
    --no-observability (its own error/usage reporting). It is an environment variable because wandb derives that
    flag from it alone, when wandb.init starts the service (after this).
    """
    os.environ["WANDB_ERROR_REPORTING"] = "false"


class TensorBoardSink:
    def __init__(self, log_dir: str):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(log_dir=log_dir)

    def write(self, record: Dict[str, Any]) -> None:
        step = int(record["step"])
        for k, v in record.items():
            if k not in META_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def tensorboard_unavailable_reason() -> Optional[str]:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return "the tensorboard package is not installed (pip install tensorboard)"
    return None


def make_metric_sinks(run_dir: str, telemetry_dir: str, wandb_mode: str, wandb_project: str, wandb_name: Optional[str],
                      tensorboard: bool, config: Optional[dict]) -> tuple:
    """(sinks, {sink name: 'on' or the reason it is off}) for rank 0."""
    sinks: List[Any] = [JsonlSink(os.path.join(telemetry_dir, "metrics.jsonl"))]
    status = {"jsonl": "on"}
    if wandb_mode == "disabled":
        status["wandb"] = "off: telemetry.wandb is disabled"
    else:
        sinks.append(WandbSink(run_dir, wandb_project, wandb_name or os.path.basename(os.path.abspath(run_dir)), wandb_mode, config))
        status["wandb"] = f"on ({wandb_mode})"
    if tensorboard:
        reason = tensorboard_unavailable_reason()
        if reason:
            log.warning("telemetry: TensorBoard sink skipped: %s", reason)
            status["tensorboard"] = f"off: {reason}"
        else:
            sinks.append(TensorBoardSink(os.path.join(telemetry_dir, "tensorboard")))
            status["tensorboard"] = "on"
    else:
        status["tensorboard"] = "off: telemetry.tensorboard is false"
    return sinks, status
