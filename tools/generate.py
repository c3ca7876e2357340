#!/usr/bin/env python
"""Generate (or infill) text with a megadfm model: Euler DFM solver, confidence or threshold unmasking.

    python tools/generate.py --model-dir runs/x/export --prompt "def fibonacci(n):" --max-new-tokens 64
    python tools/generate.py --model-dir DIR --prompt "def f(x):\\n" --suffix "\\n    return y\\n" --max-new-tokens 16
    python tools/generate.py --model-dir DIR --prompt "a" --prompt "bb" --method confidence --block-length 32 --json
    python tools/generate.py --model-dir runs/sft_tiny_cpu --chat "Write the body of ..." --method confidence
    python tools/generate.py --model-dir DIR --batch-file prompts.jsonl --method threshold --threshold 0.9 \\
        --block-length 32 --output completions.jsonl

--batch-file reads one JSON object per line: "prompt" (text), optional "suffix" (infill) and
"max_new_tokens" (default --max-new-tokens); rows are generated --batch-size at a time (ragged
prompts and budgets in one batch; a row that reaches EOS stops costing compute) and written as
JSONL (--output, default stdout): the input fields plus "completion", "tokens", "new_tokens"
and "finished", in input order. The run's totals go to stderr.

--model-dir is any megadfm source, loaded as tools/evaluate.py loads it (megadfm.eval.models.load_dfm):
a model folder (config.yaml + model.safetensors), a training run / checkpoints/ / step directory
(newest complete checkpoint, any ZeRO stage), a megadfm HF export (tools/convert_megadfm_to_hf.py)
or an init folder (tools/convert_hf_to_megadfm.py; no run config: the default DFM conventions).
The tokenizer is a local folder (--tokenizer, default: the one recorded with the source); nothing
is fetched from the network. Prints each completion, then new tokens (prompt, suffix, EOS and what
follows it excluded), forward passes (full-sequence and block-only) and new tokens/s; --json
prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from megadfm.eval.models import load_dfm  # noqa: E402
from megadfm.dfm.sampler import generate  # noqa: E402
from megadfm.dfm.sampler_config import SamplerConfig  # noqa: E402
from megadfm.dfm.sampling import SAMPLER_METHODS  # noqa: E402
from megadfm.tokens import ENDOFTEXT_TOKEN_ID  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="A model folder (config.yaml + model.safetensors), a training run dir / checkpoint (newest complete checkpoint, any ZeRO stage), a megadfm HF export or an init folder.")
    p.add_argument("--tokenizer", default=None, help="Local HF tokenizer folder (default: the source's: data.tokenizer of its config.yaml, the export's own, the init folder's tokenizer/).")
    p.add_argument("--prompt", action="append", default=None,
                   help="Prompt text; repeat for a batch (prompts may differ in length). Backslash escapes (\\n) are decoded.")
    p.add_argument("--chat", action="append", default=None, metavar="MESSAGE",
                   help="A user message, wrapped in the tokenizer folder's chat template exactly as preprocess_data.py "
                        "--chat wraps a training prompt; repeat for a batch. Sampling stops at <|im_end|>, and the reply "
                        "is printed without it and without the template's empty think block. Backslash escapes are decoded.")
    p.add_argument("--system", default=None, help="--chat: a system message before every user message.")
    p.add_argument("--chat-template", default=None, metavar="FILE",
                   help="--chat: a Jinja chat template file instead of the tokenizer folder's own.")
    p.add_argument("--batch-file", default=None,
                   help="JSONL of requests ({\"prompt\", optional \"suffix\", \"max_new_tokens\"}; text taken as is) instead of --prompt.")
    p.add_argument("--batch-size", type=int, default=16, help="--batch-file: rows per generate call.")
    p.add_argument("--output", default=None, help="--batch-file: write the JSONL here (default: stdout).")
    p.add_argument("--suffix", action="append", default=None,
                   help="Infill: text after the generated middle; once for all prompts or once per prompt.")
    p.add_argument("--max-new-tokens", type=int, default=64, help="Tokens to generate per prompt (the middle, for infill).")
    p.add_argument("--method", choices=SAMPLER_METHODS.keys(), default="euler", help="Sampler method (megadfm/dfm/sampling/).")
    p.add_argument("--steps", type=int, default=32,
                   help="Solver steps from t = 0 to 1 (threshold method: the most steps per block).")
    p.add_argument("--time-grid", choices=["uniform", "scheduler"], default="uniform", help="Time grid of the steps.")
    p.add_argument("--confidence", choices=["probability", "margin", "entropy"], default="probability",
                   help="Confidence score of the confidence sampler.")
    p.add_argument("--block-length", type=int, default=0,
                   help="confidence / threshold methods: semi-autoregressive block length (0 = one block).")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="threshold method (fixed mode): unmask every position of the block with confidence >= this, in [0, 1].")
    p.add_argument("--threshold-mode", choices=["fixed", "factor"], default="fixed",
                   help="threshold method: fixed threshold, or Fast-dLLM's factor rule.")
    p.add_argument("--threshold-factor", type=float, default=1.0, help="threshold method, factor mode: the factor (> 0).")
    p.add_argument("--cache", choices=["none", "prefix", "dual"], default="none",
                   help="confidence / threshold methods: K/V cache per block (Fast-dLLM style). none is the exact sampler; "
                        "prefix and dual are APPROXIMATE for a bidirectional model (the cached K/V are those of the block's "
                        "first step and go stale as it is decoded): fewer full-sequence forwards, possibly different tokens.")
    p.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature (0 = greedy).")
    p.add_argument("--top-k", type=int, default=0, help="Top-k filter (0 = off).")
    p.add_argument("--top-p", type=float, default=1.0, help="Nucleus filter (1 = off).")
    p.add_argument("--eos-token-id", type=int, default=None,
                   help=f"Stop before this token (default: <|endoftext|> = {ENDOFTEXT_TOKEN_ID}; with --chat the template's "
                        "end-of-turn token, <|im_end|>).")
    p.add_argument("--no-stop-at-eos", action="store_true", help="Return all max-new-tokens tokens, EOS included.")
    p.add_argument("--seed", type=int, default=0, help="Sampler seed.")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="Device to run on.")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="Override the model dtype (default: the config's; bf16 checkpoints run fine in fp32 on CPU).")
    p.add_argument("--json", action="store_true", help="Print one JSON object (completions and speed) instead of text.")
    return p.parse_args(argv)


def _unescape(text: str) -> str:
    return text.encode("utf-8").decode("unicode_escape") if "\\" in text else text


def read_batch_file(path: str, default_new_tokens: int) -> List[Dict[str, Any]]:
    """The requests of a --batch-file, checked: every error names the line and the field."""
    requests = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise SystemExit(f"{where}: not a JSON object ({err})") from err
            if not isinstance(item, dict):
                raise SystemExit(f"{where}: expected a JSON object, got {type(item).__name__}")
            unknown = set(item) - {"prompt", "suffix", "max_new_tokens"}
            if unknown:
                raise SystemExit(f"{where}: unknown field(s) {sorted(unknown)}; allowed: prompt, suffix, max_new_tokens")
            if not isinstance(item.get("prompt"), str):
                raise SystemExit(f"{where}: field 'prompt' must be a string, got {item.get('prompt')!r}")
            if item.get("suffix") is not None and not isinstance(item["suffix"], str):
                raise SystemExit(f"{where}: field 'suffix' must be a string or null, got {item['suffix']!r}")
            budget = item.get("max_new_tokens", default_new_tokens)
            if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
                raise SystemExit(f"{where}: field 'max_new_tokens' must be a positive integer, got {budget!r}")
            requests.append({"prompt": item["prompt"], "suffix": item.get("suffix"), "max_new_tokens": budget})
    if not requests:
        raise SystemExit(f"{path}: no requests (one JSON object per line)")
    return requests


def sampler_config(args: argparse.Namespace, eos: int = ENDOFTEXT_TOKEN_ID) -> SamplerConfig:
    """The sampler the flags describe; ``eos`` is the stop token unless --eos-token-id names one."""
    eos = args.eos_token_id if args.eos_token_id is not None else eos
    return SamplerConfig(method=args.method, steps=args.steps, time_grid=args.time_grid, confidence=args.confidence,
                         block_length=args.block_length, threshold=args.threshold, threshold_mode=args.threshold_mode,
                         threshold_factor=args.threshold_factor, cache=args.cache, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, eos_token_id=None if args.no_stop_at_eos else eos, seed=args.seed)


def speed_line(s: Dict[str, Any], label: str) -> str:
    return (f"--- {s['new_tokens']} new tokens (prompt, suffix and post-EOS excluded), {s['steps']} steps, "
            f"{s['nfe_full']} full + {s['nfe_block']} block forward passes ({s['forward_rows']} rows), "
            f"{s['seconds']:.3f} s, {s['tokens_per_second']:.1f} new tokens/s ({label})")


def run_batch_file(args: argparse.Namespace, model, dfm, pad_token_id, tokenizer, cfg: SamplerConfig, device) -> int:
    requests = read_batch_file(args.batch_file, args.max_new_tokens)
    if args.batch_size <= 0:
        raise SystemExit(f"--batch-size must be positive, got {args.batch_size}")
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    totals = {k: 0 for k in ("steps", "model_evals", "nfe_full", "nfe_block", "forward_rows", "new_tokens",
                             "decoded_positions")}
    seconds = 0.0
    try:
        for lo in range(0, len(requests), args.batch_size):
            chunk = requests[lo: lo + args.batch_size]
            infill = any(r["suffix"] is not None for r in chunk)
            result = generate(model, [tokenizer.encode(r["prompt"]) for r in chunk], [r["max_new_tokens"] for r in chunk],
                              cfg, dfm,
                              suffixes=[tokenizer.encode(r["suffix"] or "") for r in chunk] if infill else None,
                              pad_token_id=pad_token_id)
            for r, tokens, finished in zip(chunk, result.tokens, result.finished):
                row = {**r, "completion": tokenizer.decode(tokens), "tokens": tokens, "new_tokens": len(tokens),
                       "finished": finished}
                out.write(json.dumps(row) + "\n")
            out.flush()
            for k in totals:
                totals[k] += result.summary()[k]
            seconds += result.seconds
    finally:
        if out is not sys.stdout:
            out.close()
    summary = {**totals, "seconds": round(seconds, 4), "tokens_per_second": round(totals["new_tokens"] / max(seconds, 1e-9), 2)}
    print(speed_line(summary, f"{len(requests)} rows, {args.method}, {device}"), file=sys.stderr)
    return 0


def run_chat(args: argparse.Namespace, loaded, device) -> int:
    """--chat: the evaluation's chat path (megadfm.eval.models.EvalModel.chat_prompt_ids), one batch."""
    loaded.chat_template = args.chat_template
    encoder = loaded.chat_encoder()
    cfg = sampler_config(args, eos=encoder.end_of_turn_id)
    messages = [_unescape(m) for m in args.chat]
    prompt_ids = [loaded.chat_prompt_ids(m, args.system) for m in messages]
    result = generate(loaded.model, prompt_ids, args.max_new_tokens, cfg, loaded.dfm, pad_token_id=loaded.pad_token_id)
    replies = [encoder.reply(tokens) for tokens in result.tokens]
    if args.json:
        rows = [{"chat": m, "system": args.system, "reply": r, "tokens": result.tokens[i],
                 "new_tokens": len(result.tokens[i]), "finished": result.finished[i]}
                for i, (m, r) in enumerate(zip(messages, replies))]
        print(json.dumps({"results": rows, **result.summary(), "sampler": asdict(cfg), "device": str(device),
                          "chat_template": {"source": encoder.template.source, "sha256": encoder.template.sha256}}))
        return 0
    for i, (m, r) in enumerate(zip(messages, replies)):
        status = "" if result.finished[i] else f" (no {encoder.end_of_turn} within {args.max_new_tokens} tokens)"
        print(f"=== [{i}] user ===\n{m}\n=== [{i}] assistant{status} ===\n{r}")
    print(speed_line(result.summary(), f"chat, {args.method}, {device}"))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    given = [flag for flag, value in (("--prompt", args.prompt), ("--chat", args.chat), ("--batch-file", args.batch_file))
             if value is not None]
    if len(given) != 1:
        raise SystemExit(f"give one of --prompt (repeatable), --chat (repeatable) or --batch-file; got {given or 'none'}")
    if args.suffix is not None and args.prompt is None:
        raise SystemExit("--suffix goes with --prompt; in a --batch-file give each row a \"suffix\" field")
    if (args.system is not None or args.chat_template is not None) and args.chat is None:
        raise SystemExit("--system and --chat-template go with --chat")
    device = torch.device(args.device)
    cfg = sampler_config(args)
    # one loader for every source kind (the evaluation's): model, tokenizer (with <|mask|>), DFM conventions, pad id
    loaded = load_dfm(args.model_dir, cfg, tokenizer=args.tokenizer, device=args.device, dtype=args.dtype)
    model, tokenizer, dfm, pad_token_id = loaded.model, loaded.tokenizer, loaded.dfm, loaded.pad_token_id
    if args.batch_file is not None:
        return run_batch_file(args, model, dfm, pad_token_id, tokenizer, cfg, device)
    if args.chat is not None:
        return run_chat(args, loaded, device)
    prompts = [_unescape(p) for p in args.prompt]
    suffixes = None
    if args.suffix is not None:
        if len(args.suffix) not in (1, len(prompts)):
            raise SystemExit(f"--suffix given {len(args.suffix)} times for {len(prompts)} prompts: give it once or once per prompt")
        suffixes = [_unescape(s) for s in (args.suffix * len(prompts) if len(args.suffix) == 1 else args.suffix)]
    prompt_ids = [tokenizer.encode(p) for p in prompts]
    suffix_ids = [tokenizer.encode(s) for s in suffixes] if suffixes is not None else None
    result = generate(model, prompt_ids, args.max_new_tokens, cfg, dfm, suffixes=suffix_ids, pad_token_id=pad_token_id)
    completions = [tokenizer.decode(tokens) for tokens in result.tokens]
    if args.json:
        rows = [{"prompt": p, "suffix": suffixes[i] if suffixes else None, "completion": c, "tokens": result.tokens[i],
                 "new_tokens": len(result.tokens[i]), "finished": result.finished[i]}
                for i, (p, c) in enumerate(zip(prompts, completions))]
        print(json.dumps({"results": rows, **result.summary(), "sampler": asdict(cfg), "device": str(device)}))
        return 0
    for i, (p, c) in enumerate(zip(prompts, completions)):
        tail = suffixes[i] if suffixes else ""
        print(f"=== [{i}] ===\n{p}{c}{tail}")
    print(speed_line(result.summary(), f"{args.method}, {device}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
