#!/usr/bin/env bash
# Tokenize the CPython standard library (a real code corpus) with the real Qwen3 tokenizer into
# artifacts/data/stdlib_text_document.{bin,idx}. Skipped when its summary says it is up to date.
# Used by `make demo` (examples/demo.sh) and `make scale-smoke` (examples/scale_smoke.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
STDLIB=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
$PY tools/preprocess_data.py --input "$STDLIB" --glob '**/*.py' --exclude 'site-packages/*' 'test/*' 'idlelib/*' \
    --tokenizer artifacts/tokenizer/qwen3 --append-eod --output-prefix artifacts/data/stdlib --workers 2
