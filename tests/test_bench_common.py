"""bench/common.py (median and spread, ratios of medians, the one JSON line per run), bench/collect_results.py,
one real bench through its command line at a tiny shape, and --help on every bench. Nothing here times anything."""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys

import pytest

from bench.collect_results import collect
from bench.common import JSON_PREFIX, RESULTS_ENV, SPREAD, add_repeats_arg, print_header, ratio, summarize, write_result
from tests.conftest import REPO

RECORD_FIELDS = {"bench", "baseline", "baseline_desc", "candidates", "results", "ratios", "spread", "threads", "threads_note",
                 "cpus", "load_start", "load_end", "commit", "dirty", "args", "extra", "started", "finished", "wall_s"}


def test_summarize_reports_median_min_max_in_order():
    s = summarize([3.0, 1.0, 2.0])
    assert (s.median, s.min, s.max, s.n, s.values) == (2.0, 1.0, 3.0, 3, (3.0, 1.0, 2.0))
    assert summarize([4, 1, 3, 2]).median == 2.5  # even count: mean of the two middle values
    assert s.fmt(".1f") == "2.0 [1.0, 3.0]" and summarize([5]).fmt(".1f") == "5.0"
    assert s.as_dict() == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3, "values": [3.0, 1.0, 2.0]}
    with pytest.raises(ValueError):
        summarize([])


def test_ratio_is_of_the_medians():
    results = {"base": {"s": summarize([2.0, 4.0, 100.0])}, "cand": {"s": summarize([1.0, 2.0, 3.0])}}
    r = ratio("base/cand", results, "s", "base", "cand")
    assert r.value == 2.0 and (r.numerator, r.denominator, r.metric) == ("base", "cand", "s")


def test_repeats_flag_keeps_an_older_alias_and_refuses_zero(capsys):
    p = argparse.ArgumentParser()
    add_repeats_arg(p, 3, "timed steps", aliases=("--steps",))
    assert p.parse_args([]).repeats == 3 and p.parse_args(["--steps", "5"]).repeats == 5
    assert p.parse_args(["--repeats", "2"]).repeats == 2
    with pytest.raises(SystemExit):
        p.parse_args(["--repeats", "0"])


def test_write_result_appends_one_line_per_run_and_prints_it(tmp_path, monkeypatch, capsys):
    out = tmp_path / "results.jsonl"
    monkeypatch.setenv(RESULTS_ENV, str(out))
    header = print_header("unit", "base", "the baseline", 1, "a note")
    printed = capsys.readouterr().out
    assert "# bench unit; baseline: base (the baseline)" in printed and "load average" in printed
    results = {"base": {"s": summarize([2.0, 2.0])}, "cand": {"s": summarize([1.0, 1.0])}}
    args = argparse.Namespace(repeats=2, path=tmp_path)  # a Path: written as its string
    for _ in range(2):
        write_result(header, args, results, [ratio("base/cand", results, "s", "base", "cand")], extra={"k": 1})
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    record = json.loads(lines[0])
    assert set(record) == RECORD_FIELDS
    assert record["candidates"] == ["cand"] and record["ratios"][0]["value"] == 2.0 and record["spread"] == SPREAD
    assert record["args"] == {"repeats": 2, "path": str(tmp_path)} and record["extra"] == {"k": 1}
    assert [line[len(JSON_PREFIX):] for line in capsys.readouterr().out.splitlines()] == lines
    with pytest.raises(ValueError, match="lack the baseline"):
        write_result(header, args, {"cand": results["cand"]}, [])


def test_collect_writes_one_list_and_keeps_the_old_one_on_a_short_run(tmp_path):
    src, dest = tmp_path / "run.jsonl", tmp_path / "LATEST.json"
    src.write_text(json.dumps({"bench": "a"}) + "\n" + json.dumps({"bench": "b"}) + "\n")
    collect(str(src), str(dest), expect=2)
    assert json.loads(dest.read_text()) == [{"bench": "a"}, {"bench": "b"}]
    with pytest.raises(ValueError, match="expected 3"):
        collect(str(src), str(dest), expect=3)
    assert json.loads(dest.read_text()) == [{"bench": "a"}, {"bench": "b"}]
    assert sorted(os.listdir(tmp_path)) == ["LATEST.json", "run.jsonl"]  # no temporary file left


def test_bench_model_cli_writes_its_json_line(tmp_path):
    """bench_model.py at a toy shape, 2 repeats: the JSON line matches what it printed."""
    out = tmp_path / "results.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               **{RESULTS_ENV: str(out)})
    cmd = [sys.executable, os.path.join(REPO, "bench", "bench_model.py"), "--hidden", "64", "--layers", "1", "--heads", "2",
           "--vocab", "512", "--batch", "1", "--seq", "16", "--repeats", "2", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = out.read_text().splitlines()
    assert len(lines) == 1
    assert JSON_PREFIX + lines[0] in proc.stdout.splitlines()
    record = json.loads(lines[0])
    assert set(record) == RECORD_FIELDS and record["bench"] == "model" and record["spread"] == "min/max"
    assert record["baseline"] in record["results"] and len(record["candidates"]) == 2
    for metrics in record["results"].values():
        s = metrics["seconds_per_step"]
        assert s["n"] == 2 and len(s["values"]) == 2 and s["min"] <= s["median"] <= s["max"]
    printed = dict(re.findall(r"^  (.+?)\s{2,}[\d.]+ tokens/s .* ratio vs baseline ([\d.]+)x$", proc.stdout, re.M))
    assert len(record["ratios"]) == 2
    for r in record["ratios"]:
        num, den = (record["results"][r[k]][r["metric"]]["median"] for k in ("numerator", "denominator"))
        assert r["numerator"] == record["baseline"] and r["value"] == pytest.approx(num / den, rel=1e-12)
        assert float(printed[r["denominator"]]) == pytest.approx(r["value"], abs=0.0051)  # printed with 2 decimals
    threads = re.search(r"^# threads (\d+)", proc.stdout, re.M)
    load = re.search(r"load average ([\d.]+) ([\d.]+) ([\d.]+) on (\d+) CPUs at start", proc.stdout)
    assert threads and int(threads.group(1)) == record["threads"] == 1
    assert load and [float(x) for x in load.groups()[:3]] == [round(x, 2) for x in record["load_start"]]
    assert int(load.group(4)) == record["cpus"] == os.cpu_count()


def test_every_bench_has_help():
    scripts = sorted(glob.glob(os.path.join(REPO, "bench", "*.py")))
    assert len(scripts) >= 9
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # concurrently: two of them import torch at the top (seconds each)
    procs = {s: subprocess.Popen([sys.executable, s, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env) for s in scripts if not s.endswith("common.py")}
    for script, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "usage:" in stdout, f"{script}: {stderr[-2000:]}"
