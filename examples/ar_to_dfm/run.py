#!/usr/bin/env python
"""The AR -> DFM experiment: does adapting an autoregressive model beat training a DFM from scratch?

    python examples/ar_to_dfm/run.py                      # the full experiment (make ar2dfm), ~45 min on 2 cores
    python examples/ar_to_dfm/run.py --mini --work /tmp/x # a few steps per stage (the test suite's miniature)

Stages, in order (each is skipped when its output is complete, so a re-run reuses finished stages;
training stages resume from their last checkpoint):

1. ``ar``: pretrain a small causal Qwen3 on the CPython standard library with ``dfm.objective: ar``;
2. ``export``: ``--as-qwen3`` export of it, loaded back with transformers' Qwen3ForCausalLM (offline);
3. ``convert``: tools/convert_hf_to_megadfm.py of that folder (time conditioning added at zero: the
   converted model is the AR function);
4. five DFM runs with the same model shape, data, seed and steps: ``dfm_from_ar`` (shift on, the
   default), ``dfm_scratch`` (random init), ``dfm_from_ar_noshift`` (shift off),
   ``dfm_from_ar_anneal`` (attention annealed from causal to bidirectional over the first quarter) and
   ``dfm_from_ar_block`` (block diffusion, blocks of 16: block_comparison.py);
5. ``eval``: infill (held-out stdlib functions) and the ELBO bound of every full-DFM run, one pinned sampler;
   then full vs block DFM: both evaluated with one block sampler, and their sampling speed against the AR model;
6. ``report``: WORK/report.md (the tables) and WORK/report.html (validation loss and validation CE per
   mask-ratio bucket against step, every run on each chart).

Deterministic given the seed (base.yaml's training.seed; data order and t come from it). Sizes
(full): hidden 64, 2 layers, the real 151,936-token vocabulary, 128-token rows, 4 per rank, 2
ranks; AR 300 steps; each DFM run 180 steps; validation (one batch per mask-ratio bucket) every 30 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
BASE = os.path.join(REPO, "examples", "ar_to_dfm", "base.yaml")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import block_comparison  # noqa: E402  (this folder's own module)

AR = {"dfm.objective": "ar", "dfm.loss_weighting": "none", "dfm.loss_normalizer": "masked",
      "model.attention_mode": "causal", "model.time_conditioning": "none"}
RUNS = {  # name: (init from the converted AR model?, overrides)
    "dfm_from_ar": (True, {}),
    "dfm_scratch": (False, {}),
    "dfm_from_ar_noshift": (True, {"dfm.shift_logits": False}),
    "dfm_from_ar_anneal": (True, {"dfm.attention_anneal_steps": "QUARTER"}),
    block_comparison.BLOCK_RUN[0]: (True, block_comparison.BLOCK_RUN[1]),  # block diffusion (dfm.mode: block)
}
FULL_RUNS = [name for name in RUNS if name != block_comparison.BLOCK_RUN[0]]
"""The runs of the main table (evaluated with euler-16, which a block model cannot use)."""
SIZES = {  # steps, validation interval and batches, evaluation problems / documents / ELBO points, processes
    "full": dict(ar_steps=300, dfm_steps=180, val_interval=30, val_batches=1, eval_limit=64, documents=32, points=8, nproc=2,
                 speed_tokens=128, speed_batches=[1, 16]),
    "mini": dict(ar_steps=2, dfm_steps=2, val_interval=2, val_batches=1, eval_limit=1, documents=1, points=2, nproc=1,
                 speed_tokens=8, speed_batches=[1, 2],
                 # every kind of stage, not every variant: shift off is one more override of the same stage
                 skip=["dfm_from_ar_noshift"]),
}


def log(message: str) -> None:
    print(f"[ar2dfm {time.strftime('%H:%M:%S')}] {message}", flush=True)


def complete_step(run_dir: str) -> Optional[int]:
    """The newest complete checkpoint's step of a run (None: none yet)."""
    from megadfm.checkpoints.layout import complete_steps

    root = os.path.join(run_dir, "checkpoints")
    steps = complete_steps(root) if os.path.isdir(root) else []
    return steps[-1] if steps else None


def train(name: str, work: str, steps: int, overrides: Dict[str, object], nproc: int) -> str:
    """Run (or resume, or skip when finished) one training stage; returns its run directory."""
    run_dir = os.path.join(work, name)
    if complete_step(run_dir) == steps:
        log(f"{name}: finished earlier ({steps} steps), skipped")
        return run_dir
    sets = {"training.output_dir": run_dir, "training.train_steps": steps, **overrides}
    argv = [os.path.join(REPO, "pretrain_dfm.py"), "--config", BASE]
    for key, value in sets.items():
        argv += ["--set", f"{key}={json.dumps(value) if isinstance(value, bool) else value}"]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), DS_ACCELERATOR="cpu",
               TORCHDYNAMO_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    if nproc == 1:
        cmd = [sys.executable, *argv]
    else:
        from megadfm.training.distributed import free_port

        cmd = [os.path.join(os.path.dirname(sys.executable), "deepspeed"), "--num_accelerators", str(nproc),
               "--master_port", str(free_port()), *argv]
    log(f"{name}: training {steps} steps ({nproc} process{'es' if nproc > 1 else ''}) -> {run_dir}")
    with open(os.path.join(work, f"{name}.log"), "a", encoding="utf-8") as out:
        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0 or complete_step(run_dir) != steps:
        raise SystemExit(f"ar2dfm: stage {name} failed (exit {code}); see {os.path.join(work, name + '.log')}")
    return run_dir


def export_and_convert(work: str, ar_dir: str) -> str:
    """The AR run as a plain Qwen3 folder (checked with transformers), converted into a megadfm init folder."""
    from megadfm.conversion.export import export_to_hf
    from megadfm.conversion.hf_import import convert_hf_to_megadfm

    qwen3, init = os.path.join(work, "ar_qwen3"), os.path.join(work, "ar_init")
    if not os.path.isfile(os.path.join(qwen3, "megadfm_conversion.json")):
        log(f"export: {ar_dir} -> {qwen3} (--as-qwen3)")
        export_to_hf(ar_dir, qwen3, as_qwen3=True)
    from transformers import Qwen3ForCausalLM

    _, info = Qwen3ForCausalLM.from_pretrained(qwen3, local_files_only=True, output_loading_info=True)
    if any(info.values()):
        raise SystemExit(f"ar2dfm: transformers loaded {qwen3} with problems: {info}")
    log(f"export: transformers' Qwen3ForCausalLM loads {qwen3} (no missing or unexpected keys)")
    if not os.path.isfile(os.path.join(init, "megadfm_conversion.json")):
        log(f"convert: {qwen3} -> {init} (time conditioning adaln at zero, mask row = mean of the others)")
        convert_hf_to_megadfm(qwen3, init, time_conditioning="adaln", mask_row="mean")  # its mask row never trained
    return init


def evaluate(work: str, run_dirs: Dict[str, str], limit: int, documents: int, points: int, sampler: str = "euler-16",
             folder: str = "eval") -> Dict[str, Dict]:
    """infill + likelihood of every DFM run (tools/evaluate.py, one pinned sampler, one call for all runs not yet
    evaluated: the task set is built once); results are cached per run in WORK/<folder>."""
    import importlib.util

    out = os.path.join(work, folder)
    files = {name: {t: os.path.join(out, f"dfm_{name}", f"{t}.json") for t in ("infill", "likelihood")} for name in run_dirs}
    todo = [name for name in run_dirs if not all(os.path.isfile(f) for f in files[name].values())]
    if todo:
        spec = importlib.util.spec_from_file_location("evaluate_tool", os.path.join(REPO, "tools", "evaluate.py"))
        tool = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tool)
        log(f"eval: {', '.join(todo)} (infill {limit} tasks, likelihood {documents} documents, sampler {sampler})")
        models = [a for name in todo for a in ("--model", run_dirs[name])]
        code = tool.main([*models, "--tasks", "infill", "likelihood", "--limit", str(limit), "--documents", str(documents),
                          "--points", str(points), "--sampler", sampler, "--out", out, "--no-progress"])
        if code != 0:
            raise SystemExit(f"ar2dfm: evaluation failed (exit {code})")
    results = {}
    for name in run_dirs:
        results[name] = {}
        for task, path in files[name].items():
            with open(path, encoding="utf-8") as f:
                results[name][task] = json.load(f)
    return results


def report(work: str, run_dirs: Dict[str, str], evals: Dict[str, Dict], size: Dict[str, int],
           block_section: str = "") -> List[List[object]]:
    from megadfm.io_utils import write_text_atomic
    from megadfm.report.compare import comparison_page, first_step_reaching, html_table, markdown_table, val_curves

    curves = {name: val_curves(name, d) for name, d in run_dirs.items() if name in FULL_RUNS}  # as run (--mini skips some)
    target = curves["dfm_scratch"].final("loss")
    scratch_steps = size["dfm_steps"]
    headers = ["run", "final val loss", "final val CE", f"first step with val loss <= scratch's final ({target:.4g})"
               if target is not None else "first step <= scratch's final", "infill exact match", "infill parses",
               "ELBO NLL/token"]
    rows = []
    for name, c in curves.items():
        reach = first_step_reaching(c, target) if target is not None else None
        infill, nll = evals[name]["infill"]["scores"], evals[name]["likelihood"].get("nelbo_per_token")
        rows.append([name, _fmt(c.final("loss")), _fmt(c.final("ce")),
                     "never" if reach is None else f"{reach} ({reach / scratch_steps:.2f} of {scratch_steps})",
                     _pct(infill["exact_match"]), _pct(infill["parses"]), _fmt(nll)])
    ar_val = val_curves("ar", os.path.join(work, "ar"))
    notes = [f"Sizes: AR {size['ar_steps']} steps, every DFM run {size['dfm_steps']} steps, validation every "
             f"{size['val_interval']} steps; same model, data, seed. AR final validation CE (next token): "
             f"{_fmt(ar_val.final('ce'))}.",
             "Target: the AR-initialised run (dfm_from_ar) reaches dfm_scratch's final validation loss in <= 1/3 of the steps."]
    table = markdown_table(headers, rows)
    write_text_atomic(os.path.join(work, "report.md"), "# AR -> DFM adaptation\n\n" + "\n\n".join(notes) + "\n\n" + table
                      + "\n" + block_section)
    write_text_atomic(os.path.join(work, "report.html"),
                      comparison_page("AR -> DFM adaptation", list(curves.values()), html_table(headers, rows), notes))
    log(f"report: {os.path.join(work, 'report.md')}, {os.path.join(work, 'report.html')}")
    print(table, flush=True)
    return rows


def block_report(work: str, run_dirs: Dict[str, str], size: Dict[str, int]) -> str:
    """The full-vs-block section of report.md (examples/ar_to_dfm/block_comparison.py); also printed."""
    from megadfm.report.compare import markdown_table, val_curves

    compared = {n: run_dirs[n] for n in block_comparison.COMPARED}
    evals = evaluate(work, compared, size["eval_limit"], size["documents"], size["points"],
                     sampler=block_comparison.SAMPLER, folder="eval_block")
    speed = block_comparison.sampling_speed(work, compared, size["speed_tokens"], size["speed_batches"], log)
    curves = {n: val_curves(n, d) for n, d in compared.items()}
    completions = block_comparison.completion(work, compared, size["documents"], log)
    headers, rows = block_comparison.table(curves, evals, speed, completions, size["speed_batches"], _fmt, _pct)
    table = markdown_table(headers, rows)
    print(table, flush=True)
    return (f"\n## Full vs block DFM (block size {block_comparison.BLOCK_SIZE}), same AR init and steps\n\n"
            f"Infill and speed with the sampler {block_comparison.SAMPLER} for both; the block model decodes with its "
            f"exact prefix cache. Speed: {size['speed_tokens']} new tokens, greedy, EOS off, 1 thread, against "
            "transformers' generate of the AR model.\n\n" + table + "\n")


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _pct(score) -> str:
    return f"{100 * score['mean']:.1f} ± {100 * score['stderr']:.1f} %"


def ensure_data() -> None:
    """The demo's tokenized standard library (tools/preprocess_data.py skips it when up to date)."""
    cmd = [sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", sysconfig.get_paths()["stdlib"],
           "--glob", "**/*.py", "--exclude", "site-packages/*", "test/*", "idlelib/*", "--tokenizer",
           os.path.join(REPO, "artifacts", "tokenizer", "qwen3"), "--append-eod", "--output-prefix",
           os.path.join(REPO, "artifacts", "data", "stdlib"), "--workers", "2", "--no-progress"]
    subprocess.run(cmd, cwd=REPO, check=True)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=os.path.join(REPO, "runs", "ar_to_dfm"), help="Work folder (runs, exports, report).")
    p.add_argument("--mini", action="store_true", help="A few steps per stage, one process, every kind of stage but not every "
                                                      "variant (the test miniature).")
    p.add_argument("--nproc", type=int, default=None, help="Processes per training stage (default: 2; --mini: 1).")
    p.add_argument("--data", default=None, metavar="PREFIX",
                   help="An indexed dataset prefix (..._text_document) instead of the tokenized standard library "
                        "(artifacts/data/stdlib_text_document, built when missing).")
    args = p.parse_args(argv)
    size = dict(SIZES["mini" if args.mini else "full"])
    if args.nproc is not None:
        size["nproc"] = args.nproc
    os.makedirs(args.work, exist_ok=True)
    started = time.time()
    common = {"training.eval_interval": size["val_interval"], "training.eval_batches": size["val_batches"],
              "checkpoint.save_interval": size["val_interval"] * 4}
    if args.data:
        common["data.blend"] = json.dumps([{"prefix": os.path.abspath(args.data), "weight": 1.0}])
    else:
        ensure_data()
    ar_dir = train("ar", args.work, size["ar_steps"], {**AR, **common}, size["nproc"])
    init = export_and_convert(args.work, ar_dir)
    run_dirs = {}
    for name, (from_ar, overrides) in RUNS.items():
        if name in size.get("skip", []):
            continue
        overrides = {k: (max(1, size["dfm_steps"] // 4) if v == "QUARTER" else v) for k, v in overrides.items()}
        if from_ar:
            overrides["training.init_from"] = init
        run_dirs[name] = train(name, args.work, size["dfm_steps"], {**common, **overrides}, size["nproc"])
    evals = evaluate(args.work, {n: run_dirs[n] for n in FULL_RUNS if n in run_dirs}, size["eval_limit"], size["documents"],
                     size["points"])
    report(args.work, run_dirs, evals, size, block_report(args.work, run_dirs, size))
    log(f"done in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
