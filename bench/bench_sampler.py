#!/usr/bin/env python
"""Sampler throughput: megadfm's DFM samplers vs transformers' autoregressive ``generate``.

Same run, same shape: a randomly initialized Qwen3DFM and a Qwen3ForCausalLM with identical sizes
(hidden, layers, heads, the full 151,936-row vocabulary), the same random 16-token prompts, 256 new
tokens, batch 1 and 16. The AR baseline uses its KV cache and greedy decoding with EOS disabled, so
it always produces all 256 tokens; the DFM samplers run 16/32/64 steps with EOS disabled.
Throughput is new tokens / wall second of the decoding loop (``tokens_per_second`` of the result;
HF: around ``generate``). Prints one line per setting and the ratio DFM / AR. Not a test.

    python bench/bench_sampler.py            # hidden 256, 4 layers (a few minutes on 2 CPU cores)
    python bench/bench_sampler.py --small    # hidden 64, 2 layers, 64 new tokens (about a minute)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from megadfm.dfm.config import DFMConfig  # noqa: E402
from megadfm.dfm.sampler import generate  # noqa: E402
from megadfm.dfm.sampler_config import SamplerConfig  # noqa: E402
from megadfm.model import ModelConfig, Qwen3DFM  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="Tiny model (hidden 64, 2 layers) and 64 new tokens.")
    p.add_argument("--hidden", type=int, default=256, help="Hidden size (ignored with --small).")
    p.add_argument("--layers", type=int, default=4, help="Layers (ignored with --small).")
    p.add_argument("--new-tokens", type=int, default=256, help="New tokens per row (64 with --small).")
    p.add_argument("--prompt-len", type=int, default=16, help="Prompt tokens per row.")
    p.add_argument("--batch-sizes", default="1,16", help="Comma-separated batch sizes.")
    p.add_argument("--steps", default="16,32,64", help="Comma-separated DFM step counts.")
    p.add_argument("--block-length", type=int, default=32, help="Semi-AR block length of the confidence sampler.")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 by default: on a shared 2-core machine a 2nd thread makes timings erratic).")
    p.add_argument("--repeats", type=int, default=1, help="Time each setting this many times and keep the fastest.")
    p.add_argument("--device", default="cpu", help="Device (the comparison is defined on CPU; cuda works too).")
    return p.parse_args()


def model_config(args: argparse.Namespace) -> ModelConfig:
    hidden, layers = (64, 2) if args.small else (args.hidden, args.layers)
    heads = max(2, hidden // 64)
    return ModelConfig(hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=max(1, heads // 2), head_dim=64, max_position_embeddings=4096,
                       time_conditioning="adaln", kernels="auto")


def hf_model(cfg: ModelConfig):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hf_cfg = Qwen3Config(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                         num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.resolved_head_dim,
                         max_position_embeddings=cfg.max_position_embeddings, rope_theta=cfg.rope_theta,
                         tie_word_embeddings=cfg.tie_word_embeddings, torch_dtype=torch.float32)
    torch.manual_seed(0)
    return Qwen3ForCausalLM(hf_cfg).eval()


def ar_tokens_per_second(model, prompts: torch.Tensor, new_tokens: int, repeats: int) -> float:
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                  eos_token_id=None, pad_token_id=0, attention_mask=torch.ones_like(prompts))
    with torch.inference_mode():
        model.generate(prompts[:, :4], **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4,
                                          "attention_mask": torch.ones_like(prompts[:, :4])})  # warm-up
        seconds = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            out = model.generate(prompts, **kwargs)
            seconds = min(seconds, time.perf_counter() - start)
    assert out.shape[1] == prompts.shape[1] + new_tokens
    return prompts.shape[0] * new_tokens / seconds


def dfm_tokens_per_second(model, prompts: List[List[int]], new_tokens: int, cfg: SamplerConfig, repeats: int) -> tuple:
    dfm = DFMConfig()
    generate(model, [p[:4] for p in prompts], 4, SamplerConfig(method=cfg.method, steps=2, eos_token_id=None), dfm)  # warm-up
    outs = [generate(model, prompts, new_tokens, cfg, dfm) for _ in range(repeats)]
    return max(o.tokens_per_second for o in outs), outs[0].model_evals


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    new_tokens = 64 if args.small else args.new_tokens
    cfg = model_config(args)
    dfm_model = Qwen3DFM(cfg, seed=0).to(device).eval()
    ar_model = hf_model(cfg).to(device)
    n_params = sum(p.numel() for p in ar_model.parameters())
    print(f"# device {device}, {torch.get_num_threads()} threads; hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
          f"vocab {cfg.vocab_size}, {n_params / 1e6:.1f} M params (HF); prompt {args.prompt_len}, {new_tokens} new tokens")
    print(f"{'batch':>5} {'sampler':<22} {'steps':>5} {'evals':>5} {'tok/s':>10} {'vs AR':>7}")
    gen = torch.Generator().manual_seed(0)
    for bsz in [int(b) for b in args.batch_sizes.split(",")]:
        prompts = torch.randint(0, 151643, (bsz, args.prompt_len), generator=gen)
        ar = ar_tokens_per_second(ar_model, prompts.to(device), new_tokens, args.repeats)
        print(f"{bsz:>5} {'hf_generate_ar':<22} {new_tokens:>5} {new_tokens:>5} {ar:>10.1f} {1.0:>7.2f}", flush=True)
        for steps in [int(s) for s in args.steps.split(",")]:
            for name, sampler in [
                ("dfm_euler", SamplerConfig(method="euler", steps=steps, temperature=0.0, eos_token_id=None)),
                (f"dfm_confidence_blk{args.block_length}",
                 SamplerConfig(method="confidence", steps=steps, block_length=args.block_length, temperature=0.0,
                               eos_token_id=None)),
            ]:
                tps, evals = dfm_tokens_per_second(dfm_model, prompts.tolist(), new_tokens, sampler, args.repeats)
                print(f"{bsz:>5} {name:<22} {steps:>5} {evals:>5} {tps:>10.1f} {tps / ar:>7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
