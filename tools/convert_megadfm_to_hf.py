#!/usr/bin/env python
"""Export a megadfm checkpoint as a Hugging Face model folder.

    python tools/convert_megadfm_to_hf.py --ckpt runs/qwen3_1p7b_dfm --out exports/qwen3_1p7b_dfm
    python tools/convert_megadfm_to_hf.py --ckpt runs/x/checkpoints --step 2000 --out OUT --max-shard-size 2GB
    python tools/convert_megadfm_to_hf.py --ckpt artifacts/init/qwen3_1p7b --out OUT --as-qwen3

--ckpt is a run directory, its checkpoints/ directory or one step_XXXXXXXX/ directory (a DeepSpeed
checkpoint of any ZeRO stage 0-3 and any world size; the step is --step, else the newest
complete one), or a megadfm init folder (tools/convert_hf_to_megadfm.py). Writes:

  config.json                  model_type megadfm_qwen3 with auto_map -> the modeling code below
  configuration_megadfm.py, modeling_megadfm.py   self-contained (torch + transformers only)
  model.safetensors            or shards + model.safetensors.index.json above --max-shard-size
  generation_config.json       mask / eos / pad ids and megadfm's sampler defaults (dfm_sampler)
  tokenizer files              with <|mask|> (from the run config's data.tokenizer, or --tokenizer)
  megadfm_conversion.json      source, step, config, parameter count, mapped/dropped keys, sha256 per file

Load it offline with:

  model = transformers.AutoModelForMaskedLM.from_pretrained(OUT, trust_remote_code=True)
  logits = model(input_ids, t=t, attention_mask=mask).logits     # [B, L, V] fp32, <|mask|> logit -inf
  (AutoModel gives the backbone: last_hidden_state after the final norm.)

t [B] in [0, 1] is the flow-matching time (0 = all masked, 1 = clean); attention is bidirectional;
with shift_logits (config.json) the output at i predicts token i+1. The logits equal megadfm's.

--as-qwen3 writes the backbone as a plain Qwen3ForCausalLM (no code files). It is refused, with the
reason, when the time conditioning is trained (any non-zero modulation output): a Qwen3 has no t.
OUT is written under a temporary name and renamed when complete: a failure leaves nothing under OUT.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megadfm.conversion.cli import parse_output_args, run_tool  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, metavar="DIR",
                   help="Run directory, its checkpoints/ directory, a step_XXXXXXXX/ directory, or a megadfm init folder.")
    p.add_argument("--step", type=int, default=None, help="Checkpoint step to export (default: the newest complete one).")
    p.add_argument("--out", required=True, metavar="DIR", help="Output HF folder (must not exist unless --force).")
    p.add_argument("--as-qwen3", action="store_true",
                   help="Export the backbone as a plain Qwen3ForCausalLM; refused when the time conditioning is trained.")
    p.add_argument("--max-shard-size", default="2GB",
                   help="Largest weight file (e.g. 2GB, 500MB, 1GiB); above it the weights are sharded with an index. Default: 2GB.")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="Weight dtype of the export. auto (default): bfloat16 for a run with training.precision bf16, "
                        "float32 for an fp32 run (DeepSpeed's fp32 master weights), the stored dtype for an init folder.")
    p.add_argument("--tokenizer", metavar="DIR", default=None,
                   help="Local HF tokenizer folder (default: the run config's data.tokenizer, or the init folder's tokenizer/).")
    p.add_argument("--allow-other-tokenizer", action="store_true",
                   help="Ship a tokenizer whose tokenizer.json differs from the one the run was trained with (refused by default).")
    return parse_output_args(p, argv)  # + --force, --no-progress


def main(argv=None) -> int:
    args = parse_args(argv)
    from megadfm.conversion.export import export_to_hf

    # checkpoint=: a torch load error is reported with the unreadable file under --ckpt, not as a traceback
    return run_tool("convert_megadfm_to_hf", export_to_hf, args, checkpoint=args.ckpt, ckpt=args.ckpt, out_dir=args.out,
                    step=args.step, as_qwen3=args.as_qwen3, dtype=args.dtype, tokenizer=args.tokenizer,
                    allow_other_tokenizer=args.allow_other_tokenizer)


if __name__ == "__main__":
    sys.exit(main())
