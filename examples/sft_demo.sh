#!/usr/bin/env bash
# Fine-tune the `make demo` model into a (tiny) instruction model and evaluate it on held-out instructions.
# Called by `make sft-demo`, after `make demo`. Every step skips work that is already up to date.
#   1. the stdlib instruction set: artifacts/data/stdlib_instructions/{train,heldout}.jsonl (split by file)
#   2. its training half in chat format: artifacts/data/stdlib_sft_train_chat_document.{bin,idx}
#      (examples over 384 tokens are dropped and counted in the summary)
#   3. SFT with DeepSpeed ZeRO-3 on 2 CPU processes: runs/sft_tiny_cpu (examples/sft_tiny_cpu.yaml)
#   4. evaluation on the held-out functions in chat mode (exact match, parse rate), both samplers, LIMIT problems
#   5. one chat request with tools/generate.py --chat
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
CONFIG=examples/sft_tiny_cpu.yaml
RUN=runs/sft_tiny_cpu
DATA=artifacts/data/stdlib_instructions
LIMIT=${LIMIT:-32}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DS_ACCELERATOR=cpu TOKENIZERS_PARALLELISM=false TORCHDYNAMO_DISABLE=1
test -d runs/tiny_cpu/checkpoints || { echo "no runs/tiny_cpu/checkpoints: run 'make demo' first" >&2; exit 2; }

echo "== [1/5] the stdlib instruction set -> $DATA"
if [ -f "$DATA/summary.json" ]; then echo "$DATA is built (delete it to rebuild)"; else
  $PY tools/build_stdlib_instructions.py --out "$DATA"; fi

echo "== [2/5] chat-format the training half -> artifacts/data/stdlib_sft_train_chat_document.{bin,idx}"
$PY tools/preprocess_data.py --chat --input "$DATA/train.jsonl" --tokenizer artifacts/tokenizer/qwen3 \
    --output-prefix artifacts/data/stdlib_sft_train --max-length 384 --overlong drop --no-progress

echo "== [3/5] SFT from runs/tiny_cpu: deepspeed, ZeRO-3, 2 CPU processes ($CONFIG)"
.venv/bin/deepspeed --num_accelerators 2 --master_port "${MASTER_PORT:-29518}" pretrain_dfm.py --config "$CONFIG"
$PY tools/loss_dashboard.py "$RUN" -o "$RUN/report.html"

echo "== [4/5] held-out instructions in chat mode ($LIMIT problems), the base model next to the tuned one"
for SAMPLER in euler-32 confidence-32; do
  $PY tools/evaluate.py --model runs/tiny_cpu --model "$RUN" --tasks instructions --limit "$LIMIT" \
      --instructions "$DATA/heldout.jsonl" --instructions-max-new-tokens 128 --sampler "$SAMPLER" \
      --out "$RUN/eval_instructions/$SAMPLER" --no-progress
done

echo "== [5/5] one chat request"
$PY tools/generate.py --model-dir "$RUN" --method confidence --steps 32 --max-new-tokens 64 \
    --chat "$($PY -c 'import json,sys; print(next(r["prompt"] for r in map(json.loads, open(sys.argv[1])) if "\\" not in r["prompt"]))' "$DATA/heldout.jsonl")"
echo "== done: $RUN (dashboard $RUN/report.html, results $RUN/eval_instructions)"
