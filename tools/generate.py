#!/usr/bin/env python
"""Generate (or infill) text with a megadfm model: Euler DFM solver or confidence-based unmasking.

    python tools/generate.py --model-dir runs/x/export --prompt "def fibonacci(n):" --max-new-tokens 64
    python tools/generate.py --model-dir DIR --prompt "def f(x):\\n" --suffix "\\n    return y\\n" --max-new-tokens 16
    python tools/generate.py --model-dir DIR --prompt "a" --prompt "bb" --method confidence --block-length 32 --json

--model-dir holds config.yaml (a MegaDFMConfig dump: the model shape and the DFM conventions it
was trained with, shift and scheduler included) and model.safetensors (megadfm parameter names).
The tokenizer is a local folder (--tokenizer, default: the config's data.tokenizer); nothing is
fetched from the network. Prints each completion, then steps, model evaluations and tokens/s;
--json prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from megadfm.data.tokenizer import load_tokenizer  # noqa: E402
from megadfm.dfm.model_loading import load_model_dir  # noqa: E402
from megadfm.dfm.sampler import generate  # noqa: E402
from megadfm.dfm.sampler_config import SamplerConfig  # noqa: E402
from megadfm.dfm.sampling import SAMPLER_METHODS  # noqa: E402
from megadfm.tokens import ENDOFTEXT_TOKEN_ID  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="A model folder (config.yaml + model.safetensors), or a training run dir / checkpoint (newest complete checkpoint, any ZeRO stage).")
    p.add_argument("--tokenizer", default=None, help="Local HF tokenizer folder (default: data.tokenizer of config.yaml).")
    p.add_argument("--prompt", action="append", required=True,
                   help="Prompt text; repeat for a batch (prompts may differ in length). Backslash escapes (\\n) are decoded.")
    p.add_argument("--suffix", action="append", default=None,
                   help="Infill: text after the generated middle; once for all prompts or once per prompt.")
    p.add_argument("--max-new-tokens", type=int, default=64, help="Tokens to generate per prompt (the middle, for infill).")
    p.add_argument("--method", choices=SAMPLER_METHODS.keys(), default="euler", help="Sampler method (megadfm/dfm/sampling/).")
    p.add_argument("--steps", type=int, default=32, help="Solver steps from t = 0 to 1.")
    p.add_argument("--time-grid", choices=["uniform", "scheduler"], default="uniform", help="Time grid of the steps.")
    p.add_argument("--confidence", choices=["probability", "margin", "entropy"], default="probability",
                   help="Confidence score of the confidence sampler.")
    p.add_argument("--block-length", type=int, default=0, help="Confidence sampler: semi-autoregressive block length (0 = off).")
    p.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature (0 = greedy).")
    p.add_argument("--top-k", type=int, default=0, help="Top-k filter (0 = off).")
    p.add_argument("--top-p", type=float, default=1.0, help="Nucleus filter (1 = off).")
    p.add_argument("--eos-token-id", type=int, default=ENDOFTEXT_TOKEN_ID, help="Stop before this token (<|endoftext|> by default).")
    p.add_argument("--no-stop-at-eos", action="store_true", help="Return all max-new-tokens tokens, EOS included.")
    p.add_argument("--seed", type=int, default=0, help="Sampler seed.")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="Device to run on.")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="Override the model dtype (default: the config's; bf16 checkpoints run fine in fp32 on CPU).")
    p.add_argument("--json", action="store_true", help="Print one JSON object (completions and speed) instead of text.")
    return p.parse_args(argv)


def _unescape(text: str) -> str:
    return text.encode("utf-8").decode("unicode_escape") if "\\" in text else text


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    model, run_cfg = load_model_dir(args.model_dir, device, args.dtype)
    tokenizer = load_tokenizer(args.tokenizer or run_cfg.data.tokenizer, mask_token_id=run_cfg.model.mask_token_id)
    prompts = [_unescape(p) for p in args.prompt]
    suffixes = None
    if args.suffix is not None:
        if len(args.suffix) not in (1, len(prompts)):
            raise SystemExit(f"--suffix given {len(args.suffix)} times for {len(prompts)} prompts: give it once or once per prompt")
        suffixes = [_unescape(s) for s in (args.suffix * len(prompts) if len(args.suffix) == 1 else args.suffix)]
    cfg = SamplerConfig(method=args.method, steps=args.steps, time_grid=args.time_grid, confidence=args.confidence,
                        block_length=args.block_length, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        eos_token_id=None if args.no_stop_at_eos else args.eos_token_id, seed=args.seed)
    prompt_ids = [tokenizer.encode(p) for p in prompts]
    suffix_ids = [tokenizer.encode(s) for s in suffixes] if suffixes is not None else None
    result = generate(model, prompt_ids, args.max_new_tokens, cfg, run_cfg.dfm, suffixes=suffix_ids,
                      pad_token_id=run_cfg.data.pad_token_id)
    completions = [tokenizer.decode(tokens) for tokens in result.tokens]
    if args.json:
        rows = [{"prompt": p, "suffix": suffixes[i] if suffixes else None, "completion": c, "tokens": result.tokens[i],
                 "finished": result.finished[i]} for i, (p, c) in enumerate(zip(prompts, completions))]
        print(json.dumps({"results": rows, **result.summary(), "sampler": asdict(cfg), "device": str(device)}))
        return 0
    for i, (p, c) in enumerate(zip(prompts, completions)):
        tail = suffixes[i] if suffixes else ""
        print(f"=== [{i}] ===\n{p}{c}{tail}")
    s = result.summary()
    print(f"--- {s['new_tokens']} new tokens, {s['steps']} steps, {s['model_evals']} model evaluations, "
          f"{s['seconds']:.3f} s, {s['tokens_per_second']:.1f} tokens/s ({args.method}, {device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
