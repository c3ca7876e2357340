"""Reports on a run's telemetry: the self-contained HTML loss dashboard (tools/loss_dashboard.py)."""

from megadfm.report.dashboard import PNG_CHARTS, STATIC_FILES, build_payload, render_html, static_text
from megadfm.report.run_reader import load_run, read_jsonl, telemetry_dir

__all__ = ["PNG_CHARTS", "STATIC_FILES", "build_payload", "load_run", "read_jsonl", "render_html", "static_text", "telemetry_dir"]
