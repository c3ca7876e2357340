#!/usr/bin/env bash
# The one-call GPU check, on a GPU machine with PyTorch, Triton and transformers and no network:
#
#   bash bench/gpu_check.sh              # install the bundle, run stages a-d, write $OUT/gpu_check.json + .log
#   bash bench/gpu_check.sh --dry-run    # check the bundle (artifacts/gpu_wheels) and print the plan; no GPU needed
#   bash bench/gpu_check.sh --help       # every option (stage budgets, --out, --bundle, --stages, ...)
#
# The bundle is built beforehand, on a machine with network, by bash bench/gpu_wheels.sh. This script
# only picks the interpreter ($PYTHON, else python3: the machine's own, with its torch) and hands over
# to bench/gpu_check.py, which pip-installs the wheels into a temporary --target folder, puts it and
# the repo on PYTHONPATH, and runs the stages under their time budgets (docs/GPU_CHECK.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python || true)}
[ -n "$PY" ] || { echo "gpu_check.sh: no python3 on PATH (set PYTHON)" >&2; exit 2; }
exec "$PY" bench/gpu_check.py "$@"
