"""Peak memory and time of megadfm's linear + cross-entropy vs the naive full-logits baseline (CPU).

Baseline ("naive"): ``F.cross_entropy(h @ W.T)`` with the mask logit at -inf, which holds the
[N, V] fp32 logits (and their gradient). Candidates, both megadfm's, both given the same upstream
weights u (the naive loss is ``(losses * u).sum()``):

- "grads-in-forward": ``weighted_linear_cross_entropy_torch(h, W, targets, token_weights=u)``,
  which makes the gradients chunk by chunk during the forward (the main candidate);
- "chunked": ``linear_cross_entropy_torch`` (chunked, recomputes [chunk, V] logits in backward).

Memory is measured honestly for torch's allocator: each variant runs forward + backward in a fresh
subprocess; we report the peak resident set size (getrusage ru_maxrss) minus the RSS just before
the op, after the inputs exist. All deltas include the [V, H] fp32 weight gradient (1.2 GiB at the
default shape), which any implementation must produce. Python's tracemalloc cannot see torch
allocations, so it is not used. With --repeats N every variant runs N times, interleaved (naive,
candidates, naive, ...), so drifting machine load hits them alike; printed and written: the median
and min/max of the time and of the peak RSS increase. Ratios (medians): memory naive/candidate,
time candidate/naive.

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
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.common import add_repeats_arg, print_header, ratio, summarize, torch_threads, write_result  # noqa: E402

BASELINE = "naive"
# key -> what it is; the baseline first, then the candidates, main candidate first
VARIANTS: Dict[str, str] = {
    "naive": "naive full [N, V] logits + F.cross_entropy",
    "grads-in-forward": "weighted_linear_cross_entropy_torch (chunked, gradients made in forward)",
    "chunked": "linear_cross_entropy_torch (chunked, recompute in backward)",
}


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args: argparse.Namespace) -> None:
    """One variant, forward + backward, in this fresh process; prints one JSON line of its numbers."""
    import torch
    import torch.nn.functional as F

    from megadfm.model.kernels import linear_cross_entropy as lce

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
    t0 = time.perf_counter()
    if args.child == "naive":
        logits = (h @ w.t()).float()
        logits[:, mask_id] = float("-inf")
        losses = F.cross_entropy(logits, targets, reduction="none", ignore_index=-100)
        weighted = (losses * upstream).sum()
        weighted.backward()
    elif args.child == "chunked":
        losses = lce.linear_cross_entropy_torch(h, w, targets, -100, mask_id, args.chunk_size)
        weighted = (losses * upstream).sum()
        weighted.backward()
    elif args.child == "grads-in-forward":
        weighted, losses = lce.weighted_linear_cross_entropy_torch(h, w, targets, upstream, ignore_index=-100,
                                                                   excluded_token=mask_id, chunk_size=args.chunk_size)
        weighted.backward()
    else:
        raise ValueError(f"unknown variant {args.child!r}")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"variant": args.child, "seconds": seconds, "peak_delta": peak - before, "loss_sum": float(losses.sum()),
                      "weighted_loss": float(weighted), "grad_h_norm": float(h.grad.norm()),
                      "grad_w_norm": float(w.grad.norm())}))


def run_child(variant: str) -> Dict[str, float]:
    """Run one variant in a fresh interpreter with this process's arguments; its JSON line as a dict."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant] + sys.argv[1:]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def parse_args() -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=8192, help="tokens N (rows of hidden); default 8192")
    p.add_argument("--vocab", type=int, default=151936, help="vocabulary V (Qwen3: 151936)")
    p.add_argument("--hidden", type=int, default=2048, help="hidden size H (Qwen3-1.7B: 2048)")
    p.add_argument("--chunk-size", type=int, default=0,
                   help="tokens per chunk of the chunked implementations (0: the model's default, the rows of one "
                        "[chunk, V] fp32 block within --chunk-memory-mb)")
    p.add_argument("--chunk-memory-mb", type=int, default=None, help="memory budget of one chunk when --chunk-size is 0 "
                   "(model.loss_chunk_memory_mb's default)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated variants to run; must include the baseline {BASELINE!r} (default: %(default)s)")
    add_repeats_arg(p, 1, "fresh-process runs of every variant, interleaved")
    p.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.chunk_size == 0:
        from megadfm.model.kernels.linear_cross_entropy import chunk_rows_for_budget

        if args.chunk_memory_mb is None:
            from megadfm.model import ModelConfig

            args.chunk_memory_mb = ModelConfig().loss_chunk_memory_mb
        args.chunk_size = chunk_rows_for_budget(args.vocab, args.chunk_memory_mb * 2**20)
    return args


def main() -> None:
    """Run every variant --repeats times in fresh subprocesses, print and write the comparison."""
    args = parse_args()
    if args.child:
        return child(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or BASELINE not in variants:
        sys.exit(f"--variants {args.variants!r}: choose from {', '.join(VARIANTS)}, the baseline {BASELINE!r} included")
    gib = 1024 ** 3
    # the children use --threads, else torch's default in a process with this environment, i.e. this one's
    header = print_header("loss_memory", BASELINE, VARIANTS[BASELINE], args.threads or torch_threads(),
                   "torch threads of each fresh child process")
    print(f"linear + CE, forward + backward, fp32 on CPU: N={args.tokens} tokens, V={args.vocab}, H={args.hidden}, "
          f"chunk={args.chunk_size}; naive [N, V] fp32 logits alone = {args.tokens * args.vocab * 4 / gib:.2f} GiB; "
          f"{args.repeats} repeat(s), median [min, max]")
    runs: Dict[str, List[Dict[str, float]]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for variant in variants:
            runs[variant].append(run_child(variant))
    results = {v: {"seconds": summarize([r["seconds"] for r in rs]), "peak_delta_bytes": summarize([r["peak_delta"] for r in rs])}
               for v, rs in runs.items()}
    for variant in variants:
        r, s = runs[variant][-1], results[variant]
        gib_spread = summarize([x / gib for x in s["peak_delta_bytes"].values])
        print(f"  {variant:16s} time {s['seconds'].fmt('.2f')} s   peak RSS increase {gib_spread.fmt('.2f')} GiB   "
              f"loss sum {r['loss_sum']:.4f}  weighted {r['weighted_loss']:.4f}  |grad h| {r['grad_h_norm']:.5f}  "
              f"|grad W| {r['grad_w_norm']:.5f}   ({VARIANTS[variant]})")
    ratios = []
    for cand in (v for v in variants if v != BASELINE):
        mem = ratio(f"memory {BASELINE}/{cand}", results, "peak_delta_bytes", BASELINE, cand)
        tim = ratio(f"time {cand}/{BASELINE}", results, "seconds", cand, BASELINE)
        ratios += [mem, tim]
        print(f"memory ratio {mem.numerator}/{mem.denominator}: {mem.value:.2f}x   "
              f"time ratio {tim.numerator}/{tim.denominator}: {tim.value:.2f}x (baseline: naive full logits, same run)")
    checks = {v: {k: runs[v][-1][k] for k in ("loss_sum", "weighted_loss", "grad_h_norm", "grad_w_norm")} for v in variants}
    write_result(header, args, results, ratios, extra={"checks": checks, "variants": {v: VARIANTS[v] for v in variants}})


if __name__ == "__main__":
    main()
