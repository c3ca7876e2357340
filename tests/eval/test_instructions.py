"""The instructions task: held-out instruction/response pairs answered in chat mode, scored by exact
match, parse rate and whether the reply ended (hand-computed on fixed replies), and evaluate.py
--tasks instructions --chat end to end on a tiny DFM and an AR baseline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from megadfm.data.chat import QWEN3_CHAT_TEMPLATE, ChatTemplate
from megadfm.eval.instructions import (InstructionSetError, evaluate_instructions, heldout_stdlib_instructions,
                                       load_instruction_file, parses)
from tests.conftest import REPO
from tests.eval.test_evaluate_tool import models  # noqa: F401 (fixture)

RECORDS = [{"prompt": "a", "response": "return x"}, {"prompt": "b", "response": "y = 1\nreturn y"},
           {"prompt": "c", "response": "pass"}, {"prompt": "d", "response": "return 0"}]


def test_scores_match_a_hand_count():
    replies = {"a": ("return x\n", True),            # exact (trailing whitespace ignored), parses
               "b": ("y = 1\nreturn  y", True),      # not exact, parses
               "c": ("   ", False),                  # blank: neither exact nor a body
               "d": ("return (", False)}             # does not parse
    out = evaluate_instructions(lambda prompts: [replies[p] for p in prompts], RECORDS, batch_size=3, progress=False)
    assert out["problems"] == 4
    assert out["scores"]["exact_match"]["mean"] == 0.25
    assert out["scores"]["parse_rate"]["mean"] == 0.5
    assert out["scores"]["finished"]["mean"] == 0.5
    assert len(out["per_problem"]) == 4 and out["per_problem"][0] == {"source": None, "function": None, "reply": "return x\n", "reference": "return x",
                                 "exact_match": 1.0, "parse_rate": 1.0, "finished": 1.0}
    assert not parses("# only a comment") and parses("yield x") and parses("return 1")


def test_instruction_file_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n" + json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(InstructionSetError, match=r"bad.jsonl:2: field 'response' must be a string"):
        load_instruction_file(str(path))


def test_default_set_is_the_heldout_stdlib_split():
    from megadfm.data.stdlib_instructions import is_heldout

    records = heldout_stdlib_instructions()
    assert len(records) > 100
    assert all(is_heldout(r["source"].split(":")[0], 10.0) for r in records)


def test_evaluate_tool_chat_mode_end_to_end(models, tmp_path):  # noqa: F811
    instructions = tmp_path / "heldout.jsonl"
    instructions.write_text("".join(json.dumps(r) + "\n" for r in RECORDS[:3]))
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO, "tools", "evaluate.py"), "--model", str(models / "dfm"),
           "--ar-baseline", str(models / "ar"), "--tasks", "instructions", "humaneval", "--chat", "--limit", "2",
           "--instructions", str(instructions), "--instructions-max-new-tokens", "6", "--max-new-tokens", "6",
           "--sampler", "euler-16", "--steps", "3", "--timeout", "5", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sha = ChatTemplate(QWEN3_CHAT_TEMPLATE, "").sha256
    for label in ("dfm_dfm", "ar_ar"):
        with open(out / label / "instructions.json") as f:
            doc = json.load(f)
        assert doc["problems"] == 2 and set(doc["scores"]) == {"exact_match", "parse_rate", "finished"}
        assert doc["chat"]["template_sha256"] == sha and doc["chat"]["end_of_turn"] == "<|im_end|>"
        assert doc["task_meta"]["records"] == 3 and doc["task_meta"]["subset"] == 2
        assert doc["generation"]["new_tokens"] <= 2 * 6
        with open(out / label / "humaneval.json") as f:
            assert json.load(f)["chat"]["template_sha256"] == sha
    assert "| instructions |" in proc.stdout
