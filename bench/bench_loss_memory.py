"""Peak memory and time of the chunked linear + cross-entropy vs the naive full-logits baseline (CPU).

Baseline ("naive"): ``F.cross_entropy(h @ W.T)`` with the mask logit at -inf, which holds the
[N, V] fp32 logits (and their gradient). Candidate ("chunked"): megadfm's
``linear_cross_entropy_torch`` (recomputes [chunk, V] logits in backward).

Memory is measured honestly for torch's allocator: each variant runs forward + backward in a fresh
subprocess; we report the peak resident set size (getrusage ru_maxrss) minus the RSS just before
the op, after the inputs exist. Both deltas include the [V, H] fp32 weight gradient (1.2 GiB at the
default shape), which any implementation must produce. Python's tracemalloc cannot see torch
allocations, so it is not used.

    python bench/bench_loss_memory.py                      # 8192 tokens x 151936 vocab x hidden 2048
    python bench/bench_loss_memory.py --tokens 2048        # what fits a small shared CPU box
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args) -> None:
    import torch
    import torch.nn.functional as F

    from megadfm.model.kernels.linear_cross_entropy import linear_cross_entropy_torch

    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    mask_id = min(151669, args.vocab - 1)
    h = torch.randn(args.tokens, args.hidden, generator=gen).requires_grad_()
    w = (torch.randn(args.vocab, args.hidden, generator=gen) * 0.02).requires_grad_()
    targets = torch.randint(0, mask_id, (args.tokens,), generator=gen)
    targets[::10] = -100
    upstream = torch.rand(args.tokens, generator=gen)
    before = rss_bytes()
    start = time.perf_counter()
    if args.child == "naive":
        logits = (h @ w.t()).float()
        logits[:, mask_id] = float("-inf")
        losses = F.cross_entropy(logits, targets, reduction="none", ignore_index=-100)
    else:
        losses = linear_cross_entropy_torch(h, w, targets, -100, mask_id, args.chunk_size)
    (losses * upstream).sum().backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"variant": args.child, "seconds": seconds, "peak_delta": peak - before,
                      "loss_sum": float(losses.sum()), "grad_h_norm": float(h.grad.norm()), "grad_w_norm": float(w.grad.norm())}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=8192, help="tokens N (rows of hidden); default 8192")
    p.add_argument("--vocab", type=int, default=151936, help="vocabulary V (Qwen3: 151936)")
    p.add_argument("--hidden", type=int, default=2048, help="hidden size H (Qwen3-1.7B: 2048)")
    p.add_argument("--chunk-size", type=int, default=1024, help="tokens per chunk of the chunked implementation")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--child", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    gib = 1024 ** 3
    print(f"linear + CE, forward + backward, fp32 on CPU: N={args.tokens} tokens, V={args.vocab}, H={args.hidden}, "
          f"chunk={args.chunk_size}; naive [N, V] fp32 logits alone = {args.tokens * args.vocab * 4 / gib:.2f} GiB")
    results = {}
    for variant in ("naive", "chunked"):
        cmd = [sys.executable, __file__, "--child", variant] + [a for a in sys.argv[1:]]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results[variant] = r = json.loads(out)
        print(f"  {variant:8s} time {r['seconds']:7.2f} s   peak RSS increase {r['peak_delta'] / gib:6.2f} GiB   "
              f"loss sum {r['loss_sum']:.4f}  |grad h| {r['grad_h_norm']:.5f}  |grad W| {r['grad_w_norm']:.5f}")
    n, c = results["naive"], results["chunked"]
    print(f"memory ratio naive/chunked: {n['peak_delta'] / c['peak_delta']:.2f}x   "
          f"time ratio chunked/naive: {c['seconds'] / n['seconds']:.2f}x (baseline: naive full logits, same run)")


if __name__ == "__main__":
    main()
