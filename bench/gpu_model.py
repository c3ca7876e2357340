"""Training-step throughput and MFU of Qwen3DFM at the Qwen3-1.7B shape, fused vs torch kernels (GPU).

One step = forward (bidirectional, packed documents, AdaLN(t)) + per-token CE over every position
via ``token_losses`` + backward; no optimizer. Both backends run in the same process on the same
weights and batch; the baseline is the torch backend (ratio: median s/step torch / fused = fused
tokens/s / torch tokens/s; --repeats timed steps, formerly --steps, which still works). MFU uses
megadfm.training.mfu (PaLM/Megatron FLOPs per token, dense bf16 peak of the detected GPU from its
peak table, whose entry is printed; activation recompute is not counted as useful). MFU counts the
full L x L bidirectional attention, as the trainer does; "exact" counts only the packed documents'
blocks, which is what the varlen kernels compute.

    python bench/gpu_model.py                  # Qwen3-1.7B shape, seq 8192, bf16, on the GPU
    python bench/gpu_model.py --tiny          # a 2-layer toy on CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.common import add_repeats_arg, print_header, ratio, summarize, write_result  # noqa: E402

BASELINE = "torch"

QWEN3_1_7B = dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
                  max_position_embeddings=40960, rope_theta=1e6)
TINY = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, vocab_size=512, mask_token_id=500, tie_word_embeddings=True, max_position_embeddings=256)


def main() -> None:
    """Time every backend on the same weights and batch; print tokens/s, MFU, the ratio; write the JSON line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="toy shape on CPU, fp32 (smoke test of this script)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 8192; 64 with --tiny)")
    p.add_argument("--batch", type=int, default=1, help="sequences per step")
    p.add_argument("--docs", type=int, default=4, help="documents packed per sequence (cu_seqlens segments)")
    add_repeats_arg(p, 5, "timed steps per backend (after 2 warm-up steps)", aliases=("--steps",))
    p.add_argument("--no-checkpointing", action="store_true", help="disable per-layer activation checkpointing")
    p.add_argument("--backends", default="fused,torch", help="comma-separated kernel backends to compare")
    args = p.parse_args()

    import torch

    from megadfm.model import ModelConfig, Qwen3DFM
    from megadfm.model.kernels import KernelUnavailableError
    from megadfm.training.mfu import device_peak, flops_per_token, mfu

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.tiny:
        sys.exit("no CUDA device: run with --tiny for a CPU smoke test")
    seq = args.seq or (64 if args.tiny else 8192)
    shape = TINY if args.tiny else QWEN3_1_7B
    dtype = "float32" if args.tiny else "bfloat16"
    B, L = args.batch, seq
    gen = torch.Generator().manual_seed(0)
    mask_id = shape.get("mask_token_id", 151669)
    ids = torch.randint(0, mask_id, (B, L), generator=gen).to(device)
    targets = torch.randint(0, mask_id, (B * L,), generator=gen).to(device)
    t = torch.rand(B, generator=gen).to(device)
    bounds = sorted({0, L, *torch.linspace(0, L, args.docs + 1).long().tolist()})
    cu = torch.tensor([b * L + s for b in range(B) for s in bounds[:-1]] + [B * L], dtype=torch.int32, device=device)
    entry = device_peak()
    peak = None if entry is None else entry.flops
    segments = [b - a for a, b in zip(bounds[:-1], bounds[1:])] * B
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; shape "
          f"{'tiny' if args.tiny else 'Qwen3-1.7B'}; batch {B} x {L} tokens, {args.docs} docs/row; dtype {dtype}; "
          f"activation checkpointing {'off' if args.no_checkpointing else 'on'}")
    print("peak: " + (f"entry {entry.device} of megadfm/training/mfu.py, {entry.flops / 1e12:.0f} TFLOP/s dense bf16"
                      if entry else "no entry for this device in megadfm/training/mfu.py's table: MFU not reported"))
    header = print_header("gpu_model", BASELINE, "torch kernel backend, same weights and batch", torch.get_num_threads(),
                          "CPU threads; the GPU does the work" if device.type == "cuda" else "")
    results, facts = {}, {}
    for backend in args.backends.split(","):
        try:
            cfg = ModelConfig(**shape, kernels=backend, dtype=dtype, attention_mode="bidirectional",
                              activation_checkpointing=not args.no_checkpointing)
            model = Qwen3DFM(cfg, seed=0).to(device).train()
        except KernelUnavailableError as why:
            print(f"  {backend}: skipped ({str(why).splitlines()[0]} ...)")
            continue

        def step():
            model.zero_grad(set_to_none=True)
            hidden = model(ids, t=t, cu_seqlens=cu)
            model.token_losses(hidden.reshape(B * L, -1), targets).mean().backward()

        times = []
        for i in range(2 + args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - start)
        results[backend] = {"seconds_per_step": summarize(times)}
        tps = B * L / results[backend]["seconds_per_step"].median
        util = mfu(cfg, L, tps, peak)
        exact = None if peak is None else flops_per_token(cfg, L, segments) * tps / peak
        mem = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB peak" if device.type == "cuda" else "n/a"
        facts[backend] = {"tokens_per_s": tps, "mfu": util, "mfu_packed_exact": exact, "kernels": dict(model.kernels_for(device).chosen),
                          "kernel_reasons": dict(model.kernels_for(device).reasons),
                          "max_memory_allocated": torch.cuda.max_memory_allocated() if device.type == "cuda" else None}
        print(f"  {backend:6s} {tps:10.1f} tokens/s  ({results[backend]['seconds_per_step'].fmt('.4f')} s/step)  "
              f"MFU {'n/a (no GPU peak known)' if util is None else f'{100 * util:.1f}% (exact {100 * exact:.1f}%)'}  "
              f"memory {mem}  kernels: {', '.join(f'{k}={v}' for k, v in model.kernels_for(device).chosen.items())}  "
              f"({flops_per_token(cfg, L) / 1e9:.2f} GFLOP/token)")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    ratios = [ratio(f"speed-up {b} / {BASELINE} (s/step {BASELINE} / {b})", results, "seconds_per_step", BASELINE, b)
              for b in results if b != BASELINE and BASELINE in results]
    for r in ratios:
        print(f"speed-up {r.denominator} / {BASELINE} (baseline: torch kernels, same run): {r.value:.2f}x")
    if BASELINE not in results:
        print(f"# no JSON line written: the baseline backend {BASELINE!r} did not run (--backends {args.backends})")
        return
    write_result(header, args, results, ratios, extra={"backends": facts, "device": str(device), "shape": "tiny" if args.tiny
                                                       else "Qwen3-1.7B", "tokens_per_step": B * L, "dtype": dtype,
                                                       "peak": None if entry is None else entry._asdict(),
                                                       "device_name": torch.cuda.get_device_name() if device.type == "cuda" else None})


if __name__ == "__main__":
    main()
