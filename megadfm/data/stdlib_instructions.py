"""An offline instruction set from the CPython standard library: "write the body of this function".

For every function defined at module level or directly in a class (methods; functions nested in
functions are not examples) that has a docstring and a body of ``MIN_BODY_LINES``..``MAX_BODY_LINES``
lines, one record:

- ``prompt``: an instruction naming the function and its module, then its signature and docstring
  exactly as written in the file (dedented);
- ``response``: the body, i.e. the source lines of the statements after the docstring, dedented;
- ``source``: ``relative/path.py:line`` of the ``def``; ``function``: its qualified name.

Body lines are the lines the statements after the docstring span (first statement's first line to
the function's last line, blank and comment lines inside included); the docstring never counts.
Records are split into train / held-out **by file**, so no module's functions are on both sides:
a file is held out when the first 8 hex digits of sha256(relative path) fall in the lowest
``heldout_percent`` of the range, which is deterministic and independent of which other files exist.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sysconfig
import textwrap
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

MIN_BODY_LINES, MAX_BODY_LINES = 3, 40
SKIPPED_DIRS = ("site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__")
INSTRUCTION = ("Write the body of the Python function `{qualname}` from the standard library module `{module}`. "
               "Its signature and docstring are below; reply with the body only (the statements after the "
               "docstring, without the def line or the docstring).\n\n{header}")


@dataclass(frozen=True)
class FunctionExample:
    """One prompt/response record (``to_json`` gives the JSONL line's fields)."""

    prompt: str
    response: str
    source: str
    function: str

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "response": self.response, "source": self.source, "function": self.function}


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def stdlib_files(root: str, limit: Optional[int] = None) -> List[str]:
    """Relative paths (``/``-separated, sorted walk) of the .py files under ``root``, SKIPPED_DIRS left out."""
    out: List[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                out.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
                if limit is not None and len(out) >= limit:
                    return out
    return out


def is_heldout(relpath: str, heldout_percent: float) -> bool:
    """The file's split: a hash of its relative path, so a file's functions all go to one side."""
    bucket = int(hashlib.sha256(relpath.encode("utf-8")).hexdigest()[:8], 16) / 16 ** 8
    return bucket < heldout_percent / 100.0


def module_name(relpath: str) -> str:
    parts = relpath[:-len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _functions(tree: ast.Module) -> Iterator[Tuple[str, ast.AST]]:
    """(qualified name, node) of module-level functions and of functions directly in (nested) classes."""
    def visit(body: Sequence[ast.stmt], prefix: str) -> Iterator[Tuple[str, ast.AST]]:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield prefix + node.name, node
            elif isinstance(node, ast.ClassDef):
                yield from visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.If, ast.Try)):  # e.g. `if sys.platform == ...: def f(): ...`
                for block in [node.body, node.orelse] + [h.body for h in getattr(node, "handlers", [])] \
                        + [getattr(node, "finalbody", [])]:
                    yield from visit(block, prefix)
    yield from visit(tree.body, "")


def function_examples(source: str, relpath: str, skipped: Counter) -> List[FunctionExample]:
    """The examples of one file's source; every function left out adds one to ``skipped[reason]``."""
    lines = source.splitlines()
    out: List[FunctionExample] = []
    for qualname, node in _functions(ast.parse(source)):
        if ast.get_docstring(node) is None:
            skipped["no docstring"] += 1
            continue
        doc_node, statements = node.body[0], node.body[1:]
        if doc_node.lineno == node.lineno:  # `def f(): "doc"`: no signature line of its own
            skipped["docstring on the def line"] += 1
            continue
        if not statements:
            skipped[f"body under {MIN_BODY_LINES} lines"] += 1
            continue
        first = min([statements[0].lineno] + [d.lineno for d in getattr(statements[0], "decorator_list", [])])
        if first == doc_node.end_lineno:  # `"""doc"""; x = 1`: the body cannot be cut from the docstring by lines
            skipped["body on the docstring's line"] += 1
            continue
        n_lines = node.end_lineno - first + 1
        if n_lines < MIN_BODY_LINES:
            skipped[f"body under {MIN_BODY_LINES} lines"] += 1
            continue
        if n_lines > MAX_BODY_LINES:
            skipped[f"body over {MAX_BODY_LINES} lines"] += 1
            continue
        header = textwrap.dedent("\n".join(lines[node.lineno - 1:doc_node.end_lineno]))
        body = textwrap.dedent("\n".join(lines[first - 1:node.end_lineno]))
        out.append(FunctionExample(INSTRUCTION.format(qualname=qualname, module=module_name(relpath), header=header),
                                   body, f"{relpath}:{node.lineno}", f"{module_name(relpath)}.{qualname}"))
    return out


@dataclass
class BuildResult:
    """The two splits and the counts the tool prints."""

    train: List[FunctionExample]
    heldout: List[FunctionExample]
    files: int
    train_files: int
    heldout_files: int
    skipped_functions: Counter
    skipped_files: Counter

    def summary(self) -> dict:
        return {"files": self.files, "train_files": self.train_files, "heldout_files": self.heldout_files,
                "functions_kept": len(self.train) + len(self.heldout), "train_examples": len(self.train),
                "heldout_examples": len(self.heldout), "skipped_functions": dict(sorted(self.skipped_functions.items())),
                "skipped_files": dict(sorted(self.skipped_files.items())),
                "body_lines": [MIN_BODY_LINES, MAX_BODY_LINES]}


def build(root: str, heldout_percent: float = 10.0, limit: Optional[int] = None) -> BuildResult:
    """Every example of the .py files under ``root`` (at most ``limit`` files), split by file.

    A file that is not UTF-8 or does not parse with this Python (e.g. lib2to3 fixtures) gives no
    examples and is counted under ``skipped_files`` by reason, never silently missing."""
    result = BuildResult([], [], 0, 0, 0, Counter(), Counter())
    for relpath in stdlib_files(root, limit):
        result.files += 1
        try:
            with open(os.path.join(root, relpath), encoding="utf-8") as f:
                examples = function_examples(f.read(), relpath, result.skipped_functions)
        except UnicodeDecodeError:
            result.skipped_files["not UTF-8"] += 1
            continue
        except SyntaxError:
            result.skipped_files["does not parse with this Python"] += 1
            continue
        heldout = is_heldout(relpath, heldout_percent)
        (result.heldout if heldout else result.train).extend(examples)
        if heldout:
            result.heldout_files += 1
        else:
            result.train_files += 1
    return result
