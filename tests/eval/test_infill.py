"""Infill tasks from held-out stdlib files: determinism, the split, scoring, and an overfit model that fills them."""

from __future__ import annotations

import ast
import importlib.util
import json
import os

import pytest

from megadfm.data.indexed import IndexedDataset
from megadfm.data.packing import split_ranges
from megadfm.data.sources import discover
from megadfm.dfm.sampler import generate
from megadfm.dfm.sampler_config import SamplerConfig
from megadfm.eval.infill import (DEMO_EXCLUDE, DEMO_GLOB, DEMO_SPLIT, InfillTask, InfillTaskSet, build_infill_tasks,
                                 evaluate_infill, held_out_files, infill_token_budget, load_tasks, score_infill,
                                 stdlib_root, write_tasks)
from megadfm.eval.pass_at_k import mean_and_stderr
from megadfm.tokens import ENDOFTEXT_TOKEN_ID

from .helpers import overfit_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_task_file_is_deterministic(tmp_path):
    held = held_out_files(stdlib_root())
    a, b = build_infill_tasks(held, 60, 0), build_infill_tasks(held, 60, 0)
    write_tasks(str(tmp_path / "a.json"), a)
    write_tasks(str(tmp_path / "b.json"), b)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    loaded = load_tasks(str(tmp_path / "a.json"))
    assert loaded.tasks == a.tasks and loaded.meta == a.meta
    assert a.meta["tasks_sha256"] == b.meta["tasks_sha256"]
    assert build_infill_tasks(held, 60, 1).meta["tasks_sha256"] != a.meta["tasks_sha256"]

    meta = a.meta
    assert meta["python_version"] and meta["generator"]["seed"] == 0 and meta["generator"]["n_tasks"] == 60
    assert meta["held_out"]["valid_files"] + meta["held_out"]["test_files"] == held.held_out
    assert sorted(meta["files_sha256"]) == sorted(held.held_out)
    assert len({t.task_id for t in a.tasks}) == 60
    assert {t.kind for t in a.tasks} == {"line", "span"}
    for t in a.tasks:
        assert t.file in held.held_out
        ast.parse(t.prefix + t.middle + t.suffix)  # the context is a self-contained function
        n = t.middle.count("\n")
        assert (n == 1) if t.kind == "line" else (2 <= n <= 4), t.task_id
        assert t.prefix.startswith(("def ", "async def ", "@")) and t.suffix.strip(), t.task_id
        assert score_infill(t, t.middle) == {"exact_match": True, "parses": True}


def test_tampered_task_file_is_refused(tmp_path):
    path = tmp_path / "tasks.json"
    write_tasks(str(path), build_infill_tasks(held_out_files(stdlib_root()), 4, 0))
    data = json.loads(path.read_text())
    data["tasks"][0]["middle"] += "x"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="tasks_sha256"):
        load_tasks(str(path))


def test_held_out_files_are_disjoint_from_training():
    root = stdlib_root()
    held = held_out_files(root)
    documents = [os.path.relpath(s.path, root) for s in discover([root], DEMO_GLOB, list(DEMO_EXCLUDE))]
    ranges = split_ranges(len(documents), DEMO_SPLIT)  # the loader's own split of the demo's documents
    assert [held.ranges[n] for n in ("train", "valid", "test")] == ranges
    for name, (a, b) in zip(("train", "valid", "test"), ranges):
        assert held.files[name] == documents[a:b]
    assert held.held_out and not set(held.held_out) & set(held.files["train"])
    assert held.meta()["split"] == list(DEMO_SPLIT) and held.meta()["num_documents"] == len(documents)
    assert not any(f.startswith(("test/", "idlelib/", "site-packages/")) for f in held.held_out)


def _preprocess_module():
    spec = importlib.util.spec_from_file_location("preprocess_data", os.path.join(REPO, "tools", "preprocess_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_held_out_from_summary_names_the_documents(tmp_path, tokenizer_dir, qwen_tokenizer):
    """Preprocess a real stdlib folder; document j of every held-out range is the file held_out_files names."""
    root, split = os.path.join(stdlib_root(), "encodings"), [0.9, 0.05, 0.05]
    prep = _preprocess_module()
    prefix = str(tmp_path / "enc")
    prep.run(prep.parse_args(["--input", root, "--glob", "*.py", "--tokenizer", tokenizer_dir, "--append-eod",
                              "--output-prefix", prefix, "--no-progress"]), tokenizer=qwen_tokenizer)
    held = held_out_files(root, split, summary=prefix + "_summary.json")
    assert held.files == held_out_files(root, split, glob="*.py", exclude=()).files
    assert held.source["summary"]["options"]["glob"] == "*.py"
    ds = IndexedDataset(prefix + "_text_document")
    assert [held.ranges[n] for n in ("train", "valid", "test")] == split_ranges(ds.num_documents, split)
    assert len(held.held_out) >= 4
    for name in ("valid", "test"):
        first, _ = held.ranges[name]
        for j, rel in enumerate(held.files[name], first):
            with open(os.path.join(root, rel), "rb") as f:
                ids = qwen_tokenizer.encode(f.read().decode("utf-8"), add_special_tokens=False)
            assert ds.document(j).tolist() == (ids + [ENDOFTEXT_TOKEN_ID] if ids else []), rel


TASK = InfillTask("t0", "x.py", "f", "line", "def f(x):\n    y = x + 1\n", "    z = y * 2\n", "    return z\n")


@pytest.mark.parametrize("filled, exact, parses", [
    ("    z = y * 2\n", True, True),
    ("    z = y * 2   \n\n", True, True),  # trailing whitespace and blank lines do not count
    ("    z = y * 2", True, False),  # the suffix then joins the line: exact, but the program is broken
    ("    z = y + 2\n", False, True),
    ("z = y * 2\n", False, False),  # wrong indentation
    ("    z = (y\n", False, False),
    ("", False, True),
])
def test_score_infill(filled, exact, parses):
    assert score_infill(TASK, filled) == {"exact_match": exact, "parses": parses}


def test_evaluate_infill_scores_and_checks_fill():
    tasks = build_infill_tasks(held_out_files(stdlib_root()), 10, 0)
    right = {t.prefix: t.middle for t in tasks.tasks[:4]}
    out = evaluate_infill(lambda items: [right.get(p, "") for p, _ in items], tasks, progress=False, batch_size=3)
    exact = [float(t.prefix in right) for t in tasks.tasks]
    assert out["task"] == "infill" and out["num_tasks"] == 10 and out["task_meta"] == tasks.meta
    assert (out["scores"]["exact_match"]["mean"], out["scores"]["exact_match"]["stderr"]) == mean_and_stderr(exact)
    assert [p["exact_match"] for p in out["per_task"]] == [bool(x) for x in exact]
    with pytest.raises(ValueError, match="expected a list of 3 strings"):
        evaluate_infill(lambda items: [""], tasks, progress=False, batch_size=3)


def test_overfit_model_fills_its_blanks_exactly(qwen_tokenizer):
    m = overfit_model(qwen_tokenizer)
    taskset = InfillTaskSet(m.tasks, {"note": "the overfit functions"})
    budget = {(t.prefix, t.suffix): infill_token_budget(qwen_tokenizer, t) for t in m.tasks}

    def fill_with(model):
        def fill(items):
            out = generate(model, [m.to_compact(p) for p, _ in items], [budget[item] for item in items],
                           SamplerConfig(method="confidence", steps=16, temperature=0.0, eos_token_id=None), m.dfm,
                           suffixes=[m.to_compact(s) + [m.eod] for _, s in items], mask_token_id=m.mask_id,
                           pad_token_id=m.eod)
            return [m.to_text(tokens) for tokens in out.tokens]
        return fill

    result = evaluate_infill(fill_with(m.model), taskset, progress=False)
    assert {t.kind for t in m.tasks} == {"line", "span"}
    assert [p["filled"] for p in result["per_task"]] == [t.middle for t in m.tasks]
    assert result["scores"]["exact_match"] == {"mean": 1.0, "stderr": 0.0}
    assert result["scores"]["parses"] == {"mean": 1.0, "stderr": 0.0}
    # The same harness on the untrained twin does not: the exact matches come from the training.
    assert evaluate_infill(fill_with(m.fresh), taskset, progress=False)["scores"]["exact_match"]["mean"] == 0.0
