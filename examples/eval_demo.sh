#!/usr/bin/env bash
# Evaluate the `make demo` model next to an autoregressive Qwen3 of the same shape, with both DFM
# samplers at two step counts, on HumanEval, held-out stdlib infilling and the likelihood bound.
# Called by `make eval-demo` (after `make demo`). Results: runs/tiny_cpu/eval_demo/<label>/<task>.json
# and one markdown table per sampler on stdout.
#
# The AR baseline is a transformers Qwen3ForCausalLM with the demo model's shape and vocabulary, seeded
# but NOT trained (no Qwen3 weights are available offline): it is the floor a trained DFM must clear,
# labelled as such in its result files. LIMIT (default 40) sets the problems per task.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUN=runs/tiny_cpu
OUT=$RUN/eval_demo
LIMIT=${LIMIT:-40}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TORCHDYNAMO_DISABLE=1 TOKENIZERS_PARALLELISM=false
test -d "$RUN/checkpoints" || { echo "no $RUN/checkpoints: run 'make demo' first" >&2; exit 2; }

AR=$RUN/ar_baseline_untrained
if [ ! -f "$AR/config.json" ]; then
  echo "== AR baseline: an untrained Qwen3ForCausalLM with the demo model's shape -> $AR"
  $PY - "$RUN" "$AR" <<'PYEOF'
import os, shutil, sys, torch
from transformers import Qwen3ForCausalLM
from megadfm.checkpoints.source import open_source
from megadfm.conversion.hf_config import hf_config_from_model_config
from transformers import Qwen3Config
src = open_source(sys.argv[1])
cfg = Qwen3Config(**{k: v for k, v in hf_config_from_model_config(src.model_config).items() if k not in ("architectures", "model_type")})
torch.manual_seed(0)
model = Qwen3ForCausalLM(cfg)
tmp = sys.argv[2] + ".tmp"
shutil.rmtree(tmp, ignore_errors=True)
model.save_pretrained(tmp)
for name in os.listdir(src.tokenizer_dir):
    shutil.copy(os.path.join(src.tokenizer_dir, name), os.path.join(tmp, name))
os.replace(tmp, sys.argv[2])
print(f"saved {sum(p.numel() for p in model.parameters())} parameters")
PYEOF
fi

for SAMPLER in euler-16 euler-64 confidence-16 confidence-32; do
  echo "== sampler $SAMPLER"
  AR_ARGS=()
  [ "$SAMPLER" = euler-16 ] && AR_ARGS=(--ar-baseline "$AR")   # the AR model ignores the DFM sampler: evaluate it once
  $PY tools/evaluate.py --model "$RUN" "${AR_ARGS[@]}" --tasks humaneval infill likelihood --limit "$LIMIT" \
      --sampler "$SAMPLER" --out "$OUT/$SAMPLER" --no-progress
done
