#!/usr/bin/env python
"""Build an offline instruction set from the CPython standard library: "write the body of this function".

    python tools/build_stdlib_instructions.py --out data/stdlib_sft
    python tools/preprocess_data.py --chat --input data/stdlib_sft/train.jsonl \\
        --tokenizer artifacts/tokenizer/qwen3 --output-prefix data/stdlib_sft_train --max-length 2048

Walks the standard library of the running Python (site-packages, test/, tests/ and idlelib/ left
out) and, for every module-level function or method with a docstring and a body of 3 to 40 lines
(the docstring not counted), writes one record: ``prompt`` (an instruction, the signature and the
docstring as written), ``response`` (the dedented body), ``source`` (file:line) and ``function``.
Files are split train / held-out by a hash of their relative path (about --heldout-percent of
them held out), so no file has functions on both sides. Writes OUT/train.jsonl, OUT/heldout.jsonl
and OUT/summary.json (files, functions kept, functions and files skipped with the reason), each
under a temporary name renamed when complete; the summary is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterable, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megadfm.data.stdlib_instructions import build, stdlib_root  # noqa: E402
from megadfm.io_utils import write_text_atomic  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="Output folder (created): train.jsonl, heldout.jsonl, summary.json.")
    p.add_argument("--stdlib", default=None,
                   help="Folder to walk instead of this Python's standard library (sysconfig's 'stdlib' path).")
    p.add_argument("--heldout-percent", type=float, default=10.0,
                   help="Share of files (by a hash of their relative path, not of functions) held out (default 10).")
    p.add_argument("--limit", type=int, default=None,
                   help="Read only the first N .py files of the sorted walk (small sets for tests).")
    args = p.parse_args(argv)
    if not 0 <= args.heldout_percent <= 100:
        p.error(f"--heldout-percent must be in [0, 100], got {args.heldout_percent}")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be >= 1, got {args.limit}")
    return args


def write_jsonl_atomic(path: str, records: Iterable[dict]) -> int:
    """Write ``records`` one JSON object per line under a temporary name, then rename; returns the count."""
    lines = [json.dumps(record, ensure_ascii=False) + "\n" for record in records]
    write_text_atomic(path, "".join(lines))
    return len(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    root = args.stdlib or stdlib_root()
    if not os.path.isdir(root):
        print(f"build_stdlib_instructions.py: error: {root}: not a folder", file=sys.stderr)
        return 2
    result = build(root, args.heldout_percent, args.limit)
    if not result.train and not result.heldout:
        print(f"build_stdlib_instructions.py: error: no function of the {result.files} file(s) under {root} "
              "qualifies; nothing written", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    summary_path = os.path.join(args.out, "summary.json")
    if os.path.exists(summary_path):
        os.remove(summary_path)  # written last: splits without a summary are from an unfinished run
    write_jsonl_atomic(os.path.join(args.out, "train.jsonl"), (e.to_json() for e in result.train))
    write_jsonl_atomic(os.path.join(args.out, "heldout.jsonl"), (e.to_json() for e in result.heldout))
    summary = {"tool": "tools/build_stdlib_instructions.py", "stdlib": os.path.abspath(root),
               "python": sys.version.split()[0], "heldout_percent": args.heldout_percent, "limit": args.limit,
               **result.summary()}
    write_text_atomic(summary_path, json.dumps(summary, indent=1))
    print(f"{summary['files']} files ({summary['train_files']} train, {summary['heldout_files']} held out), "
          f"{summary['functions_kept']} functions kept ({summary['train_examples']} train, "
          f"{summary['heldout_examples']} held out) -> {args.out}")
    for kind in ("skipped_functions", "skipped_files"):
        for reason, n in summary[kind].items():
            print(f"  {kind.replace('_', ' ')}: {n} {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
