#!/usr/bin/env bash
# The README's main job on the embedded default: a tiny Qwen3-DFM trained on a real corpus (the
# CPython standard library, tokenized with the real Qwen3 tokenizer) with DeepSpeed ZeRO-3 on 2 CPU
# processes, then the loss dashboard, an HF export and sampling. Called by `make demo`, which has
# already built .venv and the tokenizer. Every step skips work that is already up to date: the
# preprocessing is skipped when its summary matches, training resumes from its last checkpoint (and
# does nothing when finished).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
CONFIG=examples/tiny_cpu.yaml
RUN=runs/tiny_cpu
# One OpenMP thread per rank (2 ranks on 2 cores); torch.compile is not used on CPU, and disabling dynamo
# stops DeepSpeed's optional compiled optimizers from importing inductor at start-up.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DS_ACCELERATOR=cpu TOKENIZERS_PARALLELISM=false TORCHDYNAMO_DISABLE=1

echo "== [1/5] tokenize the Python standard library (real code corpus) into artifacts/data/stdlib_text_document.{bin,idx}"
bash examples/stdlib_corpus.sh

echo "== [2/5] train the tiny DFM model: deepspeed, ZeRO-3, 2 CPU processes ($CONFIG)"
.venv/bin/deepspeed --num_accelerators 2 --master_port "${MASTER_PORT:-29517}" pretrain_dfm.py --config "$CONFIG"

echo "== [3/5] loss dashboard -> $RUN/report.html"
$PY tools/loss_dashboard.py "$RUN" -o "$RUN/report.html"

echo "== [4/5] export the last checkpoint to an HF folder -> $RUN/hf"
$PY tools/convert_megadfm_to_hf.py --ckpt "$RUN" --out "$RUN/hf" --force

echo "== [5/5] sample from the trained model (Euler and confidence samplers)"
$PY tools/generate.py --model-dir "$RUN" --prompt "def __init__(self" --max-new-tokens 32 --steps 16
$PY tools/generate.py --model-dir "$RUN" --prompt "import os\nimport " --max-new-tokens 32 --steps 16 --method confidence
echo "== done: dashboard $RUN/report.html, HF export $RUN/hf, checkpoints $RUN/checkpoints"
