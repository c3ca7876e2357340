"""Reading one run's telemetry (RUN_DIR/telemetry/{metrics.jsonl,spikes.jsonl,run_meta.json}) for the dashboard.

Reading tolerates a run still in progress: a partial last JSONL line is ignored (and reported), and a
step logged twice (a resumed run) keeps its last record.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Tuple


def telemetry_dir(run_dir: str) -> str:
    """RUN_DIR/telemetry, or RUN_DIR itself when it already is a telemetry folder."""
    sub = os.path.join(run_dir, "telemetry")
    if os.path.isfile(os.path.join(sub, "metrics.jsonl")) or not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
        return sub
    return run_dir


def read_jsonl(path: str) -> Tuple[List[dict], List[str]]:
    """Records of a JSONL file being appended to: (records, notes about lines that were skipped)."""
    if not os.path.isfile(path):
        return [], []
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    records, notes, bad = [], [], 0
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            if i == len(lines) - 1:  # no newline after it: the writer is mid-line (run in progress) or was killed
                notes.append(f"{os.path.basename(path)}: ignored a partial last line ({len(raw)} bytes; run in progress?)")
            else:
                bad += 1
            continue
        if isinstance(obj, dict):
            records.append(obj)
    if bad:
        notes.append(f"{os.path.basename(path)}: skipped {bad} malformed line(s)")
    return records, notes


def _last_per_step(records: List[dict]) -> List[dict]:
    by_step: Dict[int, dict] = {}
    for r in records:
        if isinstance(r.get("step"), (int, float)):
            by_step[int(r["step"])] = r  # a resumed run logs some steps again: the latest wins
    return [by_step[s] for s in sorted(by_step)]


def load_run(run_dir: str) -> Dict[str, Any]:
    """meta, train, val and eval records, spike events and notes of one run directory."""
    tdir = telemetry_dir(run_dir)
    if not os.path.isdir(tdir):
        raise FileNotFoundError(f"{run_dir}: no telemetry folder (expected {tdir} with metrics.jsonl, written by megadfm's Telemetry)")
    meta: Dict[str, Any] = {}
    notes: List[str] = []
    meta_path = os.path.join(tdir, "run_meta.json")
    if os.path.isfile(meta_path):
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except ValueError as e:
            notes.append(f"run_meta.json is not valid JSON ({e}); bucket labels are derived from the metrics")
    else:
        notes.append("run_meta.json is missing; bucket labels are derived from the metrics")
    records, n1 = read_jsonl(os.path.join(tdir, "metrics.jsonl"))
    spikes, n2 = read_jsonl(os.path.join(tdir, "spikes.jsonl"))
    notes += n1 + n2
    train = _last_per_step([r for r in records if r.get("kind", "train") == "train"])
    val = _last_per_step([r for r in records if r.get("kind") == "val"])
    # evaluation during training (EvaluationCallback) appends kind "eval" records with eval/<task>/<metric> keys
    evals = _last_per_step([r for r in records if r.get("kind") == "eval"])
    if not meta.get("buckets"):
        names = sorted({k.split("/")[1] for r in train[-1:] for k in r if k.startswith("train/bucket_") and k.count("/") == 2})
        meta["buckets"] = [{"index": i, "name": n, "label": n, "mask_ratio": [None, None], "t": [None, None]} for i, n in enumerate(names)]
    return {"run_dir": os.path.abspath(run_dir), "meta": meta, "train": train, "val": val, "eval": evals, "spikes": spikes, "notes": notes}
