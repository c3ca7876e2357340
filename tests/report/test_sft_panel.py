"""The dashboard's SFT panel, on hand-written telemetry: the response-length histogram of the whole run
(every window's bins summed) and the mean response length per window; a pre-training run says it has none."""

from __future__ import annotations

import json
import os
import re

from megadfm.report import load_run, render_html
from megadfm.training.telemetry.response_lengths import bin_labels
from tests.report.test_dashboard import needs_chromium
from tests.report.test_eval_panel import dump_dom

NO_SFT = "no SFT batches in this run"


def write_run(path, with_responses: bool) -> str:
    records = []
    for s in range(10, 60, 10):
        r = {"kind": "train", "step": s, "time": 1733040000.0 + s, "train/loss": 5.0, "train/ce": 4.0}
        if with_responses:
            hist = {label: 0.0 for label in bin_labels()}
            hist["16-31"], hist["64-127"] = 3.0, float(s // 10)
            r.update({"train/response_tokens/examples": sum(hist.values()), "train/response_tokens/mean": 40.0 + s,
                      "train/response_tokens/std": 12.5,
                      **{f"train/response_tokens/hist/{k}": v for k, v in hist.items()}})
        records.append(r)
    os.makedirs(path / "telemetry", exist_ok=True)
    (path / "telemetry" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (path / "telemetry" / "run_meta.json").write_text(json.dumps({"response_length_bins": bin_labels()}))
    return str(path)


def test_page_carries_the_response_series_and_the_section(tmp_path):
    page = render_html(load_run(write_run(tmp_path / "sft", True)))
    data = json.loads(re.search(r'id="run-data">(.*?)</script>', page, re.S).group(1))
    assert data["train"]["cols"]["train/response_tokens/hist/64-127"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert data["meta"]["response_length_bins"] == bin_labels()
    assert '<section id="response-section"><h2>Response lengths (SFT)</h2>' in page


@needs_chromium
def test_sft_charts_render_and_sum_the_bins(tmp_path):
    out = tmp_path / "report.html"
    out.write_text(render_html(load_run(write_run(tmp_path / "sft", True))), encoding="utf-8")
    dom = dump_dom(out, tmp_path / "profile")
    assert "response_charts=2" in dom
    # whole run: 5 windows x 3 examples of 16-31 tokens, 1+2+3+4+5 of 64-127; latest window mean 90 +- 12.5
    assert "examples seen <b>30</b>" in dom and "mean <b>90</b> \u00b1 12.5" in dom
    bars = dict(re.findall(r"<title>([^<]+) tokens: ([0-9.]+) examples</title>", dom))
    assert bars["16-31"] == "15" and bars["64-127"] == "15" and bars["1-7"] == "0" and len(bars) == len(bin_labels())


@needs_chromium
def test_pretraining_run_says_it_has_no_sft_batches(tmp_path):
    out = tmp_path / "report.html"
    out.write_text(render_html(load_run(write_run(tmp_path / "pre", False))), encoding="utf-8")
    dom = dump_dom(out, tmp_path / "profile")
    assert NO_SFT in dom and "response_charts=0" in dom
