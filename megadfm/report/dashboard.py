"""The loss dashboard: a loaded run (see run_reader.load_run) -> one self-contained HTML page (inline JS + SVG).

No network, no CDN, no external URL anywhere in the file: the page template, its CSS and its script are
package files under megadfm/report/static/, read at render time and inlined; the data is embedded as
JSON (every ``<``, ``>``, ``&`` and ``://`` escaped); the charts are SVG strings built by the inline
script. The script only builds strings and DOM nodes and loads nothing: keep static/ free of URL-looking
text, or the page stops being self-contained. The page names every bucket by its mask-ratio range and
its t range. Its Evaluation panel charts every ``eval/<task>/<metric>`` key of the ``kind: eval``
records, with the ``_stderr`` sibling as error bars; its SFT panel the response-length distribution
(``train/response_tokens/*``, static/sft_panel.js). Opened with ``#png`` in the URL, the page also
rasterizes each chart (``data-png`` containers) to a PNG data URL in ``<pre class="png-out">``
elements, which tools/loss_dashboard.py --png collects through headless Chromium's --dump-dom.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from importlib import resources
from typing import Any, Dict, List

PNG_CHARTS = ("loss", "bucket_loss", "bucket_ce", "heatmap", "grad_norms", "lr", "tokens_per_s")

STATIC_FILES = ("dashboard.html", "dashboard.css", "dashboard.js", "sft_panel.js")


def static_text(name: str) -> str:
    """One of STATIC_FILES, read through importlib.resources so it is found in an installed wheel too."""
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def _columns(records: List[dict], max_points: int, keep_steps: set) -> Dict[str, Any]:
    """Columnar numeric series, decimated to about max_points records (spike steps and the last record are kept)."""
    if len(records) > max_points > 0:
        stride = math.ceil(len(records) / max_points)
        records = [r for i, r in enumerate(records) if i % stride == 0 or r["step"] in keep_steps or i == len(records) - 1]
    keys = sorted({k for r in records for k, v in r.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "time")})
    cols = {k: [r.get(k) if isinstance(r.get(k), (int, float)) and math.isfinite(r.get(k)) else None for r in records] for k in keys}
    return {"steps": [int(r["step"]) for r in records], "cols": cols}


def _eval_columns(records: List[dict], max_points: int) -> Dict[str, Any]:
    """_columns of the eval records, plus a column of nulls for every eval/ key that is never a number.

    _columns keeps only numeric keys; an eval key that is always null (a likelihood task has no NFE, a
    score whose stderr is unknown) must still reach the page, which lists it as n/a and reads a
    ``_stderr`` sibling as the mark of a score (a fraction).
    """
    out = _columns(records, max_points, set())
    for key in sorted({k for r in records for k in r if k.startswith("eval/")} - set(out["cols"])):
        out["cols"][key] = [None] * len(out["steps"])
    return out


def build_payload(run: Dict[str, Any], title: str, max_points: int = 3000, max_sequences: int = 2000) -> Dict[str, Any]:
    spike_steps = {int(e["step"]) for e in run["spikes"] if isinstance(e.get("step"), (int, float))}
    spikes = []
    for e in run["spikes"]:
        e = dict(e)
        seqs = e.get("sequences") or []
        if len(seqs) > max_sequences:
            e["sequences"], e["sequences_truncated"] = seqs[:max_sequences], len(seqs)
        spikes.append(e)
    return {"title": title, "run_dir": run["run_dir"], "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "meta": run["meta"],
            "train": _columns(run["train"], max_points, spike_steps), "val": _columns(run["val"], max_points, set()),
            # a run dict built before evaluation existed (no "eval" entry) renders with an empty panel
            "eval": _eval_columns(run.get("eval", []), max_points), "spikes": spikes, "notes": run["notes"]}


def _embed_json(obj: Any) -> str:
    """JSON safe inside <script>: no '<', '>', '&' (so no '</script>' or '<!--') and no '://' (no URL-looking text)."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace("://", ":\\/\\/"))


def render_html(run: Dict[str, Any], title: str = "", max_points: int = 3000) -> str:
    title = title or f"megadfm loss dashboard: {os.path.basename(run['run_dir'].rstrip(os.sep))}"
    payload = build_payload(run, title, max_points)
    template, css, js, sft_js = (static_text(name) for name in STATIC_FILES)
    # one script, the panel first: its variables are set before dashboard.js's last lines call render()
    js = sft_js + "\n" + js
    # The data goes in last, so that no placeholder-looking text inside it is ever substituted.
    return (template.replace("__TITLE__", html.escape(title)).replace("__CSS__", css).replace("__JS__", js)
            .replace("__DATA__", _embed_json(payload)))
