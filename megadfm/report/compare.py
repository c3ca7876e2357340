"""Several runs side by side: their validation curves (the ``kind: val`` records of each run's telemetry)
as one self-contained HTML page of inline SVG (no script, no external reference), and the numbers a
comparison table needs (the step at which a run first reaches a target validation loss).

Used by the AR -> DFM experiment (examples/ar_to_dfm/run.py); any set of runs works.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from megadfm.report.run_reader import load_run

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")


@dataclass
class ValCurves:
    """One run's validation records: steps, val/loss, val/ce and the CE of every bucket (with its label)."""

    label: str
    steps: List[int]
    loss: List[Optional[float]]
    ce: List[Optional[float]]
    bucket_ce: Dict[str, List[Optional[float]]]
    bucket_labels: Dict[str, str]

    def final(self, key: str = "loss") -> Optional[float]:
        values = [v for v in getattr(self, key) if v is not None]
        return values[-1] if values else None


def val_curves(label: str, run_dir: str) -> ValCurves:
    run = load_run(run_dir)
    val = run["val"]
    names = sorted({k.split("/")[1] for r in val for k in r if k.startswith("val/bucket_") and k.endswith("/ce")})
    labels = {b["name"]: b.get("label") or b["name"] for b in run["meta"].get("buckets", [])}
    return ValCurves(label, [int(r["step"]) for r in val], [r.get("val/loss") for r in val], [r.get("val/ce") for r in val],
                     {n: [r.get(f"val/{n}/ce") for r in val] for n in names}, {n: labels.get(n, n) for n in names})


def first_step_reaching(curves: ValCurves, target: float, key: str = "loss") -> Optional[int]:
    """The first validation step whose ``key`` is at or below ``target`` (None: never)."""
    for step, value in zip(curves.steps, getattr(curves, key)):
        if value is not None and value <= target:
            return step
    return None


def _ticks(lo: float, hi: float, n: int = 5) -> List[float]:
    if hi <= lo:
        return [lo]
    step = (hi - lo) / n
    return [lo + i * step for i in range(n + 1)]


def svg_lines(title: str, series: Sequence[Tuple[str, str, List[int], List[Optional[float]]]], width: int = 460,
              height: int = 220, y_label: str = "") -> str:
    """An SVG line chart: ``series`` = [(name, colour, xs, ys)], None values skipped."""
    points = [(x, y) for _, _, xs, ys in series for x, y in zip(xs, ys) if y is not None]
    m = {"l": 56, "r": 12, "t": 26, "b": 36 + 14 * len(series)}
    pw, ph = width - m["l"] - m["r"], height - m["t"] - m["b"]
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="#fff"/>',
             f'<text x="{m["l"]}" y="16" font-size="12" font-weight="bold">{html.escape(title)}</text>']
    if not points:
        parts.append(f'<text x="{m["l"]}" y="{m["t"] + 20}" fill="#888">no validation records</text></svg>')
        return "".join(parts)
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-6)

    def px(x):
        return m["l"] + (x - x0) / (x1 - x0) * pw

    def py(y):
        return m["t"] + ph - (y - y0) / (y1 - y0) * ph

    for v in _ticks(y0, y1):
        parts.append(f'<line x1="{m["l"]}" x2="{width - m["r"]}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#eee"/>'
                     f'<text x="{m["l"] - 4}" y="{py(v) + 4:.1f}" text-anchor="end" fill="#555">{v:.3g}</text>')
    for v in _ticks(x0, x1):
        parts.append(f'<text x="{px(v):.1f}" y="{m["t"] + ph + 14}" text-anchor="middle" fill="#555">{v:.0f}</text>')
    parts.append(f'<text x="{m["l"] + pw / 2:.0f}" y="{m["t"] + ph + 28}" text-anchor="middle" fill="#555">step</text>')
    if y_label:
        parts.append(f'<text x="12" y="{m["t"] + ph / 2:.0f}" transform="rotate(-90 12 {m["t"] + ph / 2:.0f})" '
                     f'text-anchor="middle" fill="#555">{html.escape(y_label)}</text>')
    for i, (name, colour, xs, ys) in enumerate(series):
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys) if y is not None)
        parts.append(f'<polyline class="run-line" data-run="{html.escape(name)}" fill="none" stroke="{colour}" '
                     f'stroke-width="1.8" points="{pts}"/>')
        ly = m["t"] + ph + 44 + 14 * i
        parts.append(f'<line x1="{m["l"]}" x2="{m["l"] + 18}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" stroke-width="2"/>'
                     f'<text x="{m["l"] + 24}" y="{ly}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def comparison_page(title: str, curves: Sequence[ValCurves], table_html: str = "", notes: Sequence[str] = ()) -> str:
    """The HTML page: the table, val/loss of every run, then one chart per mask-ratio bucket (val CE)."""
    colour = {c.label: PALETTE[i % len(PALETTE)] for i, c in enumerate(curves)}
    charts = [svg_lines("validation loss (the DFM objective, t-quadrature over buckets)",
                        [(c.label, colour[c.label], c.steps, c.loss) for c in curves], width=940, height=300, y_label="loss")]
    buckets = sorted({b for c in curves for b in c.bucket_ce})
    for b in buckets:
        label = next((c.bucket_labels[b] for c in curves if b in c.bucket_labels), b)
        charts.append(svg_lines(f"{b}: {label} (val CE)", [(c.label, colour[c.label], c.steps, c.bucket_ce.get(b, []))
                                                          for c in curves], y_label="CE (nats)"))
    body = "".join(f"<p>{html.escape(n)}</p>" for n in notes) + table_html
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif;margin:16px 24px;color:#222}table{border-collapse:collapse;font-size:13px}"
            "td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}.grid{display:flex;flex-wrap:wrap;gap:8px}"
            "</style></head><body><h1>" + html.escape(title) + "</h1>" + body + charts[0] +
            "<h2>Validation CE per mask-ratio bucket</h2><div class=\"grid\">" + "".join(charts[1:]) + "</div></body></html>")


def html_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
