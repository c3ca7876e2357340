"""The AR -> DFM experiment's miniature (examples/ar_to_dfm/run.py --mini: two steps per training stage, one
process): every stage runs end to end on real parts (AR pretraining with objective ar, --as-qwen3 export loaded
by transformers, conversion, DFM runs from AR, from scratch, annealed and in block mode, infill + ELBO evaluation,
the full-vs-block comparison with sampling speed) and writes the report; a second run reuses every finished stage."""

from __future__ import annotations

import importlib.util
import os
import re

from tests.conftest import REPO


def load_driver():
    spec = importlib.util.spec_from_file_location("ar_to_dfm", os.path.join(REPO, "examples", "ar_to_dfm", "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_miniature_runs_every_stage_and_writes_the_report(tmp_path, capsys, tokenizer_dir, stdlib_prefix):
    driver = load_driver()
    work = str(tmp_path / "work")
    args = ["--mini", "--work", work, "--data", stdlib_prefix]  # the suite's 80-file corpus
    assert driver.main(args) == 0
    out = capsys.readouterr().out
    runs = ["dfm_from_ar", "dfm_scratch", "dfm_from_ar_anneal", "dfm_from_ar_block"]  # --mini skips the shift-off variant
    assert not os.path.exists(os.path.join(work, "dfm_from_ar_noshift"))
    size = driver.SIZES["mini"]
    assert driver.complete_step(os.path.join(work, "ar")) == size["ar_steps"]
    for name in runs:
        assert driver.complete_step(os.path.join(work, name)) == size["dfm_steps"]
    assert "transformers' Qwen3ForCausalLM loads" in out
    report = open(os.path.join(work, "report.md"), encoding="utf-8").read()
    for name in runs[:3]:
        assert re.search(rf"^\| {name} \| [0-9.]+ \| [0-9.]+ \|", report, re.M), report
    # the full-vs-block comparison: both runs with ELBO, infill and tokens/s at batch 1 and 2 against AR generate
    for name, mode in (("dfm_from_ar", "full"), ("dfm_from_ar_block", "block")):
        assert re.search(rf"^\| {name} \| {mode} \| [0-9.]+ \| [0-9.]+ \| .+ \| [01]\.\d{{3}} \| [0-9.]+ \([0-9.]+x, \d+ steps\) \| "
                         rf"[0-9.]+ \([0-9.]+x, \d+ steps\) \|$", report, re.M), report
    page = open(os.path.join(work, "report.html"), encoding="utf-8").read()
    assert page.count('class="run-line" data-run="dfm_scratch"') >= 2  # the loss chart and the bucket charts
    assert "://" not in page.replace("http://www.w3.org", "")  # self-contained
    # the converted init carries the AR model: DFM-from-AR starts from it, scratch does not
    assert "initialisation: megadfm init folder" in open(os.path.join(work, "dfm_from_ar.log")).read()
    assert "initialisation: from scratch" in open(os.path.join(work, "dfm_scratch.log")).read()
    assert "attention annealing: causal -> bidirectional" in open(os.path.join(work, "dfm_from_ar_anneal.log")).read()
    # a re-run reuses every stage
    assert driver.main(args) == 0
    again = capsys.readouterr().out
    assert again.count("finished earlier") == 5 and ": training " not in again
