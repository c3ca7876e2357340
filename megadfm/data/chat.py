"""Instruction (chat) records -> ``(prompt_ids, response_ids)`` examples through a chat template.

Used by ``tools/preprocess_data.py --chat`` (which may import transformers; training ranks never
import this module). A record is one JSON object with either

- ``messages``: a list of ``{"role", "content"}`` (roles ``system``, ``user``, ``assistant``;
  an assistant message may also carry ``reasoning_content``), or
- ``prompt`` and ``response`` strings (and optionally ``system``): the same as the messages
  ``[system?, user: prompt, assistant: response]``.

How an example is cut from a conversation ending with an assistant turn (docs in README.md,
"Instruction (chat) data"):

- **prompt** = the template applied to every message before that turn with
  ``add_generation_prompt=True`` (for Qwen3: ``...<|im_start|>assistant\\n``);
- **response** = the rest of the template's rendering of the whole conversation: for Qwen3's last
  assistant turn that is ``<think>\\n\\n</think>\\n\\n`` (the empty think block the template writes
  for a final turn without reasoning), the content, and ``<|im_end|>``. The newline the template
  writes *after* ``<|im_end|>`` is a separator between turns that a model never generates, so it is
  left out unless ``turn_newline``: every response then ends with the end-of-turn token, which is
  what SFT rows expect (``data.sft.eos_token_id``, megadfm/data/sft.py).

``prompt_ids + response_ids`` are the ids of transformers' ``apply_chat_template`` of the whole
conversation (without its final newline unless ``turn_newline``): the split is taken on the ids of
the full rendering, and a template whose prompt rendering is not a prefix of it is an error, never
a silently different tokenization.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = ("role", "content", "reasoning_content")
END_OF_TURN = "<|im_end|>"
EMPTY_THINK = "<think>\n\n</think>\n\n"  # what the template writes before a final answer without reasoning
OVERLONG_POLICIES = ("truncate-prompt", "drop")

# Qwen3's chat format for system / user / assistant text messages (no tools), written for megadfm
# and stored in the offline-built tokenizer folder's tokenizer_config.json (tools/build_qwen_tokenizer.py):
# it renders what Qwen3's own template renders for these messages: a final assistant turn after the
# last user query gets a think block (empty without reasoning), earlier turns keep only their
# content (their reasoning is dropped), and enable_thinking=false puts the empty think block in the
# generation prompt. Roles other than the three are refused.
QWEN3_CHAT_TEMPLATE = r"""
{%- set ns = namespace(last_query=messages|length - 1) %}
{%- for message in messages %}
    {%- if message.role == 'user' and not (message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.last_query = loop.index0 %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role == 'system' or message.role == 'user' %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {%- set content = message.content %}
        {%- set reasoning = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query and (loop.last or reasoning) %}
            {{- '<|im_start|>assistant\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
        {%- else %}
            {{- '<|im_start|>assistant\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- else %}
        {{- raise_exception('megadfm Qwen3 template: unsupported role ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
""".strip()


class ChatError(ValueError):
    """A chat record (or the template) cannot give an example; the message names the file, line and field."""


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template and where it came from (recorded in the preprocessing summary)."""

    text: str
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChatExample:
    """One [prompt, response] example; ``turn`` is the index of its assistant message in the record."""

    prompt_ids: List[int]
    response_ids: List[int]
    turn: int

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


def resolve_chat_template(tokenizer_dir: str, tokenizer, template_path: Optional[str] = None) -> ChatTemplate:
    """The template to apply: ``template_path`` if given, else the tokenizer folder's own
    (chat_template.jinja or tokenizer_config.json, as transformers loads it; megadfm's offline Qwen3
    build writes QWEN3_CHAT_TEMPLATE there). A folder without one is a ChatError: guessing a format
    for another tokenizer would write wrong examples."""
    if template_path is not None:
        with open(template_path, encoding="utf-8") as f:
            return ChatTemplate(f.read(), f"file {os.path.abspath(template_path)}")
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, str) and own:
        return ChatTemplate(own, f"tokenizer folder {os.path.abspath(tokenizer_dir)}")
    if isinstance(own, dict):  # several named templates: which one is meant is the user's choice
        raise ChatError(f"{tokenizer_dir}: the tokenizer has several chat templates ({sorted(own)}); pass "
                        "--chat-template FILE with the one to apply")
    raise ChatError(f"{tokenizer_dir}: the tokenizer folder has no chat template (no chat_template.jinja, no "
                    "chat_template in tokenizer_config.json); pass --chat-template FILE (a megadfm Qwen3 folder built "
                    "before templates were written gets one from: python tools/build_qwen_tokenizer.py --out "
                    f"{tokenizer_dir})")


# -- records ---------------------------------------------------------------------------------

def iter_jsonl_objects(path: str) -> Iterator[Tuple[str, dict]]:
    """``(location "path:line", object)`` for every non-blank line of a .jsonl / .json / .jsonl.gz file."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue  # a blank line is not a record (e.g. a trailing newline)
            location = f"{path}:{lineno}"
            try:
                value = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ChatError(f"{location}: not UTF-8 ({e.reason} at byte {e.start})") from None
            except json.JSONDecodeError as e:
                raise ChatError(f"{location}: not a JSON line ({e.msg} at column {e.colno})") from None
            if not isinstance(value, dict):
                raise ChatError(f"{location}: expected a JSON object, got {type(value).__name__}")
            yield location, value


def conversation_of(record: dict, location: str) -> List[Dict[str, str]]:
    """The record's messages, validated: known roles, string contents, ending with a non-empty assistant turn."""
    if "messages" in record and ("prompt" in record or "response" in record):
        raise ChatError(f"{location}: has both 'messages' and 'prompt'/'response'; use one of them")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ChatError(f"{location}: field 'messages' must be a non-empty list of {{role, content}} objects")
        out = [_message(m, f"{location}: field 'messages[{i}]'") for i, m in enumerate(messages)]
    elif "prompt" in record or "response" in record:
        for key in ("prompt", "response"):
            if not isinstance(record.get(key), str):
                what = "missing" if key not in record else f"{type(record[key]).__name__}, expected a string"
                raise ChatError(f"{location}: field {key!r} is {what}")
        out = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
        if "system" in record:
            if not isinstance(record["system"], str):
                raise ChatError(f"{location}: field 'system' is {type(record['system']).__name__}, expected a string")
            out.insert(0, {"role": "system", "content": record["system"]})
    else:
        raise ChatError(f"{location}: no field 'messages' nor 'prompt'/'response' (fields: {sorted(record)})")
    if out[-1]["role"] != "assistant":
        raise ChatError(f"{location}: field 'messages[{len(out) - 1}]': the conversation ends with a "
                        f"{out[-1]['role']!r} turn, not an assistant turn (nothing to learn as the response)")
    if len(out) < 2:
        raise ChatError(f"{location}: field 'messages': a lone assistant turn has no prompt")
    for i, m in enumerate(out):
        if m["role"] == "assistant" and not m["content"].strip():
            raise ChatError(f"{location}: field 'messages[{i}].content': empty assistant content")
    return out


def _message(value: object, where: str) -> Dict[str, str]:
    if not isinstance(value, dict):
        raise ChatError(f"{where} is {type(value).__name__}, expected an object with 'role' and 'content'")
    unknown = sorted(set(value) - set(MESSAGE_KEYS))
    if unknown:  # e.g. tool_calls: dropping it silently would change what the template renders
        raise ChatError(f"{where}: unsupported key(s) {unknown} (supported: {list(MESSAGE_KEYS)})")
    role = value.get("role")
    if role not in ROLES:
        raise ChatError(f"{where}.role: unknown role {role!r} (expected one of {list(ROLES)})")
    for key in ("content", "reasoning_content"):
        if (key == "content" or key in value) and not isinstance(value.get(key), str):
            raise ChatError(f"{where}.{key} is {type(value.get(key)).__name__}, expected a string")
    if "reasoning_content" in value and role != "assistant":
        raise ChatError(f"{where}.reasoning_content: only assistant messages carry reasoning")
    return dict(value)


# -- examples --------------------------------------------------------------------------------

class ChatEncoder:
    """Turns validated conversations into token-id examples with one tokenizer and one template."""

    def __init__(self, tokenizer, template: ChatTemplate, all_turns: bool = False, turn_newline: bool = False,
                 end_of_turn: str = END_OF_TURN):
        self.tokenizer = tokenizer
        self.template = template
        self.all_turns = all_turns
        self.turn_newline = turn_newline
        self.end_of_turn = end_of_turn
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn)
        if self.end_of_turn_id is None or tokenizer.convert_ids_to_tokens(self.end_of_turn_id) != end_of_turn:
            raise ChatError(f"end-of-turn {end_of_turn!r} is not a token of the tokenizer")

    def render(self, messages: Sequence[Dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(list(messages), chat_template=self.template.text, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def encode_ids(self, text: str) -> List[int]:
        # what apply_chat_template(tokenize=True) does with the rendered text: no BOS/EOS added
        return self.tokenizer.encode(text, add_special_tokens=False)

    def generation_prompt(self, messages: Sequence[Dict[str, str]]) -> str:
        """The text a model continues to answer ``messages``: an example's prompt (training) and a chat
        request (tools/generate.py --chat, the evaluation's chat mode) are both this rendering, so
        training and sampling cannot disagree on the template."""
        return self.render(messages, add_generation_prompt=True)

    def generation_prompt_ids(self, messages: Sequence[Dict[str, str]]) -> List[int]:
        return self.encode_ids(self.generation_prompt(messages))

    def reply(self, generated_ids: Sequence[int]) -> str:
        """The answer in a generated response (special tokens kept visible, then :func:`reply_text`)."""
        return reply_text(self.tokenizer.decode(list(generated_ids), skip_special_tokens=False), self.end_of_turn)

    def example(self, messages: Sequence[Dict[str, str]], location: str, turn: Optional[int] = None) -> ChatExample:
        """The example whose response is the last message (an assistant turn) of ``messages``."""
        turn = len(messages) - 1 if turn is None else turn
        prompt_text = self.generation_prompt(messages[:-1])
        full_text = self.render(messages, add_generation_prompt=False)
        if not full_text.startswith(prompt_text):
            raise ChatError(f"{location}: field 'messages[{turn}]': the template renders the conversation up to this "
                            "turn differently from its generation prompt (e.g. two assistant turns in a row), so the "
                            "prompt is not a prefix of the conversation")
        prompt_ids, full_ids = self.encode_ids(prompt_text), self.encode_ids(full_text)
        if full_ids[:len(prompt_ids)] != prompt_ids:
            raise ChatError(f"{location}: field 'messages[{turn}]': the prompt's tokens are not a prefix of the "
                            "conversation's tokens (a token spans the prompt/response boundary)")
        response_ids = full_ids[len(prompt_ids):]
        if response_ids[-1:] != [self.end_of_turn_id]:
            newline_after_eot = (len(response_ids) >= 2 and response_ids[-2] == self.end_of_turn_id
                                 and self.tokenizer.decode(response_ids[-1:]) == "\n")
            if not newline_after_eot:
                raise ChatError(f"{location}: field 'messages[{turn}]': the template's rendering of this turn does not "
                                f"end with {self.end_of_turn!r} (optionally followed by a newline); check --end-of-turn")
            if not self.turn_newline:
                response_ids = response_ids[:-1]
        return ChatExample(prompt_ids, response_ids, turn)

    def examples(self, record: dict, location: str) -> List[ChatExample]:
        """The record's examples: its last assistant turn, or (all_turns) one per assistant turn, in order."""
        messages = conversation_of(record, location)
        if not self.all_turns:
            return [self.example(messages, location)]
        if messages[0]["role"] == "assistant":
            raise ChatError(f"{location}: field 'messages[0]': with --all-turns every assistant turn is an example, "
                            "and this one has no prompt before it")
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        return [self.example(messages[:i + 1], location, i) for i in turns]


def reply_text(decoded: str, end_of_turn: str = END_OF_TURN) -> str:
    """The answer in a decoded chat response: cut at the first end-of-turn (a sampler that already
    stopped there leaves none) and without the empty think block Qwen3's template puts before a final
    answer given without reasoning (a non-empty think block is kept: it is part of what the model said)."""
    text = decoded.split(end_of_turn, 1)[0]
    return text[len(EMPTY_THINK):] if text.startswith(EMPTY_THINK) else text


def fit_to_length(example: ChatExample, max_length: Optional[int], policy: str) -> Tuple[Optional[ChatExample], str]:
    """``(example or None, "kept" | "truncated" | "dropped")`` under ``--max-length`` / ``--overlong``.

    ``truncate-prompt`` cuts the prompt from the left (its oldest tokens go first, the generation
    prompt right before the response stays), keeping at least one prompt token because an SFT
    example is two non-empty sequences; an example whose response alone leaves no room is dropped.
    """
    if policy not in OVERLONG_POLICIES:
        raise ValueError(f"unknown overlong policy {policy!r}; expected one of {OVERLONG_POLICIES}")
    if max_length is None or len(example) <= max_length:
        return example, "kept"
    room = max_length - len(example.response_ids)
    if policy == "drop" or room < 1:
        return None, "dropped"
    return ChatExample(example.prompt_ids[-room:], example.response_ids, example.turn), "truncated"
