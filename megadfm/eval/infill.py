"""Code infilling on held-out functions of the Python standard library.

A task blanks one line (``line``) or a span of 2-4 consecutive lines (``span``) in the interior of a
function body; the model sees the rest of the function (``prefix`` before the blank, ``suffix``
after it) and must write the ``middle``. The context is the function's own source, dedented so that
it parses on its own (a method becomes a top-level ``def``), not the whole file: tasks stay short
enough for small models, and ``prefix + middle + suffix`` always parses.

**Held out.** Tasks come only from files of the valid and test splits of the demo's corpus. The
preprocessing (tools/preprocess_data.py) reads a ``--glob``'d folder as one document per file, in
the order of :func:`megadfm.data.sources.discover` (sorted paths), so document j is file j; the
splits are the contiguous document ranges of :func:`megadfm.data.packing.split_ranges`, the very
function the loader uses. :func:`held_out_files` reproduces that order either by calling
``discover`` with the same folder, glob and excludes, or from a preprocessing's
``{prefix}_summary.json`` (its ``input_files`` list is in document order).

**Length oracle.** A DFM fills a fixed number of masked positions, so the DFM adapter is told the
true middle's length in tokens (:func:`infill_token_budget`), as the standard infilling evaluations
of masked-diffusion models do. Scores of a model given this oracle are not comparable to those of
a model that decides the length itself.

Scores: ``exact_match`` compares the middles line by line after stripping trailing whitespace of
every line and trailing blank lines; ``parses`` is whether ``prefix + filled + suffix`` parses.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import random
import sysconfig
import textwrap
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from tqdm import tqdm

from megadfm.data.packing import SPLIT_NAMES, split_ranges
from megadfm.data.sources import discover, kind_of_file
from megadfm.eval.pass_at_k import mean_and_stderr
from megadfm.io_utils import sha256_file, write_text_atomic

DEMO_GLOB = "**/*.py"  # examples/demo.sh's preprocessing of the standard library
DEMO_EXCLUDE = ("site-packages/*", "test/*", "idlelib/*")
DEMO_SPLIT = (0.98, 0.01, 0.01)  # DataConfig.split's default, which examples/tiny_cpu.yaml keeps
TASKS_FORMAT = "megadfm.infill_tasks/1"
KINDS = ("line", "span")


def stdlib_root() -> str:
    """The running interpreter's standard library folder (the demo's ``$STDLIB``)."""
    return sysconfig.get_paths()["stdlib"]


@dataclass(frozen=True)
class HeldOut:
    """Which files of a corpus folder are documents of which split."""

    split: Tuple[float, ...]
    ranges: Dict[str, Tuple[int, int]]  # split name -> [first, end) document indices
    files: Dict[str, List[str]]  # split name -> files relative to the folder, in document order
    source: Dict[str, object]  # how the document order was obtained

    @property
    def held_out(self) -> List[str]:
        """Valid then test files: the only ones tasks may come from."""
        return self.files["valid"] + self.files["test"]

    def meta(self) -> Dict[str, object]:
        """JSON-ready record (the train file list is summarised by its range and count)."""
        return {"split": list(self.split), "num_documents": sum(len(v) for v in self.files.values()),
                "ranges": {k: list(v) for k, v in self.ranges.items()}, "source": self.source,
                "valid_files": self.files["valid"], "test_files": self.files["test"]}


def held_out_files(root: str, split: Sequence[float] = DEMO_SPLIT, *, glob: str = DEMO_GLOB,
                   exclude: Sequence[str] = DEMO_EXCLUDE, summary: Optional[str] = None) -> HeldOut:
    """The split of the files under ``root`` that a preprocessing of ``root`` plus ``data.split`` gives.

    Without ``summary`` the documents are what ``discover([root], glob, exclude)`` finds (what the
    preprocessing would read today). With ``summary`` (a ``{prefix}_summary.json``) they are the
    files that preprocessing actually read, in its order; ``glob``/``exclude`` are then ignored
    and its own options are recorded. ``root`` is the ``--input`` folder; paths are made relative to it.
    """
    root = os.path.abspath(root)
    if summary is None:
        paths = [s.path for s in discover([root], glob, list(exclude))]
        source: Dict[str, object] = {"discover": {"glob": glob, "exclude": list(exclude)}}
    else:
        paths, source = _summary_paths(summary)
    rel = []
    for p in paths:
        r = os.path.relpath(p, root)
        if r.startswith(os.pardir + os.sep) or os.path.isabs(r):
            raise ValueError(f"{summary or root}: input file {p} is not inside the folder {root}")
        rel.append(r.replace(os.sep, "/"))
    ranges = split_ranges(len(rel), split)
    return HeldOut(tuple(float(x) for x in split), {n: ranges[i] for i, n in enumerate(SPLIT_NAMES)},
                   {n: rel[a:b] for n, (a, b) in zip(SPLIT_NAMES, ranges)}, source)


def _summary_paths(summary: str) -> Tuple[List[str], Dict[str, object]]:
    """Input files of a preprocessing summary in document order, and what to record about it."""
    with open(summary, encoding="utf-8") as f:
        data = json.load(f)
    for key in ("input_files", "documents", "options"):
        if key not in data:
            raise ValueError(f"{summary}: no field {key!r}; not a tools/preprocess_data.py summary")
    paths = [str(x["path"]) for x in data["input_files"]]
    not_text = [p for p in paths if kind_of_file(p) != "text"]
    if not_text:  # a JSONL/parquet file holds many documents: file j would not be document j
        raise ValueError(f"{summary}: input {not_text[0]} is not a plain text file; documents cannot be mapped to files")
    if data["options"].get("max_documents") is not None:
        paths = paths[: int(data["documents"])]  # the preprocessing stopped after that many files
    if len(paths) != int(data["documents"]):
        raise ValueError(f"{summary}: {data['documents']} documents but {len(paths)} input files")
    return paths, {"summary": {"fingerprint": data.get("fingerprint"), "options": data["options"]}}


@dataclass
class InfillTask:
    task_id: str
    file: str  # relative to the standard library folder
    function: str  # qualified name, e.g. "ZipFile.close"
    kind: str  # "line" or "span"
    prefix: str
    middle: str
    suffix: str


@dataclass
class InfillTaskSet:
    tasks: List[InfillTask]
    meta: Dict[str, object] = field(default_factory=dict)


def _functions(node: ast.AST, scope: str = ""):
    """(qualified name, node) of every function under ``node``, in source order."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield scope + child.name, child
            yield from _functions(child, f"{scope}{child.name}.<locals>.")
        elif isinstance(child, ast.ClassDef):
            yield from _functions(child, f"{scope}{child.name}.")
        else:
            yield from _functions(child, scope)


def _read_lines(root: str, rel: str) -> Tuple[str, List[str]]:
    path = os.path.join(root, rel)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 ({e})") from None
    # Only "\n" may separate lines below ("\f" and friends are whitespace to ast, not line breaks).
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text, text.split("\n")


def _candidates(root: str, rel: str, min_body_lines: int, max_function_lines: int):
    """(qualname, first line of the file, dedented lines, first body line index, end index) per usable function."""
    text, lines = _read_lines(root, rel)
    try:
        tree = ast.parse(text, filename=rel)
    except SyntaxError as e:
        raise ValueError(f"{os.path.join(root, rel)}: does not parse ({e})") from None
    for name, node in _functions(tree):
        start = min([d.lineno for d in node.decorator_list] + [node.lineno])
        body = node.body
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body = body[1:]  # the docstring is not code to infill
        if not body or node.end_lineno - start + 1 > max_function_lines:
            continue
        first_body, end = body[0].lineno - start, node.end_lineno - start + 1  # indices into the snippet
        if end - first_body < min_body_lines:
            continue
        snippet = textwrap.dedent("".join(line + "\n" for line in lines[start - 1: node.end_lineno]))
        try:  # dedent keeps the indentation when a string has lines at column 0: then it cannot stand alone
            ast.parse(snippet)
        except SyntaxError:
            continue
        yield name, start, snippet.split("\n")[:-1], first_body, end


def _blank(kind: str, lines: List[str], first: int, end: int, span_lines: Tuple[int, int], rng: random.Random):
    """[a, b) lines to blank strictly inside the body (a context line on each side), or None."""
    real = [bool(x.strip()) and not x.strip().startswith("#") for x in lines]
    sizes = [1] if kind == "line" else list(range(span_lines[0], span_lines[1] + 1))
    options = [(a, a + k) for k in sizes for a in range(first + 1, end - k) if real[a] and real[a + k - 1]]
    return rng.choice(options) if options else None


def build_infill_tasks(files: Union[HeldOut, Sequence[str]], n_tasks: int, seed: int, *, root: Optional[str] = None,
                       kinds: Sequence[str] = KINDS, span_lines: Tuple[int, int] = (2, 4), min_body_lines: int = 3,
                       max_function_lines: int = 40) -> InfillTaskSet:
    """``n_tasks`` tasks, at most one per function, drawn with ``random.Random(seed)``; deterministic.

    ``files``: a :class:`HeldOut` (its valid + test files; the split goes into the metadata) or
    files relative to ``root`` (default: the standard library). Kinds alternate in ``kinds`` order.
    Functions longer than ``max_function_lines`` (decorators included) are skipped.
    """
    if any(k not in KINDS for k in kinds) or not kinds:
        raise ValueError(f"kinds: {list(kinds)}; each must be one of {KINDS}")
    if not 1 <= span_lines[0] <= span_lines[1]:
        raise ValueError(f"span_lines: {span_lines} must be (lo, hi) with 1 <= lo <= hi")
    root = os.path.abspath(root or stdlib_root())
    held = files if isinstance(files, HeldOut) else None
    names = list(held.held_out if held else files)
    candidates = [(rel, *c) for rel in names for c in _candidates(root, rel, min_body_lines, max_function_lines)]
    rng = random.Random(seed)
    rng.shuffle(candidates)
    tasks: List[InfillTask] = []
    for rel, name, start, lines, first, end in candidates:
        if len(tasks) == n_tasks:
            break
        kind = kinds[len(tasks) % len(kinds)]
        span = _blank(kind, lines, first, end, span_lines, rng)
        if span is None:
            continue
        a, b = span
        text = [x + "\n" for x in lines]
        tasks.append(InfillTask(f"{rel}:{name}:{kind}@L{start + a}", rel, name, kind, "".join(text[:a]),
                                "".join(text[a:b]), "".join(text[b:])))
    if len(tasks) < n_tasks:
        raise ValueError(f"only {len(tasks)} of n_tasks={n_tasks} tasks can be made from {len(names)} files "
                         f"({len(candidates)} usable functions); lower n_tasks or raise max_function_lines")
    meta = {
        "format": TASKS_FORMAT, "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "generator": {"n_tasks": n_tasks, "seed": seed, "kinds": list(kinds), "span_lines": list(span_lines),
                      "min_body_lines": min_body_lines, "max_function_lines": max_function_lines, "context": "function"},
        "held_out": held.meta() if held else {"files": names},
        "files_sha256": {rel: sha256_file(os.path.join(root, rel)) for rel in names},
        "tasks_sha256": tasks_sha256(tasks),
    }
    return InfillTaskSet(tasks, meta)


def tasks_sha256(tasks: Sequence[InfillTask]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces, UTF-8) of the task list."""
    canonical = json.dumps([asdict(t) for t in tasks], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def write_tasks(path: str, taskset: InfillTaskSet) -> None:
    write_text_atomic(path, json.dumps({"meta": taskset.meta, "tasks": [asdict(t) for t in taskset.tasks]},
                                       indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def load_tasks(path: str) -> InfillTaskSet:
    """Read a task file; its tasks must still hash to the recorded ``tasks_sha256``."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    meta = data.get("meta", {})
    if meta.get("format") != TASKS_FORMAT:
        raise ValueError(f"{path}: meta.format is {meta.get('format')!r}, expected {TASKS_FORMAT!r}")
    names = [f.name for f in InfillTask.__dataclass_fields__.values()]
    tasks = []
    for i, t in enumerate(data.get("tasks", [])):
        if sorted(t) != sorted(names):
            raise ValueError(f"{path}: tasks[{i}] has fields {sorted(t)}, expected {sorted(names)}")
        tasks.append(InfillTask(**t))
    digest = tasks_sha256(tasks)
    if digest != meta.get("tasks_sha256"):
        raise ValueError(f"{path}: the tasks hash to {digest}, meta.tasks_sha256 says {meta.get('tasks_sha256')}")
    return InfillTaskSet(tasks, meta)


def _norm(text: str) -> List[str]:
    lines = [x.rstrip() for x in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def score_infill(task: InfillTask, filled: str) -> Dict[str, bool]:
    try:
        ast.parse(task.prefix + filled + task.suffix)
        parses = True
    except (SyntaxError, ValueError):  # ValueError: source with a NUL byte; a failed fill, not an error
        parses = False
    return {"exact_match": _norm(filled) == _norm(task.middle), "parses": parses}


def infill_token_budget(tokenizer, task: InfillTask) -> int:
    """Tokens of the TRUE middle: the length oracle a DFM infill is given (see the module docstring).

    The middle is encoded on its own, as an adapter encodes prefix and suffix on their own; this can
    differ by a token from its share of ``prefix + middle + suffix`` encoded at once (a suffix that
    starts with a blank line merges with the middle's last newline in Qwen3's pre-tokenizer).
    """
    return len(tokenizer.encode(task.middle, add_special_tokens=False))


def evaluate_infill(fill: Callable[[List[Tuple[str, str]]], List[str]], tasks: Union[InfillTaskSet, Sequence[InfillTask]],
                    progress: bool = True, batch_size: int = 8) -> Dict[str, object]:
    """Score ``fill`` (``[(prefix, suffix), ...] -> [middle, ...]``), called on batches of ``batch_size`` tasks."""
    meta = tasks.meta if isinstance(tasks, InfillTaskSet) else {}
    items = list(tasks.tasks if isinstance(tasks, InfillTaskSet) else tasks)
    if not items:
        raise ValueError("evaluate_infill: no tasks")
    per_task = []
    with tqdm(total=len(items), unit="task", desc="infill", disable=not progress, dynamic_ncols=True) as bar:
        for i in range(0, len(items), batch_size):
            chunk = items[i: i + batch_size]
            filled = fill([(t.prefix, t.suffix) for t in chunk])
            if not isinstance(filled, list) or len(filled) != len(chunk) or not all(isinstance(x, str) for x in filled):
                raise ValueError(f"fill returned {type(filled).__name__} for tasks {chunk[0].task_id}..; expected a list "
                                 f"of {len(chunk)} strings")
            for t, text in zip(chunk, filled):
                per_task.append({"task_id": t.task_id, "kind": t.kind, **score_infill(t, text), "filled": text})
            bar.update(len(chunk))
    scores = {}
    for metric in ("exact_match", "parses"):
        mean, err = mean_and_stderr([float(p[metric]) for p in per_task])
        scores[metric] = {"mean": mean, "stderr": err}
    return {"task": "infill", "num_tasks": len(per_task), "scores": scores, "per_task": per_task, "task_meta": meta}
