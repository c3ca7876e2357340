#!/usr/bin/env python
"""Build the real Qwen3 tokenizer offline (byte-identical tokenizer.json) plus <|mask|> = 151669.

tokenizer_config.json carries Qwen3's chat template (system/user/assistant text messages; see
megadfm/data/chat.py). A folder whose tokenizer.json is current but whose tokenizer_config.json
differs from this version's only has that file rewritten.

The source is ``qwen.tiktoken`` from the ``dashscope==2.0.2`` wheel on PyPI (Apache-2.0). It is
fetched with ``pip download --no-deps`` into --cache-dir unless --tiktoken points at a local copy.
Its sha256 is verified, and so is the sha256 of the built tokenizer.json against the official one.
The output folder loads with ``AutoTokenizer.from_pretrained(folder)`` with no network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megadfm.data.chat import QWEN3_CHAT_TEMPLATE  # noqa: E402
from megadfm.data.qwen_tokenizer_build import (  # noqa: E402
    ADDED_TOKENS, QWEN3_TOKENIZER_JSON_SHA256, TokenizerBuildError, build_tokenizer_json, fetch_tiktoken)
from megadfm.data.tokenizer import MASK_TOKEN  # noqa: E402
from megadfm.io_utils import give_default_permissions, sha256_file, write_text_atomic  # noqa: E402
from megadfm.model.config import MASK_TOKEN_ID  # noqa: E402

MANIFEST = "megadfm_tokenizer.json"


def tokenizer_config() -> dict:
    first = 151643
    decoder = {
        str(first + i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": s}
        for i, (c, s) in enumerate(ADDED_TOKENS)
    }
    decoder[str(MASK_TOKEN_ID)] = {"content": MASK_TOKEN, "lstrip": False, "normalized": False, "rstrip": False,
                                   "single_word": False, "special": True}
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "bos_token": None,
        # the chat format of Qwen3's own tokenizer_config.json for system/user/assistant text messages
        # (megadfm/data/chat.py): preprocess_data.py --chat, generate.py --chat and HF exports all read it here
        "chat_template": QWEN3_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "mask_token": MASK_TOKEN,
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def tokenizer_json_is_up_to_date(out: str) -> bool:
    manifest = os.path.join(out, MANIFEST)
    tok = os.path.join(out, "tokenizer.json")
    if not (os.path.isfile(manifest) and os.path.isfile(tok)):
        return False
    with open(manifest) as f:
        recorded = json.load(f)
    return recorded.get("tokenizer_json_sha256") == QWEN3_TOKENIZER_JSON_SHA256 == sha256_file(tok)


def tokenizer_config_text() -> str:
    return json.dumps(tokenizer_config(), indent=2, ensure_ascii=False)


def tokenizer_config_is_up_to_date(out: str) -> bool:
    path = os.path.join(out, "tokenizer_config.json")
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        return f.read() == tokenizer_config_text()


def build(out: str, tiktoken: str | None, cache_dir: str, force: bool) -> int:
    if not force and tokenizer_json_is_up_to_date(out):
        if not tokenizer_config_is_up_to_date(out):  # e.g. a folder built before the chat template was written
            write_text_atomic(os.path.join(out, "tokenizer_config.json"), tokenizer_config_text())
            print(f"[build_qwen_tokenizer] {out}: tokenizer.json is up to date; rewrote tokenizer_config.json "
                  "(it differed from this version's: special tokens, chat template)")
            return 0
        print(f"[build_qwen_tokenizer] {out} is up to date (tokenizer.json sha256 {QWEN3_TOKENIZER_JSON_SHA256[:12]}...)")
        return 0
    start = time.time()
    tiktoken = tiktoken or fetch_tiktoken(cache_dir)
    parent = os.path.dirname(os.path.abspath(out)) or "."
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tokenizer-build-", dir=parent)
    give_default_permissions(staging)  # the folder other users' runs read
    try:
        digest = build_tokenizer_json(tiktoken, os.path.join(staging, "tokenizer.json"))
        if digest != QWEN3_TOKENIZER_JSON_SHA256:
            raise TokenizerBuildError(f"built tokenizer.json has sha256 {digest}, expected the official "
                                      f"{QWEN3_TOKENIZER_JSON_SHA256} (tokenizers version differs?)")
        with open(os.path.join(staging, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            f.write(tokenizer_config_text())
        with open(os.path.join(staging, MANIFEST), "w") as f:
            json.dump({"source": "dashscope==2.0.2 qwen.tiktoken", "tiktoken_sha256": sha256_file(tiktoken),
                       "tokenizer_json_sha256": digest, "mask_token": MASK_TOKEN, "mask_token_id": MASK_TOKEN_ID}, f, indent=2)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    print(f"[build_qwen_tokenizer] wrote {out} in {time.time() - start:.1f}s: tokenizer.json sha256 {digest} "
          f"(matches the official Qwen3 file), {MASK_TOKEN} = {MASK_TOKEN_ID}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="artifacts/tokenizer/qwen3", help="output tokenizer folder (default: %(default)s)")
    parser.add_argument("--tiktoken", default=None, help="local qwen.tiktoken; default: extract from the dashscope wheel")
    parser.add_argument("--cache-dir", default=".cache/dl", help="where the dashscope wheel is downloaded/kept (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder is up to date")
    args = parser.parse_args(argv)
    try:
        return build(args.out, args.tiktoken, args.cache_dir, args.force)
    except TokenizerBuildError as e:
        print(f"[build_qwen_tokenizer] error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
