#!/usr/bin/env python
"""Convert a local Hugging Face Qwen3 (or CoDA) folder into a megadfm init folder (training.init_from).

    python tools/convert_hf_to_megadfm.py --hf /models/Qwen3-1.7B --out artifacts/init/qwen3_1p7b
    python tools/convert_hf_to_megadfm.py --hf DIR --out OUT --time-conditioning adaln_single --tokenizer artifacts/tokenizer/qwen3

Reads config.json (model_type qwen3, or CoDA: Salesforce's bidirectional Qwen3 diffusion LM, imported with
bidirectional attention and its trained mask row; any other model_type is refused with the supported list)
and the weights (model.safetensors, safetensors shards with
model.safetensors.index.json, or pytorch_model*.bin), checks every name and shape against the one
HF <-> megadfm table (megadfm/conversion/name_map.py) before writing anything, then streams the
tensors one at a time into OUT (a 1.7B model never sits in memory twice):

  OUT/model.safetensors (or shards + index)   megadfm parameter names, the source dtype kept
  OUT/megadfm_model.yaml                      the ModelConfig the weights were written for
  OUT/tokenizer/                              the tokenizer with <|mask|> (from the HF folder or --tokenizer)
  OUT/megadfm_conversion.json                 source, config, parameter count, mapped/added/dropped keys, sha256 per file

Changes: the mask token's embedding row becomes the mean of the rows before it; time conditioning
is added with zero modulation outputs, so the converted model computes exactly the pretrained
function (the time MLP gets a seeded normal init so t can be learned). OUT is written under a
temporary name and renamed when complete: a failure leaves nothing under OUT. No network access.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megadfm.conversion.cli import parse_output_args, run_tool  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf", required=True, metavar="DIR", help="Local HF Qwen3 model folder (config.json + weights).")
    p.add_argument("--out", required=True, metavar="DIR", help="Output init folder (must not exist unless --force).")
    p.add_argument("--time-conditioning", choices=["adaln", "adaln_single", "none"], default="adaln",
                   help="How t enters the model (ModelConfig.time_conditioning); must match the training config. Default: adaln.")
    p.add_argument("--time-embedding-dim", type=int, default=256,
                   help="Width of the sinusoidal embedding of t (ModelConfig.time_embedding_dim). Default: 256.")
    p.add_argument("--tokenizer", metavar="DIR", default=None,
                   help="Local HF tokenizer folder to save (with <|mask|>) into OUT/tokenizer. Default: the tokenizer "
                        "files of --hf; if it has none, OUT gets no tokenizer (said clearly in the log and metadata).")
    p.add_argument("--mask-token-id", type=int, default=None,
                   help="Id of <|mask|> (default: config.json's mask_token_id, else 151669, Qwen3's first free id).")
    p.add_argument("--mask-row", choices=["auto", "mean", "keep"], default="auto",
                   help="Embedding row of the mask token: mean of the rows before it, or keep the checkpoint's. auto "
                        "(default): keep when config.json has a mask_token_id (a megadfm export), else mean.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the time MLP's normal init. Default: 0.")
    p.add_argument("--max-shard-size", default="5GB",
                   help="Largest output weight file (e.g. 5GB, 500MB, 2GiB); bigger models are sharded with an index. Default: 5GB.")
    return parse_output_args(p, argv)  # + --force, --no-progress


def main(argv=None) -> int:
    args = parse_args(argv)
    from megadfm.conversion.hf_import import convert_hf_to_megadfm

    return run_tool("convert_hf_to_megadfm", convert_hf_to_megadfm, args, hf_dir=args.hf, out_dir=args.out,
                    time_conditioning=args.time_conditioning, tokenizer=args.tokenizer, mask_token_id=args.mask_token_id,
                    mask_row=args.mask_row, time_embedding_dim=args.time_embedding_dim, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
