"""preprocess_data.py --chat and megadfm/data/chat.py with the real Qwen3 tokenizer and transformers' apply_chat_template."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from megadfm.data.chat import (QWEN3_CHAT_TEMPLATE, ChatEncoder, ChatError, ChatExample, conversation_of, fit_to_length,
                               resolve_chat_template)
from megadfm.data.indexed import IndexedDataset

from tests.conftest import PREPROCESS_TOOL as TOOL, preprocess

IM_START, IM_END, THINK, END_THINK, NEWLINE = 151644, 151645, 151667, 151668, 198

CONVERSATIONS = {
    "single": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    "system_multi_turn": [
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": "Reverse a list."},
        {"role": "assistant", "content": "<think>\nslicing\n</think>\n\nUse `xs[::-1]`."},
        {"role": "user", "content": "And in place?"},
        {"role": "assistant", "content": "    xs.reverse()\n"},  # leading spaces, trailing newline: a code body
    ],
    "last_turn_reasons": [{"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "4", "reasoning_content": "two and two"}],
}


@pytest.fixture(scope="module")
def encoder(qwen_tokenizer, tokenizer_dir) -> ChatEncoder:
    return ChatEncoder(qwen_tokenizer, resolve_chat_template(tokenizer_dir, qwen_tokenizer))


def hf_ids(tokenizer, messages, **kwargs):
    out = tokenizer.apply_chat_template(messages, chat_template=QWEN3_CHAT_TEMPLATE, tokenize=True, **kwargs)
    return list(out["input_ids"])


def test_offline_folder_gets_the_qwen3_template_and_its_documented_rendering(encoder, qwen_tokenizer):
    # the offline build writes the template into tokenizer_config.json, where transformers reads it
    assert encoder.template.source.startswith("tokenizer folder") and encoder.template.text == QWEN3_CHAT_TEMPLATE
    assert encoder.tokenizer.chat_template == QWEN3_CHAT_TEMPLATE
    # docs/FORMATS.md §2: Qwen3's rendering of one exchange (its trailing <|endoftext|> is the pretraining EOD)
    text = encoder.render(CONVERSATIONS["single"], add_generation_prompt=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nhello<|im_end|>\n"
    ex = encoder.example(CONVERSATIONS["single"], "x")
    assert ex.prompt_ids == [IM_START, 872, NEWLINE, 6023, IM_END, NEWLINE, IM_START, 77091, NEWLINE]
    assert ex.response_ids == [THINK, 271, END_THINK, 271, 14990, IM_END]  # the empty think block is the response's
    # enable_thinking=False moves that block into the generation prompt, as Qwen3's template does
    assert encoder.tokenizer.apply_chat_template(CONVERSATIONS["single"][:1], chat_template=QWEN3_CHAT_TEMPLATE,
                                                 tokenize=False, add_generation_prompt=True, enable_thinking=False) \
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_prompt_plus_response_are_transformers_ids_of_the_conversation(name, encoder, qwen_tokenizer):
    messages = CONVERSATIONS[name]
    full = hf_ids(qwen_tokenizer, messages)
    ex = encoder.example(messages, "x")
    assert ex.prompt_ids == hf_ids(qwen_tokenizer, messages[:-1], add_generation_prompt=True)
    assert full[-2:] == [IM_END, NEWLINE]  # the template ends the turn with <|im_end|> then a newline
    assert ex.prompt_ids + ex.response_ids == full[:-1] and ex.response_ids[-1] == IM_END
    with_newline = ChatEncoder(qwen_tokenizer, encoder.template, turn_newline=True).example(messages, "x")
    assert with_newline.prompt_ids + with_newline.response_ids == full
    assert ex.response_ids[0] == THINK


def test_multi_turn_keeps_earlier_turns_in_the_prompt_and_all_turns_splits_them(encoder, qwen_tokenizer):
    messages = CONVERSATIONS["system_multi_turn"]
    (last,) = encoder.examples({"messages": messages}, "x")
    prompt = qwen_tokenizer.decode(last.prompt_ids)
    assert prompt.startswith("<|im_start|>system\nYou write Python.<|im_end|>\n")
    assert "<|im_start|>assistant\nUse `xs[::-1]`.<|im_end|>\n" in prompt and "slicing" not in prompt  # reasoning dropped
    assert qwen_tokenizer.decode(last.response_ids) == "<think>\n\n</think>\n\n    xs.reverse()\n<|im_end|>"
    first, second = ChatEncoder(qwen_tokenizer, encoder.template, all_turns=True).examples({"messages": messages}, "x")
    assert (first.turn, second.turn) == (2, 4) and second == last
    # the first turn is the last of its own conversation: its reasoning is its response's think block
    assert qwen_tokenizer.decode(first.response_ids) == "<think>\nslicing\n</think>\n\nUse `xs[::-1]`.<|im_end|>"
    assert first.prompt_ids + first.response_ids == hf_ids(qwen_tokenizer, messages[:3])[:-1]


def test_prompt_response_record_is_a_user_and_an_assistant_turn(encoder):
    as_fields = encoder.examples({"system": "S", "prompt": "hi", "response": "hello"}, "x")
    as_messages = encoder.examples({"messages": [{"role": "system", "content": "S"}, *CONVERSATIONS["single"]]}, "x")
    assert as_fields == as_messages and len(as_fields) == 1


def test_overlong_truncate_prompt_from_the_left_or_drop():
    ex = ChatExample(list(range(10)), [100, 101, 102], 1)
    assert fit_to_length(ex, None, "drop") == (ex, "kept") and fit_to_length(ex, 13, "drop") == (ex, "kept")
    cut, status = fit_to_length(ex, 8, "truncate-prompt")
    assert status == "truncated" and cut.prompt_ids == [5, 6, 7, 8, 9] and cut.response_ids == [100, 101, 102]
    assert fit_to_length(ex, 4, "truncate-prompt")[0].prompt_ids == [9]
    assert fit_to_length(ex, 3, "truncate-prompt") == (None, "dropped")  # no room left for a prompt token
    assert fit_to_length(ex, 12, "drop") == (None, "dropped")


@pytest.mark.parametrize("record, field", [
    ({"text": "hello"}, "no field 'messages' nor 'prompt'/'response'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}, "'messages[1]'.role: unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "a"}]}, "'messages[0]': the conversation ends with a 'user' turn"),
    ({"prompt": "a"}, "field 'response' is missing"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": 3}]}, "'messages[1]'.content is int"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "tool_calls": []}]},
     "unsupported key(s) ['tool_calls']"),
])
def test_bad_records_name_the_field(record, field):
    with pytest.raises(ChatError, match="f.jsonl:7: ") as err:
        conversation_of(record, "f.jsonl:7")
    assert field in str(err.value)


def megatron_reader():
    """Megatron-LM's MMapIndexedDataset as DeepSpeed vendors it, loaded from its file (not deepspeed's __init__)."""
    root = importlib.util.find_spec("deepspeed").submodule_search_locations[0]
    path = os.path.join(root, "runtime", "data_pipeline", "data_sampling", "indexed_dataset.py")
    spec = importlib.util.spec_from_file_location("megatron_indexed_dataset", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MMapIndexedDataset


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def test_cli_output_is_two_sequence_documents_read_alike_by_megatron(tmp_path, preprocess_tool, qwen_tokenizer,
                                                                      tokenizer_dir, encoder):
    records = [{"messages": CONVERSATIONS["system_multi_turn"]}, {"prompt": "hi", "response": "hello"},
               {"messages": CONVERSATIONS["last_turn_reasons"]},
               {"prompt": "x " * 300, "response": "short"},  # over --max-length: its prompt is cut
               {"prompt": "q", "response": "y " * 300}]  # its response alone is over: dropped
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    summary = preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, [path], str(tmp_path / "sft"), "--chat",
                         "--all-turns", "--max-length", "120", "--overlong", "truncate-prompt")
    every_turn = ChatEncoder(qwen_tokenizer, encoder.template, all_turns=True)
    expected = [ex for r in records for ex in every_turn.examples(r, "x")]
    assert len(expected) == 6  # the multi-turn record gives two examples
    fitted = [fit_to_length(ex, 120, "truncate-prompt") for ex in expected]
    kept = [ex for ex, _ in fitted if ex is not None]
    assert [s for _, s in fitted] == ["kept"] * 4 + ["truncated", "dropped"]
    assert (summary["records"], summary["documents"]) == (5, 5)
    assert (summary["truncated_examples"], summary["dropped_examples"]) == (1, 1)
    assert summary["prompt_tokens"] == sum(len(e.prompt_ids) for e in kept) and summary["dtype"] == "int32"
    assert summary["chat_template"]["sha256"] == encoder.template.sha256
    prefix = str(tmp_path / "sft_chat_document")
    ours = IndexedDataset(prefix)
    theirs = megatron_reader()(prefix, skip_warmup=True)
    assert list(theirs.doc_idx) == list(ours.document_indices) == [0, 2, 4, 6, 8, 10]
    assert list(theirs.sizes) == [n for e in kept for n in (len(e.prompt_ids), len(e.response_ids))]
    for j, ex in enumerate(kept):
        assert theirs[2 * j].tolist() == ex.prompt_ids and theirs[2 * j + 1].tolist() == ex.response_ids
        assert ours.document(j).tolist() == ex.prompt_ids + ex.response_ids
    assert kept[-1].prompt_ids[-3:] == [IM_START, 77091, NEWLINE] and len(kept[-1]) == 120  # cut from the left
    stamp = os.stat(prefix + ".idx").st_mtime_ns
    again = preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, [path], str(tmp_path / "sft"), "--chat",
                       "--all-turns", "--max-length", "120", "--overlong", "truncate-prompt")
    assert again == summary and os.stat(prefix + ".idx").st_mtime_ns == stamp  # up to date: skipped
    dropped = preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, [path], str(tmp_path / "sft"), "--chat",
                         "--all-turns", "--max-length", "120")  # another option: rebuilt, --overlong drop
    assert (dropped["documents"], dropped["truncated_examples"], dropped["dropped_examples"]) == (4, 0, 2)


@pytest.mark.parametrize("line, field", [
    ({"text": "not chat"}, ":2: no field 'messages' nor 'prompt'/'response'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]}, ":2: field 'messages[1]'.role: unknown role"),
    ({"messages": [{"role": "user", "content": "a"}]}, ":2: field 'messages[0]': the conversation ends with a 'user' turn"),
])
def test_bad_line_is_one_error_and_nothing_is_left_written(tmp_path, preprocess_tool, qwen_tokenizer, tokenizer_dir,
                                                           line, field):
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "fine", "response": "ok"}, line])
    out = tmp_path / "out"
    with pytest.raises(preprocess_tool.PreprocessError) as err:
        preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, [path], str(out / "bad"), "--chat")
    assert f"{path}{field}" in str(err.value)
    assert os.listdir(out) == []  # the writer had started (line 1 was written): its temporaries are gone


def test_cli_reports_a_bad_line_in_one_line_with_exit_code_2(tmp_path, tokenizer_dir):
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "fine", "response": "ok"}, {"prompt": "no response"}])
    proc = subprocess.run([sys.executable, TOOL, "--chat", "--input", path, "--tokenizer", tokenizer_dir,
                           "--output-prefix", str(tmp_path / "out" / "bad"), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"preprocess_data.py: error: {path}:2: field 'response' is missing"
    assert os.listdir(tmp_path / "out") == []


def test_chat_flags_are_checked(preprocess_tool, capsys, tokenizer_dir):
    base = ["--input", "x.jsonl", "--tokenizer", tokenizer_dir, "--output-prefix", "p"]
    for extra, message in [(["--all-turns"], "--all-turns only apply with --chat"),
                           (["--chat", "--append-eod"], "--append-eod does not apply with --chat"),
                           (["--chat", "--workers", "2"], "--chat tokenizes in one process"),
                           (["--chat", "--max-length", "1"], "--max-length must be >= 2"),
                           (["--chat", "--overlong", "cut"], "invalid choice: 'cut'")]:
        with pytest.raises(SystemExit) as exit_:
            preprocess_tool.parse_args(base + extra)
        assert exit_.value.code == 2 and message in capsys.readouterr().err, extra


def test_folder_template_is_used_and_a_foreign_folder_without_one_is_refused(tmp_path, tokenizer_dir):
    from megadfm.data.tokenizer import load_tokenizer

    folder = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]  # a foreign (or old) folder without a template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ChatError, match="has no chat template .* pass --chat-template FILE"):
        resolve_chat_template(str(folder), load_tokenizer(str(folder)))
    own = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}" \
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    (folder / "chat_template.jinja").write_text(own)
    tokenizer = load_tokenizer(str(folder))
    template = resolve_chat_template(str(folder), tokenizer)
    assert template.text == own and template.source.startswith("tokenizer folder")
    ex = ChatEncoder(tokenizer, template).example(CONVERSATIONS["single"], "x")
    assert tokenizer.decode(ex.response_ids) == "hello<|im_end|>"  # this template writes no think block
    full = list(tokenizer.apply_chat_template(CONVERSATIONS["single"], tokenize=True)["input_ids"])  # the folder's
    assert ex.prompt_ids + ex.response_ids == full[:-1] and full[-1] == NEWLINE


def test_reply_text_cuts_at_end_of_turn_and_drops_only_an_empty_think_block():
    from megadfm.data.chat import reply_text

    assert reply_text("<think>\n\n</think>\n\nreturn x<|im_end|>ignored") == "return x"
    assert reply_text("return x") == "return x"  # a sampler that stopped at <|im_end|> leaves none
    # reasoning is part of what the model said: kept
    assert reply_text("<think>\nadd them\n</think>\n\n4<|im_end|>") == "<think>\nadd them\n</think>\n\n4"
    assert reply_text("x <think>\n\n</think>\n\n") == "x <think>\n\n</think>\n\n"  # only a leading block is the template's
