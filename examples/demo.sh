#!/usr/bin/env bash
# The README's main job on the embedded default: a tiny Qwen3-DFM on a real corpus, on CPU.
# Called by `make demo` (which has already built .venv and the tokenizer). Each step skips work
# that is already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
CONFIG=examples/tiny_cpu.yaml

echo "== [1/1] validate the run config $CONFIG"
$PY pretrain_dfm.py --config "$CONFIG" --print-config
