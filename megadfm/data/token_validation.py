"""Token ids of every blend prefix checked against the tokenizer before training starts.

An id at or above the vocabulary otherwise surfaces as an IndexError in the embedding mid-run,
naming no dataset; an id between the tokenizer's size and ``model.vocab_size`` (Qwen3 pads its
embedding) trains silently on a row no text maps to; and ``<|mask|>`` in clean data makes the DFM
loss infinite (its logit is forced to -inf). So each prefix's smallest and largest id and whether
the mask id occurs are computed once -- one pass over the .bin, cached next to the index arrays
(megadfm/data/index_cache.py) -- and offending data is refused naming the prefix, the first
offending document and the id. Only that refusal rescans the file, to find the document.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from megadfm.data.config import DataConfig
from megadfm.data.index_cache import cached_arrays, file_sha256
from megadfm.data.indexed import IndexedDataset, bin_path, idx_path
from megadfm.data.loader import resolve_cache_dir
from megadfm.data.packing import DataError

logger = logging.getLogger(__name__)

STATS_VERSION = 1  # bump when the cached array's meaning changes
_SCAN_TOKENS = 1 << 24  # tokens per chunk of a scan: bounded memory whatever the .bin size


class TokenIdError(DataError):
    """A prefix holds token ids the model must never see; the message names prefix, document and id."""


@dataclass(frozen=True)
class TokenStats:
    min_id: int  # -1 (and max_id -1) for a dataset without tokens
    max_id: int
    has_mask: bool
    num_tokens: int


def scan_token_stats(ix: IndexedDataset, mask_token_id: int) -> np.ndarray:
    """int64 [min id, max id, mask id occurs (0/1), tokens] of the whole .bin, in one chunked pass."""
    lo, hi, has_mask = None, -1, False
    # a mask id the dtype cannot hold (uint16 data, Qwen3's mask) cannot occur in the file
    mask_fits = mask_token_id <= np.iinfo(ix.dtype).max
    for start in range(0, ix.num_tokens, _SCAN_TOKENS):
        chunk = ix.tokens(start, _SCAN_TOKENS)
        lo = int(chunk.min()) if lo is None else min(lo, int(chunk.min()))
        hi = max(hi, int(chunk.max()))
        has_mask = has_mask or (mask_fits and bool((chunk == mask_token_id).any()))
    return np.asarray([-1 if lo is None else lo, hi, int(has_mask), ix.num_tokens], dtype=np.int64)


def token_stats(ix: IndexedDataset, cache_dir: str, mask_token_id: int) -> TokenStats:
    """The stats of ``ix``, built once and cached (collective when torch.distributed is initialized)."""
    st = os.stat(bin_path(ix.prefix))
    # the .idx hash pins the document layout; size and mtime of the .bin catch a rewritten .bin
    # without hashing gigabytes on every start
    description = {"version": STATS_VERSION, "idx_sha256": file_sha256(idx_path(ix.prefix)), "bin_bytes": st.st_size,
                   "bin_mtime_ns": st.st_mtime_ns, "mask_token_id": mask_token_id}
    arrays = cached_arrays(cache_dir, "tokens", description, ["stats"], lambda: {"stats": scan_token_stats(ix, mask_token_id)})
    lo, hi, mask, n = (int(x) for x in arrays["stats"])
    return TokenStats(lo, hi, bool(mask), n)


def first_offending(ix: IndexedDataset, bad: Callable[[np.ndarray], np.ndarray]) -> Optional[Tuple[int, int, int]]:
    """(document, token offset within it, id) of the first token where ``bad(tokens)`` is True, or None."""
    for start in range(0, ix.num_tokens, _SCAN_TOKENS):
        hits = np.flatnonzero(bad(ix.tokens(start, _SCAN_TOKENS)))
        if hits.size:
            pos = start + int(hits[0])
            starts = ix.document_token_starts()
            # side="right": an empty document shares its start with the next one, which holds the token
            doc = int(np.searchsorted(starts, pos, side="right")) - 1
            return doc, pos - int(starts[doc]), int(ix.tokens(pos, 1)[0])
    return None


def check_token_ids(ix: IndexedDataset, stats: TokenStats, tokenizer_size: int, vocab_size: int, mask_token_id: int,
                    tokenizer: str) -> None:
    """Raise :class:`TokenIdError` if ``ix`` holds a negative id, an id >= the tokenizer's size (or the
    model's vocab_size, if smaller) or the mask id."""
    limit = min(tokenizer_size, vocab_size)
    what = (f"the tokenizer's size {tokenizer_size} ({tokenizer})" if limit == tokenizer_size
            else f"model.vocab_size {vocab_size} (the tokenizer {tokenizer} has {tokenizer_size} entries)")
    if stats.num_tokens and (stats.min_id < 0 or stats.max_id >= limit):
        doc, off, bad_id = first_offending(ix, lambda t: (t < 0) | (t >= limit))
        raise TokenIdError(
            f"{bin_path(ix.prefix)}: document {doc} (of {ix.num_documents}), token {off}, holds id {bad_id}; ids must be >= 0 and below {what} "
            f"(ids in this file span [{stats.min_id}, {stats.max_id}]): it was tokenized with another tokenizer or is "
            f"corrupt. Re-run tools/preprocess_data.py --tokenizer {tokenizer}, or set data.tokenizer to the tokenizer it was made with.")
    if stats.has_mask:
        doc, off, bad_id = first_offending(ix, lambda t: t == mask_token_id)
        raise TokenIdError(
            f"{bin_path(ix.prefix)}: document {doc} (of {ix.num_documents}), token {off}, holds the <|mask|> id {bad_id}: the corruption token must never be in "
            "clean data (its logit is forced to -inf, so the loss would be infinite). The text likely contains the "
            "literal string '<|mask|>'; remove it from the source and re-run tools/preprocess_data.py.")


def validate_blend_token_ids(cfg: DataConfig, tokenizer_size: int, vocab_size: int, mask_token_id: int) -> Dict[str, TokenStats]:
    """Check every prefix of ``cfg.blend``; returns their stats. Collective like the index builders."""
    cache_dir = resolve_cache_dir(cfg)
    out: Dict[str, TokenStats] = {}
    for source in cfg.blend:
        ix = IndexedDataset(source.prefix)
        stats = token_stats(ix, cache_dir, mask_token_id)
        check_token_ids(ix, stats, tokenizer_size, vocab_size, mask_token_id, cfg.tokenizer)
        logger.info("%s: %d tokens, ids in [%d, %d], no <|mask|>", source.prefix, stats.num_tokens, stats.min_id, stats.max_id)
        out[source.prefix] = stats
    return out
