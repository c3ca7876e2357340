"""Load a local HF tokenizer folder (never the network) and make sure ``<|mask|>`` has its id.

Every tool (preprocessing, training, sampling, conversion) loads tokenizers through
:func:`load_tokenizer`, so they all agree on the mask token id.
"""

from __future__ import annotations

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
    if existing is None or existing == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(existing) != MASK_TOKEN:
        if len(tokenizer) != mask_token_id:
            raise TokenizerError(
                f"{path}: adding {MASK_TOKEN} would give it id {len(tokenizer)} (the tokenizer has {len(tokenizer)} "
                f"entries) but mask_token_id is {mask_token_id}")
        tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
        logger.info("added %s to the tokenizer from %s at id %d", MASK_TOKEN, path, mask_token_id)
        existing = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    if existing != mask_token_id:
        raise TokenizerError(f"{path}: {MASK_TOKEN} has id {existing}, but mask_token_id is {mask_token_id}")
    if tokenizer.mask_token != MASK_TOKEN:
        tokenizer.mask_token = MASK_TOKEN
    return tokenizer
