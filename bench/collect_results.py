"""Collect the JSON lines of one `make bench` run into one JSON list (bench/run_all.sh's last step).

    python bench/collect_results.py RUN.jsonl bench/results/LATEST.json --expect 5

Each line of RUN.jsonl is one bench's record (bench/common.py write_result). The output is a JSON
list of those records in run order, written to a temporary file next to the destination, fsynced
and renamed over it, so a reader never sees half a file and a failed collection leaves the
previous one in place.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional


def read_records(path: str) -> List[Dict[str, Any]]:
    """The records of a JSONL file, in order; a line that is not a JSON object with a "bench" raises ValueError."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record, dict) or "bench" not in record:
                raise ValueError(f"{path}:{number}: not a bench record (a JSON object with a 'bench' field)")
            records.append(record)
    return records


def write_json_atomic(path: str, value: Any) -> None:
    """Write ``value`` as JSON to ``path`` through a fsynced temporary file in the same folder and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the result is for everyone who reads the checkout
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)  # the rename did not happen: remove the partial temporary file, then re-raise
        raise


def collect(src: str, dest: str, expect: Optional[int]) -> List[Dict[str, Any]]:
    """Read ``src``, check it holds ``expect`` records (when given) and write them as a list to ``dest``."""
    records = read_records(src)
    if expect is not None and len(records) != expect:
        names = [r["bench"] for r in records]
        raise ValueError(f"{src} holds {len(records)} bench records {names}, expected {expect} (one per bench run)")
    write_json_atomic(dest, records)
    return records


def main(argv: Optional[List[str]] = None) -> int:
    """Command line: SRC DEST [--expect N]."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="JSONL written by the benches (one line per bench run)")
    p.add_argument("dest", help="JSON list to write (replaced atomically)")
    p.add_argument("--expect", type=int, default=None, help="number of records the run must hold")
    args = p.parse_args(argv)
    records = collect(args.src, args.dest, args.expect)
    print(f"{len(records)} bench results ({', '.join(r['bench'] for r in records)}) -> {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
