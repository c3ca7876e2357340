"""tools/loss_dashboard.py on the JSONL of a short real training run: one self-contained HTML file with no
external URL, rendered by headless Chromium without console errors, PNG charts that are not blank, and a
run still in progress (partial last line) read without complaint."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import zlib

import pytest

from megadfm.report import PNG_CHARTS, STATIC_FILES, load_run, static_text
from megadfm.training.telemetry.config import TelemetryConfig
from megadfm.training.telemetry.sinks import JsonlSink
from tests.conftest import REPO
from tests.training.test_telemetry_e2e import run_tiny_training

TOOL = os.path.join(REPO, "tools", "loss_dashboard.py")
CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason="headless Chromium missing: apt-get install chromium (Debian) to test the rendered page")
EXTERNAL = [re.compile(p, re.I) for p in (r"https?:", r"\bsrc\s*=\s*[\"']?//", r"\bhref\s*=\s*[\"']?//", r"url\(\s*[\"']?//",
                                          r"@import", r"<link\b", r"<iframe\b", r"\bwww\.")]


def decode_png(data: bytes):
    """(width, height, channels, pixel bytes) of an 8-bit non-interlaced PNG, with zlib and struct only."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and interlace == 0 and color in (0, 2, 4, 6), header
    bpp = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    raw, stride = zlib.decompress(idat), width * bpp
    out, prev = bytearray(), bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride) if kind else ():
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += line
        prev = line
    return width, height, bpp, bytes(out)


def luminance_std(png: bytes) -> float:
    width, height, bpp, px = decode_png(png)
    lum = px[0::bpp] if bpp < 3 else [(r * 3 + g * 6 + b) // 10 for r, g, b in zip(px[0::bpp], px[1::bpp], px[2::bpp])]
    mean = sum(lum) / len(lum)
    return (sum((v - mean) ** 2 for v in lum) / len(lum)) ** 0.5


def chromium(*args, profile) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, env=dict(os.environ, HOME=str(profile)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real tiny training run with one corrupted batch (an instability spike) and two validation passes."""
    path = tmp_path_factory.mktemp("dashboard-run")
    cfg = TelemetryConfig(wandb="disabled", log_spaced_low_buckets=2, spike_window=30, spike_warmup=10, spike_action="skip_step",
                          spike_min_bucket_tokens=16)
    run_tiny_training(str(path), steps=30, corrupt_steps=[24], cfg=cfg, log_interval=3, eval_interval=15)
    # the run is "still going": a writer was interrupted mid-line
    with open(path / "telemetry" / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"kind": "train", "step": 33, "train/lo')
    return path


def test_help():
    out = subprocess.run([sys.executable, TOOL, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage:" in out.stdout and "--png" in out.stdout and "RUN_DIR" in out.stdout


def test_reader_tolerates_a_run_in_progress(run_dir, tmp_path):
    run = load_run(str(run_dir))
    assert [r["step"] for r in run["train"]] == list(range(3, 31, 3))
    assert [r["step"] for r in run["val"]] == [15, 30] and len(run["spikes"]) == 1
    assert any("partial last line" in n for n in run["notes"])
    # a writer that resumes after the partial line starts on a fresh line and nothing is lost
    copy = tmp_path / "metrics.jsonl"
    copy.write_bytes((run_dir / "telemetry" / "metrics.jsonl").read_bytes())
    sink = JsonlSink(str(copy))
    sink.write({"kind": "train", "step": 33, "train/loss": 1.0})
    sink.close()
    lines = copy.read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 33 and lines[-2].endswith('"train/lo')


def test_html_is_self_contained_and_labels_buckets(run_dir, tmp_path):
    out = tmp_path / "report.html"
    proc = subprocess.run([sys.executable, TOOL, str(run_dir), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "partial last line" in proc.stdout
    page = out.read_text(encoding="utf-8")
    for pattern in EXTERNAL:
        assert not pattern.search(page), f"external reference {pattern.pattern!r} in the report"
    assert page.count("<script") == 2 and '<script type="application/json" id="run-data">' in page
    # the static script and style sheet are inlined whole, not referenced
    assert "function exportPngs(done)" in page and static_text("dashboard.js") in page and static_text("dashboard.css") in page
    assert not re.search(r"<script\b[^>]*\bsrc\s*=|<link\b", page, re.I)
    for name in STATIC_FILES:
        for pattern in EXTERNAL:
            assert not pattern.search(static_text(name)), f"external reference {pattern.pattern!r} in static/{name}"
    data = json.loads(re.search(r'id="run-data">(.*?)</script>', page, re.S).group(1))
    assert data["meta"]["buckets"][0]["label"].startswith("r∈[0, 0.00464) t∈(0.99536, 1]")
    assert data["train"]["steps"][-1] == 30 and data["spikes"][0]["step"] == 24


@needs_chromium
def test_renders_in_headless_chromium_without_errors(run_dir, tmp_path):
    out = tmp_path / "report.html"
    subprocess.run([sys.executable, TOOL, str(run_dir), "-o", str(out), "--png"], check=True, capture_output=True, text=True)
    # the page's own self-check writes RENDER_OK only if every chart rendered and no script error happened
    proc = chromium("--dump-dom", out.as_uri(), profile=tmp_path / "profile")
    check = re.search(r'id="selfcheck">([^<]*)<', proc.stdout)
    assert check and check.group(1).startswith("RENDER_OK"), (check.group(1) if check else proc.stdout[-2000:])
    counts = dict(kv.split("=") for kv in check.group(1).split()[1:])
    assert int(counts["charts"]) >= 9 and counts["spikes"] == "1" and counts["steps"] == "10"
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, "browser console output:\n" + "\n".join(console)
    # clicking through is wired: the spike details (with sample identities) are rendered for the first spike
    assert "Spike at step 24" in proc.stdout and "sample identities" in proc.stdout
    # a screenshot of the page is not blank
    shot = tmp_path / "page.png"
    chromium("--window-size=800,600", f"--screenshot={shot}", out.as_uri(), profile=tmp_path / "profile2")
    assert luminance_std(shot.read_bytes()) > 10
    # --png wrote every main chart, each with real content
    for name in PNG_CHARTS:
        png = (tmp_path / f"report_{name}.png").read_bytes()
        width, height, _, _ = decode_png(png)
        assert width >= 400 and height >= 200, name
    assert luminance_std((tmp_path / "report_lr.png").read_bytes()) > 5


def test_png_without_chromium_is_a_clear_error(run_dir, tmp_path):
    env = dict(os.environ, PATH="/nonexistent", CHROMIUM="")
    proc = subprocess.run([sys.executable, TOOL, str(run_dir), "-o", str(tmp_path / "r.html"), "--png"], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 2 and "apt-get install chromium" in proc.stderr and "--chromium" in proc.stderr
