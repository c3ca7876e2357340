#!/usr/bin/env python
"""Sampler throughput and agreement: megadfm's block samplers (exact, and with the prefix / dual caches) vs
transformers' autoregressive ``generate`` with its KV cache, in one run.

Same shape on both sides: a Qwen3DFM (random weights, or a trained one with --model-dir) and a
Qwen3ForCausalLM with identical sizes and the full 151,936-row vocabulary (random weights: it is
a speed baseline only), the same prompts, 256 new tokens, batch 1 and 16, EOS disabled so every
row produces all its tokens. Settings:

- hf_generate_ar: transformers ``generate``, greedy, KV cache (the baseline);
- exact: method confidence, cache none, one token per step (--steps; default = new tokens), blocks of --block-length;
- threshold: method threshold (fixed --threshold), blocks of --block-length, --block-steps per block at most,
  with cache none / prefix / dual.

Every DFM setting is greedy. Printed per setting: new tokens / wall second of the decoding loop
(prompt excluded; ``SampleResult.tokens_per_second``, HF: around ``generate``; the median over
--repeats runs, min/max in the JSON line), NFE as full/block forward passes (HF: prefill / cached
decode steps), the ratio of the medians to the AR baseline's of the same batch size, and the
fraction of new tokens equal to the exact sampler's at the same position. prefix and dual are
APPROXIMATIONS for a bidirectional model (megadfm/dfm/sampling/cached_forward.py). On random
weights the agreement says nothing about quality (the output says so): pass --model-dir.

    python bench/bench_sampler.py                              # random weights, hidden 256, 4 layers
    python bench/bench_sampler.py --small                      # hidden 64, 2 layers, 64 new tokens
    python bench/bench_sampler.py --model-dir runs/tiny_cpu    # a trained model (after `make demo`)
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import sysconfig
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import Summary, add_repeats_arg, print_header, ratio, summarize, write_result  # noqa: E402

if TYPE_CHECKING:  # torch and megadfm are imported where used, so that --help answers without them
    import torch

    from megadfm.dfm.config import DFMConfig
    from megadfm.dfm.sampler_config import SampleResult, SamplerConfig
    from megadfm.model import ModelConfig, Qwen3DFM


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=None,
                   help="A trained megadfm model (run dir, checkpoint or model folder) instead of random weights; "
                        "prompts are then real code (stdlib files, the run's tokenizer).")
    p.add_argument("--small", action="store_true", help="Random weights: tiny model (hidden 64, 2 layers) and 64 new tokens.")
    p.add_argument("--hidden", type=int, default=256, help="Random weights: hidden size (ignored with --small).")
    p.add_argument("--layers", type=int, default=4, help="Random weights: layers (ignored with --small).")
    p.add_argument("--new-tokens", type=int, default=256, help="New tokens per row (64 with --small).")
    p.add_argument("--prompt-len", type=int, default=16, help="Prompt tokens per row (all rows alike: one block column set).")
    p.add_argument("--batch-sizes", default="1,16", help="Comma-separated batch sizes.")
    p.add_argument("--steps", default=None,
                   help="Comma-separated total steps of the exact (confidence) sampler; default: new tokens (one per "
                        "step). Agreement is measured against the first.")
    p.add_argument("--block-length", type=int, default=32, help="Semi-AR block length of every DFM setting.")
    p.add_argument("--block-steps", type=int, default=None, help="threshold: most steps per block (default: --block-length).")
    p.add_argument("--threshold", type=float, default=0.9, help="threshold: the fixed confidence threshold.")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 by default: on a shared 2-core machine a 2nd thread makes timings erratic).")
    add_repeats_arg(p, 1, "timed runs of every setting (after a warm-up)")
    p.add_argument("--device", default="cpu", help="Device (the comparison is defined on CPU; cuda works too).")
    p.add_argument("--block-diffusion", type=int, default=None, metavar="BLOCK_SIZE",
                   help="Random weights: a block-diffusion model (dfm.mode: block) with blocks of BLOCK_SIZE; a --model-dir "
                        "trained in block mode is one already. Block mode decodes in the model's blocks: the settings are "
                        "then threshold with cache none (exact) and prefix (exact too, the block cache).")
    return p.parse_args()


def random_model_config(args: argparse.Namespace) -> ModelConfig:
    """The random-weights model's config (--small, or --hidden / --layers)."""
    from megadfm.model import ModelConfig

    hidden, layers = (64, 2) if args.small else (args.hidden, args.layers)
    heads = max(2, hidden // 64)
    return ModelConfig(hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=max(1, heads // 2), head_dim=64, max_position_embeddings=4096,
                       time_conditioning="adaln", kernels="auto")


def hf_model(cfg: ModelConfig):
    """transformers' Qwen3ForCausalLM of the same shape, random weights (the speed baseline)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hf_cfg = Qwen3Config(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                         num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.resolved_head_dim,
                         max_position_embeddings=cfg.max_position_embeddings, rope_theta=cfg.rope_theta,
                         tie_word_embeddings=cfg.tie_word_embeddings, torch_dtype=torch.float32)
    torch.manual_seed(0)
    return Qwen3ForCausalLM(hf_cfg).eval()


def code_prompts(tokenizer, count: int, length: int) -> List[List[int]]:
    """``count`` prompts of exactly ``length`` tokens: the start of evenly spaced stdlib files (deterministic per Python)."""
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    if not files:
        raise SystemExit(f"no stdlib .py files under {sysconfig.get_paths()['stdlib']} to take prompts from")
    prompts = []
    for i in range(len(files)):
        path = files[(i * 7919) % len(files)]  # spread over the alphabet, no repeats (7919 is prime)
        with open(path, encoding="utf-8", errors="replace") as f:
            ids = tokenizer.encode(f.read(20000))
        if len(ids) >= length:
            prompts.append(ids[:length])
        if len(prompts) == count:
            return prompts
    raise SystemExit(f"only {len(prompts)} stdlib files have {length} tokens; lower --prompt-len or the batch size")


def ar_run(model, prompts: torch.Tensor, new_tokens: int, repeats: int) -> List[float]:
    """New tokens / s of each of ``repeats`` timed greedy ``generate`` runs (after a short warm-up)."""
    import torch

    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                  eos_token_id=None, pad_token_id=0, attention_mask=torch.ones_like(prompts))
    with torch.inference_mode():
        model.generate(prompts[:, :4], **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4,
                                          "attention_mask": torch.ones_like(prompts[:, :4])})  # warm-up
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = model.generate(prompts, **kwargs)
            rates.append(prompts.shape[0] * new_tokens / (time.perf_counter() - start))
    if out.shape[1] != prompts.shape[1] + new_tokens:
        raise RuntimeError(f"transformers generate returned {out.shape[1] - prompts.shape[1]} new tokens, expected {new_tokens}")
    return rates


def dfm_run(model, prompts: List[List[int]], new_tokens: int, cfg: SamplerConfig, dfm: DFMConfig,
            repeats: int) -> Tuple[List[float], SampleResult]:
    """Tokens / s of each of ``repeats`` timed runs of one setting (after a short warm-up), and the first run's result."""
    from megadfm.dfm.sampler import generate

    generate(model, [p[:4] for p in prompts], 4, replace(cfg, steps=2, block_length=0), dfm)  # warm-up
    outs = [generate(model, prompts, new_tokens, cfg, dfm) for _ in range(repeats)]
    return [o.tokens_per_second for o in outs], outs[0]


def agreement(a: SampleResult, b: SampleResult) -> float:
    """Fraction of new positions where both runs chose the same token (EOS is off, so rows are full length)."""
    pairs = [(x, y) for ra, rb in zip(a.tokens, b.tokens) for x, y in zip(ra, rb)]
    return sum(x == y for x, y in pairs) / max(len(pairs), 1)


def settings(args: argparse.Namespace, new_tokens: int, dfm: DFMConfig) -> List[Tuple[str, SamplerConfig]]:
    """(name, config) of every DFM setting: the exact sampler per --steps, then threshold with each cache (block mode:
    the model's blocks, caches none and prefix, both exact)."""
    from megadfm.dfm.sampler_config import SamplerConfig

    block_mode = dfm.mode == "block"
    steps = [int(s) for s in args.steps.split(",")] if args.steps else [new_tokens]
    greedy = dict(temperature=0.0, eos_token_id=None, block_length=0 if block_mode else args.block_length)
    out = [(f"exact_conf_s{s}", SamplerConfig(method="confidence", steps=s, cache="none", **greedy)) for s in steps]
    block_steps = args.block_steps or (dfm.block_size if block_mode else args.block_length)
    for cache in (("none", "prefix") if block_mode else ("none", "prefix", "dual")):
        out.append((f"threshold{args.threshold:g}_{cache}",
                    SamplerConfig(method="threshold", steps=block_steps, threshold=args.threshold, cache=cache, **greedy)))
    return out


def load(args: argparse.Namespace, device: torch.device) -> Tuple[Qwen3DFM, DFMConfig, Optional[object]]:
    """The DFM model (random weights, or --model-dir), its DFM config and tokenizer (None for random weights)."""
    from megadfm.dfm.config import DFMConfig
    from megadfm.model import Qwen3DFM

    if args.model_dir is None:
        dfm = DFMConfig() if args.block_diffusion is None else DFMConfig(mode="block", block_size=args.block_diffusion)
        return Qwen3DFM(random_model_config(args), seed=0).to(device).eval(), dfm, None
    from megadfm.data.tokenizer import load_tokenizer
    from megadfm.dfm.model_loading import load_model_dir

    model, run_cfg = load_model_dir(args.model_dir, device, "float32")
    return model, run_cfg.dfm, load_tokenizer(run_cfg.data.tokenizer, mask_token_id=run_cfg.model.mask_token_id)


def head_draw_times(model, positions: int, repeats: int = 15) -> Dict[str, Summary]:
    """Seconds of one greedy draw with probability confidence over ``positions`` hidden states: the head plus the
    softmax path (softmax, argmax, gather: what a step did before) and plus the fast path (max, logsumexp)."""
    import torch

    from megadfm.dfm.logits_processing import confidence_scores, greedy_with_confidence, sample_from_logits

    hidden = torch.randn(positions, model.cfg.hidden_size, generator=torch.Generator().manual_seed(1),
                         device=next(model.parameters()).device)

    def softmax_path():
        logits = model.logits(hidden)
        tokens, probs = sample_from_logits(logits, 0.0, 0, 1.0, None)
        return confidence_scores(probs, tokens, "probability")

    def fast_path():
        return greedy_with_confidence(model.logits(hidden), "probability")[1]

    times: Dict[str, List[float]] = {"softmax_path": [], "fast_path": []}
    with torch.inference_mode():
        for _ in range(repeats):
            for name, fn in (("softmax_path", softmax_path), ("fast_path", fast_path)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: summarize(values) for name, values in times.items()}


def main() -> int:
    """Time the AR baseline and every DFM setting per batch size; print the table and write the JSON line."""
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    new_tokens = 64 if args.small and args.model_dir is None else args.new_tokens
    dfm_model, dfm, tokenizer = load(args, device)
    cfg = dfm_model.cfg
    ar_model = hf_model(cfg).to(device)
    n_params = sum(p.numel() for p in ar_model.parameters())
    weights = f"trained: {args.model_dir}" if args.model_dir else "RANDOM weights"
    print(f"# DFM {weights}; AR baseline: random weights of the same shape (speed only)")
    print(f"# device {device}, {torch.get_num_threads()} threads; hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
          f"vocab {cfg.vocab_size}, {n_params / 1e6:.1f} M params (HF); prompt {args.prompt_len}, {new_tokens} new tokens; "
          f"blocks of {dfm.block_size if dfm.mode == 'block' else args.block_length}; greedy, EOS off; "
          f"dfm.mode {dfm.mode}")
    if args.model_dir is None:
        print("# agreement on random weights is MEANINGLESS (near-uniform predictions); run with --model-dir for a real one")
    print("# prefix / dual caches are APPROXIMATIONS for a bidirectional model (EXACT for a block-diffusion model); "
          "agreement = fraction of new tokens equal to the first exact setting's")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    # the JSON line's baseline key is the first batch size's AR run; every ratio names the AR run of its own batch size
    header = print_header("sampler", f"b{batch_sizes[0]}/hf_generate_ar",
                          "transformers generate, greedy, KV cache (one run per batch size: b<batch>/hf_generate_ar)",
                          torch.get_num_threads())
    print(f"{'batch':>5} {'setting':<22} {'steps':>5} {'NFE full/block':>14} {'tok/s':>9} {'vs AR':>6} {'agree':>6}"
          f"   (tok/s: median of {args.repeats})")
    gen = torch.Generator().manual_seed(0)
    results: Dict[str, Dict[str, Summary]] = {}
    ratios, facts = [], {}
    for bsz in batch_sizes:
        if tokenizer is None:
            prompts = torch.randint(0, 151643, (bsz, args.prompt_len), generator=gen).tolist()
        else:
            prompts = code_prompts(tokenizer, bsz, args.prompt_len)
        base = f"b{bsz}/hf_generate_ar"
        results[base] = {"tokens_per_s": summarize(ar_run(ar_model, torch.tensor(prompts, device=device), new_tokens,
                                                          args.repeats))}
        ar = results[base]["tokens_per_s"].median
        print(f"{bsz:>5} {'hf_generate_ar':<22} {new_tokens:>5} {f'1/{new_tokens - 1}':>14} {ar:>9.1f} {1.0:>6.2f} "
              f"{'-':>6}", flush=True)
        reference = None
        for name, sampler in settings(args, new_tokens, dfm):
            rates, out = dfm_run(dfm_model, prompts, new_tokens, sampler, dfm, args.repeats)
            key = f"b{bsz}/{name}"
            results[key] = {"tokens_per_s": summarize(rates)}
            ratios.append(ratio(f"{key} / AR (tokens/s)", results, "tokens_per_s", key, base))
            reference = reference or out
            facts[key] = {"steps": out.steps, "nfe_full": out.nfe_full, "nfe_block": out.nfe_block,
                          "agreement": agreement(out, reference)}
            print(f"{bsz:>5} {name:<22} {out.steps:>5} {f'{out.nfe_full}/{out.nfe_block}':>14} "
                  f"{results[key]['tokens_per_s'].median:>9.1f} {ratios[-1].value:>6.2f} {facts[key]['agreement']:>6.3f}",
                  flush=True)
    # the greedy draw alone, over one block of masked positions: the fast path against the softmax path it replaced
    draw = head_draw_times(dfm_model, args.block_length)
    results["draw/softmax_path"] = {"seconds": draw["softmax_path"]}
    results["draw/fast_path"] = {"seconds": draw["fast_path"]}
    ratios.append(ratio("draw: fast path / softmax path (seconds)", results, "seconds", "draw/fast_path", "draw/softmax_path"))
    print(f"# greedy draw over {args.block_length} positions (head + confidence): softmax path "
          f"{draw['softmax_path'].median * 1e3:.2f} ms, fast path {draw['fast_path'].median * 1e3:.2f} ms "
          f"(x{ratios[-1].value:.2f}; median of 15)")
    write_result(header, args, results, ratios, extra={"settings": facts, "new_tokens": new_tokens,
                                                       "weights": weights, "device": str(device)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
