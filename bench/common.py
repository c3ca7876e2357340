"""What every bench in bench/ shares: the header printed at start, ``--repeats``, the median and
spread of the repeats, ratios of medians, and the one JSON line each run writes.

The spread is the minimum and maximum of the repeats (``SPREAD``): with the 1-5 repeats a CPU bench
can afford, quartiles are not meaningful. A ratio is always the ratio of two medians; each ratio
names its numerator, denominator and metric, because the benches keep their historical directions
(time candidate/baseline in one, throughput candidate/baseline in another).

One run of a bench writes exactly one JSON line (``write_result``): it is always printed on stdout
after ``JSON_PREFIX``, and appended to the file named by $MEGADFM_BENCH_RESULTS when that is set
(bench/run_all.sh sets it and collects the lines into bench/results/LATEST.json). Fields::

    bench, baseline, candidates   bench name; the baseline's key in results; the other keys
    baseline_desc                 what the baseline is, in words
    results                       {key: {metric: {median, min, max, n, values}}}
    ratios                        [{name, value, numerator, denominator, metric}]; value =
                                  results[numerator][metric].median / results[denominator][metric].median
    spread                        "min/max"
    threads, threads_note         torch threads of the measured code, and what they are per
    cpus, load_start, load_end    os.cpu_count(); os.getloadavg() at the header and at write time
    commit, dirty                 git HEAD of the checkout (None outside a git checkout) and whether
                                  tracked files differ from it
    args, extra                   the bench's parsed arguments; bench-specific facts (checks, sizes)
    started, finished, wall_s     UTC ISO-8601 times of the header and of the write; seconds between
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

RESULTS_ENV = "MEGADFM_BENCH_RESULTS"
JSON_PREFIX = "BENCH_JSON "
SPREAD = "min/max"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Summary:
    """Median and spread (min, max) of one metric over the repeats of one variant."""

    median: float
    min: float
    max: float
    n: int
    values: Tuple[float, ...]

    def as_dict(self) -> Dict[str, Any]:
        """The JSON form: median, min, max, n and every value in measurement order."""
        return {"median": self.median, "min": self.min, "max": self.max, "n": self.n, "values": list(self.values)}

    def fmt(self, spec: str = ".3f") -> str:
        """``median [min, max]`` with ``spec`` for each number; just the median when n is 1."""
        if self.n == 1:
            return format(self.median, spec)
        return f"{self.median:{spec}} [{self.min:{spec}}, {self.max:{spec}}]"


def summarize(values: Sequence[float]) -> Summary:
    """Median, min and max of ``values`` (one per repeat); raises ValueError on no values."""
    if not values:
        raise ValueError("summarize needs at least one value")
    vals = tuple(float(v) for v in values)
    return Summary(median=statistics.median(vals), min=min(vals), max=max(vals), n=len(vals), values=vals)


@dataclass(frozen=True)
class Ratio:
    """``value`` = median of ``metric`` of ``numerator`` / the same of ``denominator``."""

    name: str
    value: float
    numerator: str
    denominator: str
    metric: str

    def as_dict(self) -> Dict[str, Any]:
        """The JSON form (every field)."""
        return {"name": self.name, "value": self.value, "numerator": self.numerator, "denominator": self.denominator,
                "metric": self.metric}


def ratio(name: str, results: Mapping[str, Mapping[str, Summary]], metric: str, numerator: str, denominator: str) -> Ratio:
    """The ratio of the medians of ``metric`` of two variants of ``results``."""
    value = results[numerator][metric].median / results[denominator][metric].median
    return Ratio(name=name, value=value, numerator=numerator, denominator=denominator, metric=metric)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_repeats_arg(parser: argparse.ArgumentParser, default: int, what: str, aliases: Sequence[str] = ()) -> None:
    """Add ``--repeats N`` (plus ``aliases``, e.g. a bench's older ``--steps``) to ``parser``;
    ``what`` says what one repeat is. The median and the min/max over the repeats are reported."""
    parser.add_argument("--repeats", *aliases, dest="repeats", type=positive_int, default=default,
                        help=f"{what}; the median and {SPREAD} over them are reported (default: {default})")


def torch_threads() -> int:
    """torch's intra-op thread count in this process (imports torch)."""
    import torch

    return torch.get_num_threads()


def git_commit() -> Tuple[Optional[str], Optional[bool]]:
    """(short HEAD, tracked files differ from it) of the repository, or (None, None) outside a git checkout."""
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return None, None
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return head.stdout.strip(), bool(dirty.stdout.strip())


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Header:
    """What ``print_header`` printed; ``write_result`` copies it into the JSON line."""

    bench: str
    baseline: str
    baseline_desc: str
    threads: int
    threads_note: str
    cpus: int
    load_start: Tuple[float, float, float]
    commit: Optional[str]
    dirty: Optional[bool]
    started: str
    t0: float = field(default_factory=time.monotonic)


def print_header(bench: str, baseline: str, baseline_desc: str, threads: int, threads_note: str = "") -> Header:
    """Print the header (bench, baseline key and description, threads, load average, CPUs, commit)
    and return it. Call it right before the first measurement: the load average is the one the
    timings meet."""
    commit, dirty = git_commit()
    header = Header(bench=bench, baseline=baseline, baseline_desc=baseline_desc, threads=threads, threads_note=threads_note,
                    cpus=os.cpu_count() or 0, load_start=os.getloadavg(), commit=commit, dirty=dirty, started=_now())
    load = " ".join(f"{x:.2f}" for x in header.load_start)
    note = f" ({threads_note})" if threads_note else ""
    rev = "not a git checkout" if commit is None else commit + (" + uncommitted changes" if dirty else "")
    print(f"# bench {bench}; baseline: {baseline} ({baseline_desc})", flush=True)
    print(f"# threads {threads}{note}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average {load} "
          f"on {header.cpus} CPUs at start; commit {rev}", flush=True)
    return header


def _append_line(path: str, line: str) -> None:
    """Append ``line`` + newline to ``path`` with one O_APPEND write, so that lines from concurrent
    writers never interleave, and fsync it (a line is either there whole or not at all)."""
    data = (line + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def write_result(header: Header, args: argparse.Namespace, results: Mapping[str, Mapping[str, Summary]],
                 ratios: Sequence[Ratio], extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Print this run's JSON line after ``JSON_PREFIX``, append it to $MEGADFM_BENCH_RESULTS when set,
    and return it as a dict. ``results`` must hold the baseline key named in ``header``."""
    if header.baseline not in results:
        raise ValueError(f"results of {header.bench} lack the baseline {header.baseline!r}: {sorted(results)}")
    record = {
        "bench": header.bench, "baseline": header.baseline, "baseline_desc": header.baseline_desc,
        "candidates": [k for k in results if k != header.baseline],
        "results": {k: {m: s.as_dict() for m, s in metrics.items()} for k, metrics in results.items()},
        "ratios": [r.as_dict() for r in ratios], "spread": SPREAD,
        "threads": header.threads, "threads_note": header.threads_note, "cpus": header.cpus,
        "load_start": list(header.load_start), "load_end": list(os.getloadavg()),
        "commit": header.commit, "dirty": header.dirty,
        "args": vars(args), "extra": dict(extra or {}),
        "started": header.started, "finished": _now(), "wall_s": round(time.monotonic() - header.t0, 3),
    }
    line = json.dumps(record, sort_keys=True, default=str)  # default=str: paths and the like in args
    print(JSON_PREFIX + line, flush=True)
    path = os.environ.get(RESULTS_ENV)
    if path:
        _append_line(path, line)
        print(f"# result appended to {path}", file=sys.stderr, flush=True)
    return record
