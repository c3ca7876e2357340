"""Load a local HF tokenizer folder (never the network) and make sure ``<|mask|>`` has its id.

Every tool (preprocessing, training, sampling, conversion) loads tokenizers through
:func:`load_tokenizer`, so they all agree on the mask token id.
"""

from __future__ import annotations

import json
import logging
import os

from megadfm.model.config import MASK_TOKEN_ID

logger = logging.getLogger(__name__)

MASK_TOKEN = "<|mask|>"
BUILD_COMMAND = "python tools/build_qwen_tokenizer.py --out {path}"


class TokenizerError(RuntimeError):
    """A tokenizer folder is missing, incomplete or disagrees with the configured mask id."""


def check_tokenizer_folder(path: str) -> None:
    """TokenizerError naming the folder and the build command unless ``path`` looks like a HF tokenizer folder.

    For code that reads the folder's files itself (hashes them) before or without loading it.
    """
    if not os.path.isdir(path):
        raise TokenizerError(
            f"tokenizer folder not found: {os.path.abspath(path)}. Build the Qwen3 tokenizer offline with: "
            f"{BUILD_COMMAND.format(path=path)} (or point data.tokenizer at a local HF tokenizer folder)")
    known = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    if not any(os.path.isfile(os.path.join(path, f)) for f in known):
        raise TokenizerError(f"{os.path.abspath(path)} holds none of {', '.join(known)}: not a HF tokenizer folder. "
                             f"Build one with: {BUILD_COMMAND.format(path=path)}")


def load_tokenizer(path: str, mask_token_id: int = MASK_TOKEN_ID):
    """Load the tokenizer in folder ``path`` with local files only; add ``<|mask|>`` if absent.

    Raises :class:`TokenizerError` naming the folder (and the command that builds it) when the
    folder or its files are missing, and when ``<|mask|>`` is or would be at an id other than
    ``mask_token_id``.
    """
    check_tokenizer_folder(path)
    from transformers import AutoTokenizer

    # local_files_only: a folder path never falls back to the hub, whatever the environment says.
    # trust_remote_code=False: a folder whose config.json has auto_map code (megadfm's own HF export) otherwise makes
    # transformers ask "run the custom code? [y/N]" on stdin; the tokenizer class comes from tokenizer_config.json.
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    existing = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    if existing is not None and (existing == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(existing) != MASK_TOKEN):
        existing = None  # an unknown token maps to unk, not to None
    if _mask_needs_adding(path, existing, len(tokenizer), mask_token_id):
        tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
        logger.info("added %s to the tokenizer from %s at id %d", MASK_TOKEN, path, mask_token_id)
    if tokenizer.mask_token != MASK_TOKEN:
        tokenizer.mask_token = MASK_TOKEN
    return tokenizer


def _mask_needs_adding(path: str, existing, size: int, mask_token_id: int) -> bool:
    """The one rule for ``<|mask|>``: present at ``mask_token_id``, or absent with ``mask_token_id`` the next
    free id (then it is added). ``existing``: its id in the folder, None when absent."""
    if existing is None:
        if size != mask_token_id:
            raise TokenizerError(f"{path}: adding {MASK_TOKEN} would give it id {size} (the tokenizer has {size} "
                                 f"entries) but mask_token_id is {mask_token_id}")
        return True
    if existing != mask_token_id:
        raise TokenizerError(f"{path}: {MASK_TOKEN} has id {existing}, but mask_token_id is {mask_token_id}")
    return False


def tokenizer_size(path: str, mask_token_id: int = MASK_TOKEN_ID) -> int:
    """``len(load_tokenizer(path, mask_token_id))``, with the same checks, from the folder's files alone.

    A training rank needs only the size, and importing transformers and building its tokenizer cost each
    rank about 4 s of start-up. transformers' size is the ``tokenizers`` vocabulary of ``tokenizer.json``
    plus the ``added_tokens_decoder`` entries of ``tokenizer_config.json`` beyond it (that is where
    megadfm's built Qwen3 tokenizer keeps ``<|mask|>``). Folders without a tokenizer.json use load_tokenizer."""
    check_tokenizer_folder(path)
    tokenizer_json = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(tokenizer_json):
        return len(load_tokenizer(path, mask_token_id))
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(tokenizer_json)
    except Exception as e:  # the tokenizers library raises a bare Exception for a file it cannot parse
        raise TokenizerError(f"{tokenizer_json}: not a readable tokenizer.json ({e})") from e
    ids = set(tokenizer.get_vocab(with_added_tokens=True).values())
    existing = tokenizer.token_to_id(MASK_TOKEN)
    for token_id, entry in _added_tokens_decoder(path).items():
        ids.add(token_id)
        if entry.get("content") == MASK_TOKEN:
            existing = token_id
    size = len(ids)
    return size + 1 if _mask_needs_adding(path, existing, size, mask_token_id) else size


def _added_tokens_decoder(path: str) -> dict:
    config_path = os.path.join(path, "tokenizer_config.json")
    if not os.path.isfile(config_path):
        return {}
    with open(config_path, encoding="utf-8") as f:
        try:
            entries = json.load(f).get("added_tokens_decoder", {})
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{config_path}: not valid JSON ({e})") from e
    return {int(token_id): entry for token_id, entry in entries.items()}
