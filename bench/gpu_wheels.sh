#!/usr/bin/env bash
# Build the GPU bundle for bench/gpu_check.sh on a CPU machine WITH network (PyPI), into one git-ignored
# folder (default artifacts/gpu_wheels; layout and checks in bench/gpu_bundle.py):
#   - the DeepSpeed wheel, built here from its sdist with DS_BUILD_OPS=0 (no compiled op: ZeRO and the
#     launcher are Python; megadfm uses torch's AdamW), against this checkout's torch (--no-build-isolation);
#   - liger-kernel, and the dependencies a torch + transformers machine lacks, at this checkout's
#     versions: pure wheels as py3-none-any, compiled ones (pydantic-core, psutil, msgpack) as
#     cp312 manylinux x86_64 wheels for the GPU machine's Python 3.12;
#   - a preprocessed corpus of CPython standard-library code (tools/preprocess_data.py, .bin/.idx);
#   - the Qwen3 tokenizer folder (artifacts/tokenizer/qwen3; `make tokenizer` builds it).
# MANIFEST.json is written last (sizes, sha256), so an interrupted build is recognisably incomplete.
# Total: under 60 MB (checked). Re-running replaces the folder.
#
#   bash bench/gpu_wheels.sh [--out DIR] [--max-documents N] [--python PY] [--python-version 3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=artifacts/gpu_wheels
MAX_DOCS=0
PY=${PYTHON:-.venv/bin/python}
PYVER=3.12
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; echo "options: --out DIR (default $OUT), --max-documents N (stdlib files; default 0: all of them), --python PY (default $PY), --python-version X.Y (the GPU machine's; default $PYVER)"; }
while [ $# -gt 0 ]; do
    case $1 in
        --out) OUT=$2; shift 2 ;;
        --max-documents) MAX_DOCS=$2; shift 2 ;;
        --python) PY=$2; shift 2 ;;
        --python-version) PYVER=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_wheels.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
TOKENIZER=artifacts/tokenizer/qwen3
[ -f "$TOKENIZER/tokenizer.json" ] || { echo "gpu_wheels.sh: $TOKENIZER/tokenizer.json missing: run 'make tokenizer' first" >&2; exit 1; }
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CACHE_DIR=${PIP_CACHE_DIR:-$PWD/.cache/pip}
T0=$SECONDS
mkdir -p "$(dirname "$OUT")"
STAGE=$(mktemp -d "${OUT%/}.building-XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/wheels" "$STAGE/data" "$STAGE/tokenizer"

CP=cp${PYVER/./}
echo "== wheels (target: Python $PYVER, manylinux2014 x86_64)"
PLATFORM_ARGS=(--only-binary=:all: --python-version "$PYVER" --implementation cp --abi "$CP"
               --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
"$PY" bench/gpu_bundle.py requirements | while read -r kind req; do
    case $kind in
        sdist)
            echo "-- $req: wheel built from the sdist, DS_BUILD_OPS=0"
            DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-binary :all: --no-build-isolation \
                -w "$STAGE/wheels" "$req" ;;
        pure|binary|compiled)  # a pure wheel matches any platform, so one set of target tags serves all three
            "$PY" -m pip download --quiet --no-deps "${PLATFORM_ARGS[@]}" -d "$STAGE/wheels" "$req" ;;
        *) echo "gpu_wheels.sh: unknown kind $kind for $req" >&2; exit 1 ;;
    esac
    echo "   $kind $req"
done

echo "== corpus: CPython standard-library files (tests excluded) -> $STAGE/data/stdlib"
STDLIB=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$PY" tools/preprocess_data.py --input "$STDLIB" --glob '**/*.py' \
    --exclude 'site-packages/*' 'test/*' '*/test/*' 'tests/*' '*/tests/*' 'idlelib/*' --tokenizer "$TOKENIZER" \
    --append-eod --output-prefix "$STAGE/data/stdlib" --workers 2 --no-progress \
    $([ "$MAX_DOCS" -gt 0 ] && echo --max-documents "$MAX_DOCS")
TOKENS=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["tokens"])' "$STAGE/data/stdlib_summary.json" 2>/dev/null || echo "")

echo "== tokenizer"
cp "$TOKENIZER"/* "$STAGE/tokenizer/"

"$PY" bench/gpu_bundle.py manifest "$STAGE" --python-version "$PYVER" ${TOKENS:+--corpus-tokens "$TOKENS"}
"$PY" bench/gpu_bundle.py check "$STAGE"
rm -rf "$OUT"
mv "$STAGE" "$OUT"
trap - EXIT
echo "== $OUT: $(du -sh "$OUT" | cut -f1) on disk, ${TOKENS:-?} corpus tokens, $((SECONDS - T0)) s"
ls -la "$OUT/wheels"
