"""Forward + backward tokens/s of Qwen3DFM vs transformers' Qwen3ForCausalLM, same shape, same run (CPU).

Baseline: ``Qwen3ForCausalLM(input_ids, labels=...)`` (SDPA attention, full-logits CE) + backward.
Candidates: Qwen3DFM (torch kernels) in causal mode with AdaLN(t) (the like-for-like comparison)
and in bidirectional mode with a packed cu_seqlens batch (what DFM training runs), each with
``weighted_token_loss`` (the training loss: chunked CE with its gradients computed in forward) on
every position + backward. Same weights (converted through the
name map), same tokens, interleaved repetitions (--repeats, formerly --steps, which still works);
printed and written: the median step time and its min/max, and per candidate the ratio of the
medians baseline s/step / candidate s/step (= candidate tokens/s / baseline tokens/s).

    python bench/bench_model.py                # hidden 512, 4 layers, real 151,936 vocab, 2 x 512 tokens
    python bench/bench_model.py --vocab 32768 --hidden 256
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.common import add_repeats_arg, print_header, ratio, summarize, write_result  # noqa: E402

BASELINE = "transformers Qwen3ForCausalLM"


def main() -> None:
    """Build the three models on the same weights, time them interleaved, print and write the ratios."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=512, help="hidden size")
    p.add_argument("--layers", type=int, default=4, help="transformer blocks")
    p.add_argument("--heads", type=int, default=8, help="query heads (kv heads = heads / 2, head_dim = 64)")
    p.add_argument("--vocab", type=int, default=151936, help="vocabulary size")
    p.add_argument("--batch", type=int, default=2, help="sequences per step")
    p.add_argument("--seq", type=int, default=512, help="tokens per sequence")
    add_repeats_arg(p, 3, "timed steps per model after one warm-up, interleaved across models", aliases=("--steps",))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()

    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from megadfm.checkpoints.strict_load import load_state_dict
    from megadfm.conversion import hf_to_megadfm_state_dict, model_config_from_hf
    from megadfm.model import Qwen3DFM

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hf_cfg = Qwen3Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads // 2,
                         head_dim=64, tie_word_embeddings=True, max_position_embeddings=max(4096, args.seq))
    hf_cfg._attn_implementation = "sdpa"
    hf = Qwen3ForCausalLM(hf_cfg).train()
    mask_id = min(151669, args.vocab - 1)
    models = {}
    for mode in ("causal", "bidirectional"):
        cfg = model_config_from_hf(hf_cfg.to_dict(), mask_token_id=mask_id, kernels="torch", attention_mode=mode)
        m = Qwen3DFM(cfg, seed=0)
        load_state_dict(m, hf_to_megadfm_state_dict(hf.state_dict(), cfg)[0], "the in-memory conversion of the HF model")
        models[mode] = m.train()

    B, L = args.batch, args.seq
    ids = torch.randint(0, mask_id, (B, L))
    labels = torch.randint(0, mask_id, (B, L))
    t = torch.rand(B)
    docs = [L // 4, L // 2, L - L // 4 - L // 2]  # three packed documents per row
    cu = torch.tensor([0] + [b * L + s for b in range(B) for s in torch.tensor(docs).cumsum(0).tolist()], dtype=torch.int32)

    def step_hf():
        hf.zero_grad(set_to_none=True)
        # HF shifts labels internally; pass the unshifted ones (same number of CE terms +-1 per row)
        hf(input_ids=ids, labels=labels).loss.backward()

    def step_ours(mode):
        m = models[mode]
        m.zero_grad(set_to_none=True)
        kwargs = {"cu_seqlens": cu} if mode == "bidirectional" else {}
        hidden = m(ids, t=t, **kwargs)
        # the training form: mean CE as a weighted sum (weights 1/N), gradients computed in forward
        mean_weights = torch.full((B * L,), 1.0 / (B * L))
        m.weighted_token_loss(hidden.reshape(B * L, -1), labels.flatten(), mean_weights)[0].backward()

    runs = {BASELINE: step_hf, "Qwen3DFM causal + AdaLN": lambda: step_ours("causal"),
            "Qwen3DFM bidirectional packed + AdaLN": lambda: step_ours("bidirectional")}
    times = {name: [] for name in runs}
    for name, fn in runs.items():  # warm-up
        fn()
    header = print_header("model", BASELINE, "SDPA attention, full-logits CE, + backward", torch.get_num_threads())
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits every model alike
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    tokens = B * L
    print(f"forward+backward on CPU ({torch.get_num_threads()} threads): hidden {args.hidden}, {args.layers} layers, "
          f"{args.heads}/{args.heads // 2} heads x 64, vocab {args.vocab}, batch {B} x {L} tokens, median [min, max] "
          f"of {args.repeats}")
    results = {name: {"seconds_per_step": summarize(ts)} for name, ts in times.items()}
    ratios = [ratio(f"{name} vs baseline (s/step baseline / candidate)", results, "seconds_per_step", BASELINE, name)
              for name in results if name != BASELINE]
    by_name = {r.denominator: r.value for r in ratios}
    for name, res in results.items():
        s = res["seconds_per_step"]
        label = name + " (baseline)" if name == BASELINE else name
        print(f"  {label:42s} {tokens / s.median:9.1f} tokens/s   ({s.fmt()} s/step)   "
              f"ratio vs baseline {by_name.get(name, 1.0):.2f}x")
    write_result(header, args, results, ratios, extra={"tokens_per_step": tokens})


if __name__ == "__main__":
    main()
