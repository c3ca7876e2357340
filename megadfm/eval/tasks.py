"""The evaluation tasks, registered by name: ``run(model, settings) -> result dict`` each.

A new task is one function here (or in its own file, imported below) plus ``@EVAL_TASKS.register``.
Each returns the task's scores (``{"scores": {name: {"mean", "stderr"}}}`` or likelihood numbers)
and whatever is needed to read them; tools/evaluate.py adds the model, sampler and speed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from megadfm.eval.models import EvalModel
from megadfm.registry import Registry

logger = logging.getLogger("megadfm.eval")

EVAL_TASKS = Registry("eval task")


@dataclass
class TaskSettings:
    """What a run of the tasks needs besides the model (tools/evaluate.py flags; EvalConfig in training)."""

    limit: Optional[int] = None                    # first N problems of every task (a quick subset)
    humaneval_samples: int = 1                     # completions per problem (pass@k needs k <= this)
    humaneval_ks: Tuple[int, ...] = (1,)
    humaneval_max_new_tokens: int = 128
    timeout_s: float = 10.0
    workers: int = 2                               # parallel sandboxed executions
    infill_tasks: Optional[str] = None             # task file; None: built from the held-out stdlib files
    infill_count: int = 200
    infill_seed: int = 0
    data_prefix: Optional[str] = None              # likelihood: held-out documents of this indexed dataset
    data_split: Sequence[float] = (0.98, 0.01, 0.01)
    likelihood_documents: int = 32
    likelihood_seq_len: int = 128
    likelihood_points: int = 16
    instructions_file: Optional[str] = None        # instruction JSONL (prompt/response); None: held-out stdlib set
    instructions_max_new_tokens: int = 256
    chat: bool = False                             # humaneval: send each prompt through the chat template
    seed: int = 0
    progress: bool = True
    shard: Tuple[int, int] = (0, 1)                # (rank, world size): this process evaluates items rank::world
    cache: Dict[str, Any] = field(default_factory=dict)


def _shard(items: List[Any], shard: Tuple[int, int]) -> List[Any]:
    rank, world = shard
    return items[rank::world]


@EVAL_TASKS.register("humaneval")
def run_humaneval(model: EvalModel, s: TaskSettings) -> Dict[str, Any]:
    from megadfm.eval.humaneval import evaluate_humaneval, load_problems
    from megadfm.eval.sandbox import SandboxLimits

    problems = load_problems()
    problems = _shard(problems[: s.limit] if s.limit else problems, s.shard)
    if s.chat:  # the prompt is the user message; the reply (end of turn stripped) is the completion
        def complete(prompts):
            return [text for text, _ in model.chat_complete(prompts, s.humaneval_max_new_tokens)]
    else:
        def complete(prompts):
            return model.complete(prompts, s.humaneval_max_new_tokens)
    result = evaluate_humaneval(complete, problems, n_samples=s.humaneval_samples, ks=s.humaneval_ks,
                                limits=SandboxLimits(timeout_s=s.timeout_s), workers=s.workers, progress=s.progress)
    result["chat"] = _chat_record(model) if s.chat else None
    return result


def _chat_record(model: EvalModel) -> Dict[str, Any]:
    template = model.chat_encoder().template
    return {"template_source": template.source, "template_sha256": template.sha256,
            "end_of_turn": model.chat_encoder().end_of_turn}


@EVAL_TASKS.register("instructions")
def run_instructions(model: EvalModel, s: TaskSettings) -> Dict[str, Any]:
    """Held-out instruction/response pairs answered in chat mode: exact match, parse rate, finished."""
    from megadfm.eval.instructions import (describe_source, evaluate_instructions, heldout_stdlib_instructions,
                                           load_instruction_file)

    if "instructions" not in s.cache:
        s.cache["instructions"] = (load_instruction_file(s.instructions_file) if s.instructions_file
                                   else heldout_stdlib_instructions())
    records = s.cache["instructions"]
    subset = _shard(records[: s.limit] if s.limit else records, s.shard)
    result = evaluate_instructions(lambda prompts: model.chat_complete(prompts, s.instructions_max_new_tokens), subset,
                                   batch_size=model.batch_size, progress=s.progress)
    result["task_meta"] = {**describe_source(s.instructions_file, records), "subset": len(subset),
                           "max_new_tokens": s.instructions_max_new_tokens}
    result["chat"] = _chat_record(model)
    return result


def infill_taskset(s: TaskSettings):
    """The task file if given, else the deterministic build from the held-out stdlib files (cached per run)."""
    from megadfm.eval.infill import build_infill_tasks, held_out_files, load_tasks, stdlib_root

    if "infill" not in s.cache:
        if s.infill_tasks:
            s.cache["infill"] = load_tasks(s.infill_tasks)
        else:
            s.cache["infill"] = build_infill_tasks(held_out_files(stdlib_root()), s.infill_count, s.infill_seed)
    return s.cache["infill"]


@EVAL_TASKS.register("infill")
def run_infill(model: EvalModel, s: TaskSettings) -> Dict[str, Any]:
    from megadfm.eval.infill import evaluate_infill, infill_token_budget

    taskset = infill_taskset(s)
    tasks = _shard(list(taskset.tasks[: s.limit] if s.limit else taskset.tasks), s.shard)
    # the sampler is told the true middle's length (the oracle length of the standard DFM infill evaluations)
    budget = {(t.prefix, t.suffix): infill_token_budget(model.tokenizer, t) for t in tasks}
    result = evaluate_infill(lambda items: model.fill([(p, x, budget[(p, x)]) for p, x in items]), tasks, progress=s.progress)
    result["task_meta"] = dict(result.get("task_meta") or taskset.meta, subset=len(tasks))
    result["infill_mode"] = model.infill_mode
    return result


@EVAL_TASKS.register("likelihood")
def run_likelihood(model: EvalModel, s: TaskSettings) -> Dict[str, Any]:
    from megadfm.eval.heldout_data import document_batches, heldout_documents
    from megadfm.eval.likelihood import ar_nll, dfm_nelbo

    if not s.data_prefix:
        raise ValueError("likelihood needs held-out tokens: pass --data PREFIX (an indexed dataset), or evaluate a DFM run "
                         "whose config names its data")
    docs = _shard(heldout_documents(s.data_prefix, s.data_split, "valid", s.likelihood_seq_len,
                                    s.limit or s.likelihood_documents), s.shard)
    batches = list(document_batches(docs, model.batch_size, model.pad_token_id))
    if model.kind == "dfm":
        from megadfm.dfm.schedulers import make_scheduler

        out = dfm_nelbo(model.model, batches, model.dfm, make_scheduler(model.dfm), num_points=s.likelihood_points,
                        seed=s.seed, pad_token_id=model.pad_token_id)
    else:
        out = ar_nll(model.model, batches)
    out["data"] = {"prefix": os.path.abspath(s.data_prefix), "split": "valid", "split_fractions": list(s.data_split),
                   "documents": len(docs), "seq_len": s.likelihood_seq_len}
    return out


def run_task(model: EvalModel, task: str, settings: TaskSettings):
    """(result, generation stats of this task alone, wall seconds) of one registered task."""
    import time

    before, start = model.stats.as_dict(), time.perf_counter()
    result = EVAL_TASKS.get(task)(model, settings)
    wall = time.perf_counter() - start
    after = model.stats.as_dict()
    generation = {k: after[k] - before[k] for k in ("nfe", "nfe_full", "nfe_block", "new_tokens", "seconds", "generate_calls")}
    generation["tokens_per_s"] = generation["new_tokens"] / generation["seconds"] if generation["seconds"] > 0 else None
    return result, generation, wall
