#!/usr/bin/env python
"""Render a run's loss telemetry as ONE self-contained HTML page (no network, no CDN, inline JS + SVG).

    python tools/loss_dashboard.py runs/tiny -o report.html
    python tools/loss_dashboard.py runs/tiny -o report.html --png      # also report_loss.png, report_heatmap.png, ...

Reads RUN_DIR/telemetry/metrics.jsonl, spikes.jsonl and run_meta.json as written by megadfm's
Telemetry. Works on a run still in progress (a partial last line is ignored and reported). The page
shows per-bucket loss curves (weighted and unweighted), a step x bucket heatmap, gradient norms by
parameter group with the clip threshold, learning rate, tokens/s, validation per bucket, and spike
markers whose details (what fired, expected range, buckets, grad norms, the batch's sample
identities) open on hover/click. Buckets are named by mask-ratio range and t range.

--png rasterizes the main charts with headless Chromium (Debian: apt-get install chromium; or
--chromium PATH / $CHROMIUM); nothing else is needed.
"""

from __future__ import annotations

import argparse
import base64
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megadfm.report import PNG_CHARTS, load_run, render_html  # noqa: E402

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
                  "--mute-audio", "--hide-scrollbars", "--force-device-scale-factor=1"]


def find_chromium(explicit: Optional[str] = None) -> Optional[str]:
    """--chromium, then $CHROMIUM, then the usual names on PATH."""
    for candidate in [explicit, os.environ.get("CHROMIUM")] + [shutil.which(n) for n in CHROMIUM_NAMES]:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def run_chromium(chromium: str, args: List[str], timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Headless Chromium with a throwaway profile and no network-facing background services."""
    with tempfile.TemporaryDirectory(prefix="megadfm-chromium-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
        env = dict(os.environ, HOME=profile)  # keeps Chromium's own caches out of the user's home
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def file_url(path: str, fragment: str = "") -> str:
    return pathlib.Path(path).absolute().as_uri() + (f"#{fragment}" if fragment else "")


def export_pngs(html_path: str, out_prefix: str, chromium: str) -> Dict[str, str]:
    """Let the page rasterize its charts (#png mode) and collect the PNG data URLs from the dumped DOM."""
    proc = run_chromium(chromium, ["--virtual-time-budget=20000", "--window-size=1280,2000", "--dump-dom", file_url(html_path, "png")])
    dom = proc.stdout
    if "png=done" not in dom:
        check = re.search(r'id="selfcheck">([^<]*)<', dom)
        raise RuntimeError(f"Chromium did not finish rasterizing the charts ({check.group(1) if check else 'no self-check in the DOM'}); "
                           f"exit code {proc.returncode}; stderr tail:\n{proc.stderr[-2000:]}")
    written = {}
    for name, data in re.findall(r'<pre[^>]*\bid="png-([a-z_]+)"[^>]*>data:image/png;base64,([A-Za-z0-9+/=]+)</pre>', dom):
        path = f"{out_prefix}_{name}.png"
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(base64.b64decode(data))
        os.replace(tmp, path)
        written[name] = path
    return written


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="run directory (training.output_dir) holding telemetry/, or a telemetry/ folder itself")
    p.add_argument("-o", "--output", default=None, help="HTML file to write (default: RUN_DIR/telemetry/report.html)")
    p.add_argument("--title", default="", help="page title (default: 'megadfm loss dashboard: <run name>')")
    p.add_argument("--max-points", type=int, default=3000,
                   help="keep at most about this many logging steps per series (spike steps are always kept); default 3000")
    p.add_argument("--png", action="store_true",
                   help=f"also write the main charts as PNG images next to the HTML (<name>_<chart>.png for {', '.join(PNG_CHARTS)}); "
                        "needs headless Chromium")
    p.add_argument("--png-dir", default=None, help="folder for the PNG images (default: next to the HTML file)")
    p.add_argument("--chromium", default=None, help="Chromium/Chrome executable for --png (default: $CHROMIUM, then chromium on PATH)")
    args = p.parse_args(argv)

    try:
        run = load_run(args.run_dir)
    except FileNotFoundError as e:
        print(f"loss_dashboard: {e}", file=sys.stderr)
        return 2
    out = args.output or os.path.join(args.run_dir, "telemetry", "report.html")
    chromium = None
    if args.png:
        chromium = find_chromium(args.chromium)
        if chromium is None:
            print("loss_dashboard: --png needs headless Chromium to rasterize the charts, and none was found "
                  f"(looked at --chromium, $CHROMIUM and {', '.join(CHROMIUM_NAMES)} on PATH). Install it (Debian/Ubuntu: "
                  "apt-get install chromium) or pass --chromium PATH; the HTML report itself needs nothing.", file=sys.stderr)
            return 2
    page = render_html(run, args.title, args.max_points)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, out)
    last = run["train"][-1]["step"] if run["train"] else None
    print(f"read {len(run['train'])} training records (last step {last}), {len(run['val'])} validation records, "
          f"{len(run['spikes'])} spike events from {os.path.abspath(args.run_dir)}")
    for note in run["notes"]:
        print(f"note: {note}")
    print(f"wrote {out} ({os.path.getsize(out) / 1024:.0f} KiB)")
    if args.png:
        stem = os.path.splitext(os.path.basename(out))[0]
        prefix = os.path.join(args.png_dir or os.path.dirname(os.path.abspath(out)), stem)
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        try:
            written = export_pngs(out, prefix, chromium)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"loss_dashboard: --png failed: {e}", file=sys.stderr)
            return 1
        for name, path in written.items():
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
