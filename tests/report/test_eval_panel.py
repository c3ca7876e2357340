"""The dashboard's Evaluation panel, on hand-written telemetry (no training): kind "eval" records are read
(last record per step), embedded in the page, charted per eval/<task>/<metric> with the stderr as error
bars, and a run without them says how to get them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from megadfm.report import load_run, render_html
from tests.report.test_dashboard import EXTERNAL, TOOL, chromium, decode_png, luminance_std, needs_chromium

NO_EVAL = "no evaluation records: set eval.interval"


def eval_record(step: int, exact: float, exact_err: float) -> dict:
    return {"kind": "eval", "step": step, "time": 1733040000.0 + step,
            "eval/infill/exact_match": exact, "eval/infill/exact_match_stderr": exact_err,
            "eval/infill/parses": 0.4, "eval/infill/parses_stderr": 0.06, "eval/infill/nfe": 128, "eval/infill/tokens_per_s": 210.5,
            "eval/likelihood/nelbo_per_token": 5.1 + 1000.0 / step, "eval/likelihood/ppl_upper_bound": 164.0, "eval/likelihood/nfe": None,
            "eval/humaneval/pass@1": 0.0, "eval/humaneval/pass@1_stderr": 0.0}


def write_run(path, eval_records) -> str:
    """RUN_DIR/telemetry/metrics.jsonl with train records every 10 steps and the given eval records between them."""
    records = [{"kind": "train", "step": s, "time": 1733040000.0 + s, "train/loss": 8.0 - s / 50, "train/ce": 7.5 - s / 50,
                "opt/lr": 1e-4, "perf/tokens_per_s": 5000.0} for s in range(10, 160, 10)]
    records += [{"kind": "val", "step": 100, "val/loss": 6.0, "val/ce": 5.8}] + list(eval_records)
    os.makedirs(path / "telemetry", exist_ok=True)
    with open(path / "telemetry" / "metrics.jsonl", "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture
def eval_run(tmp_path):
    # step 100 is logged twice (a resumed run evaluates it again): the second record wins
    evals = [eval_record(50, 0.0, 0.0), eval_record(100, 0.5, 0.1), eval_record(100, 0.01, 0.01), eval_record(150, 0.03, 0.02)]
    return write_run(tmp_path / "eval-run", evals)


@pytest.fixture
def plain_run(tmp_path):
    return write_run(tmp_path / "plain-run", [])


def payload(page: str) -> dict:
    return json.loads(re.search(r'id="run-data">(.*?)</script>', page, re.S).group(1))


def test_reader_keeps_the_last_eval_record_per_step(eval_run):
    run = load_run(eval_run)
    assert [r["step"] for r in run["eval"]] == [50, 100, 150]
    assert run["eval"][1]["eval/infill/exact_match"] == 0.01
    # eval records stay out of the training and validation series
    assert len(run["train"]) == 15 and [r["step"] for r in run["val"]] == [100]
    assert not any(k.startswith("eval/") for r in run["train"] + run["val"] for k in r)


def test_page_embeds_the_eval_series_and_has_the_section(eval_run):
    page = render_html(load_run(eval_run))
    for pattern in EXTERNAL:
        assert not pattern.search(page), f"external reference {pattern.pattern!r} in the report"
    ev = payload(page)["eval"]
    assert ev["steps"] == [50, 100, 150]
    assert ev["cols"]["eval/infill/exact_match"] == [0.0, 0.01, 0.03]
    assert ev["cols"]["eval/infill/exact_match_stderr"] == [0.0, 0.01, 0.02]
    assert ev["cols"]["eval/humaneval/pass@1"] == [0.0, 0.0, 0.0] and ev["cols"]["eval/infill/nfe"] == [128, 128, 128]
    # a key that is always null still reaches the page (listed there as n/a)
    assert ev["cols"]["eval/likelihood/nfe"] == [None, None, None]
    assert '<section id="eval-section"><h2>Evaluation</h2>' in page


def test_no_eval_records_is_said(plain_run):
    page = render_html(load_run(plain_run))
    assert payload(page)["eval"] == {"steps": [], "cols": {}}
    assert NO_EVAL in page and '<section id="eval-section"><h2>Evaluation</h2>' in page


def dump_dom(page_path, profile) -> str:
    """The DOM of the page after its script ran, once its self-check says RENDER_OK and the console stayed quiet."""
    proc = chromium("--dump-dom", page_path.as_uri(), profile=profile)
    check = re.search(r'id="selfcheck">([^<]*)<', proc.stdout)
    assert check and check.group(1).startswith("RENDER_OK"), (check.group(1) if check else proc.stdout[-2000:])
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, "browser console output:\n" + "\n".join(console)
    return proc.stdout


@needs_chromium
def test_eval_charts_render_in_headless_chromium(eval_run, tmp_path):
    out = tmp_path / "report.html"
    proc = subprocess.run([sys.executable, TOOL, eval_run, "-o", str(out), "--png"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    dom = dump_dom(out, tmp_path / "profile")
    # charted: infill exact_match and parses, likelihood nelbo and ppl bound, humaneval pass@1 (NFE and tokens/s are text)
    assert "eval_charts=5" in dom
    chart = re.search(r'<div id="chart-eval-0" class="chart" data-png="eval_humaneval_pass__">(.*?)</div>', dom, re.S)
    assert chart and "<svg" in chart.group(1) and 'class="error-bar"' in chart.group(1), dom[-3000:]
    assert "infill exact_match 3.0 \u00b1 2.0 %" in dom and "likelihood nelbo_per_token 11.77" in dom
    assert '<div id="eval-latest"><table>' in dom
    # the latest-values table shows each task's NFE and tokens/s as text (the likelihood task has no NFE)
    rows = re.findall(r"<tr><td>(.*?)</td></tr>", dom)
    assert "infill</td><td>exact_match</td><td>3.0 \u00b1 2.0 %</td><td>150</td><td>128</td><td>210.5" in rows
    assert "likelihood</td><td>ppl_upper_bound</td><td>164</td><td>150</td><td>n/a</td><td>n/a" in rows
    # --png rasterized the evaluation charts too, with real content
    png = (tmp_path / "report_eval_infill_exact_match.png").read_bytes()
    width, height, _, _ = decode_png(png)
    assert width == 460 and height > 200 and luminance_std(png) > 5


@needs_chromium
def test_no_eval_records_is_said_in_the_rendered_page(plain_run, tmp_path):
    out = tmp_path / "report.html"
    out.write_text(render_html(load_run(plain_run)), encoding="utf-8")
    dom = dump_dom(out, tmp_path / "profile")
    assert f'<div id="eval-latest"><div class="empty">{NO_EVAL}</div></div><div id="eval-charts" class="eval-grid"></div>' in dom
    assert "eval_charts=0" in dom
