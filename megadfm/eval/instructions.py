"""Instruction following, scored on held-out instruction/response pairs answered in chat mode.

The default set is the held-out split of the standard-library instruction set
(megadfm/data/stdlib_instructions.py: "write the body of this function"; files are split by a
hash of their path, so none of these functions was trained on). Each instruction is sent through
the model's chat template (EvalModel.chat_complete: the prompt is rendered exactly as
``preprocess_data.py --chat`` rendered the training prompts, sampling stops at ``<|im_end|>``).

Scores, each a mean over problems with its standard error:

- ``exact_match``: the reply equals the reference response, trailing whitespace of the whole text
  ignored (a final newline is not a different body);
- ``parse_rate``: the reply parses as Python and has at least one statement (``ast.parse``; the
  parser accepts a body's ``return`` / ``yield`` at top level, so a correct body always parses);
- ``finished``: the reply ended with the end-of-turn token within the token budget.
"""

from __future__ import annotations

import ast
import hashlib
import json
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from megadfm.eval.pass_at_k import mean_and_stderr


class InstructionSetError(ValueError):
    """An instruction file cannot be read; the message names the file, line and field."""


def load_instruction_file(path: str) -> List[Dict[str, str]]:
    """``[{"prompt", "response", ...}]`` from a JSONL file (tools/build_stdlib_instructions.py writes them)."""
    records: List[Dict[str, str]] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InstructionSetError(f"{path}:{number}: not a JSON line ({err.msg})") from None
            for key in ("prompt", "response"):
                if not isinstance(record, dict) or not isinstance(record.get(key), str):
                    raise InstructionSetError(f"{path}:{number}: field {key!r} must be a string")
            records.append(record)
    if not records:
        raise InstructionSetError(f"{path}: no instruction records")
    return records


def heldout_stdlib_instructions() -> List[Dict[str, str]]:
    """The held-out split of the stdlib instruction set of this Python, built in memory (deterministic)."""
    from megadfm.data.stdlib_instructions import build, stdlib_root

    return [e.to_json() for e in build(stdlib_root()).heldout]


def parses(text: str) -> bool:
    """The reply is Python with at least one statement (blank or comment-only text is not a body)."""
    with warnings.catch_warnings():  # invalid escape sequences in generated code are not what is measured
        warnings.simplefilter("ignore", SyntaxWarning)
        try:
            return bool(ast.parse(text).body)
        except (SyntaxError, ValueError):  # ValueError: source with a NUL byte
            return False


def evaluate_instructions(reply: Callable[[List[str]], List[Tuple[str, bool]]], records: Sequence[Dict[str, str]],
                          batch_size: int = 8, progress: bool = True) -> Dict[str, Any]:
    """Score ``reply(prompts) -> [(text, finished)]`` on ``records``; ``per_problem`` keeps every reply
    next to its reference and its scores, so a number can be audited."""
    if not records:
        raise ValueError("evaluate_instructions: no records")
    per_problem: List[Dict[str, Any]] = []
    with tqdm(total=len(records), unit="problem", desc="instructions", disable=not progress, dynamic_ncols=True) as bar:
        for lo in range(0, len(records), batch_size):
            chunk = records[lo:lo + batch_size]
            replies = reply([r["prompt"] for r in chunk])
            if len(replies) != len(chunk):
                raise ValueError(f"evaluate_instructions: reply() returned {len(replies)} replies for {len(chunk)} prompts")
            for record, (text, done) in zip(chunk, replies):
                scores = {"exact_match": float(text.rstrip() == record["response"].rstrip()),
                          "parse_rate": float(parses(text)), "finished": float(done)}
                per_problem.append({"source": record.get("source"), "function": record.get("function"), "reply": text,
                                    "reference": record["response"], **scores})
            bar.update(len(chunk))
    out: Dict[str, Any] = {}
    for metric in ("exact_match", "parse_rate", "finished"):
        mean, err = mean_and_stderr([p[metric] for p in per_problem])
        out[metric] = {"mean": mean, "stderr": err}
    return {"task": "instructions", "problems": len(per_problem), "scores": out, "per_problem": per_problem}


def describe_source(path: Optional[str], records: Sequence[Dict[str, str]]) -> Dict[str, Any]:
    """Which instruction set was scored: its file (None: built in memory) and a hash of its pairs."""
    digest = hashlib.sha256("".join(json.dumps([r["prompt"], r["response"]]) for r in records).encode()).hexdigest()
    return {"file": path, "built_from": None if path else "held-out stdlib instructions (megadfm/data/stdlib_instructions.py)",
            "records": len(records), "sha256": digest}
