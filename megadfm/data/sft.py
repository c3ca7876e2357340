"""Supervised fine-tuning rows: whole instruction examples, one per row or packed (``data.format: sft``).

Storage convention: an example is ONE document of the usual .bin/.idx made of TWO sequences,
[prompt, response] (``IndexedDatasetWriter.add_document(tokens, sequence_lengths=[p, r])``); the
response ends with the end-of-turn token. An example is never cut: its prompt and response must
be in the same row for the response to be conditioned on the prompt. So, unlike pre-training
(packing.py), a row is a group of whole examples and the rest of the row is a tail:

- ``packing: false``: one example per row;
- ``packing: true``: the split's examples in one seeded order, each row taking the next examples
  while they fit (each example is its own ``cu_seqlens`` segment, so examples never attend to each
  other, exactly as packed pre-training documents).

The tail follows ``sft.padding``: ``eos_train`` fills it with ``sft.eos_token_id`` and appends it
to the row's last example (attended, ``loss_mask`` True, scored as response: LLaDA's recipe);
``exclude`` fills it with ``pad_token_id`` as its own segment with ``loss_mask`` False (as the
last pre-training sample of an epoch).

**Overlong examples are refused**: if any example of the split has more than ``seq_len`` tokens,
building the split raises a DataError naming the prefix, the first such document index, its
prompt/response lengths and how many there are (at start-up, never mid-run). Truncation is left
to preprocessing, which knows whether cutting a prompt keeps the example meaningful.

Why the grouping of examples into rows is fixed for the whole run (built once, from
``RandomState(seed)``) while the *order of rows* is reshuffled every epoch: the blend needs the
number of samples per epoch before it knows how many epochs to build, and a per-epoch regrouping
would change that number from epoch to epoch. Every example is still seen exactly once per epoch,
in a new order; only its row-mates stay the same (they cannot see it: separate segments).

Per epoch e, ``shuffle[e]`` (from ``RandomState([seed, 1])`` drawn epoch after epoch, so building
more epochs never changes earlier ones) is the order rows are served in. Arrays are cached with
index_cache.py like the pre-training ones; the position of a run is the blend's consumed samples,
as for pre-training (loader.py).

A sample adds to the pre-training sample dict (packing.py) ``prompt_mask`` (bool [seq_len], True
exactly on prompt tokens), ``response_lengths`` (each example's stored response length, in row
order; the EOS tail is not counted: telemetry's response-length distribution) and, when ``sft.eos_loss_weight != 1``, ``loss_weights`` (float32
[seq_len]: that weight on non-prompt positions holding ``eos_token_id``, 1 elsewhere), the
per-token weight hook of megadfm/dfm/loss.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from megadfm.data.config import DataConfig
from megadfm.data.index_cache import cached_arrays, file_sha256
from megadfm.data.indexed import IndexedDataset, idx_path
from megadfm.data.packing import DataError

SFT_INDEX_VERSION = 1  # bump when the arrays' meaning changes


def example_lengths(indexed: IndexedDataset, document_range: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """(prompt lengths, response lengths), int64 [documents in range]; a DataError unless every
    document of the range is exactly [prompt, response] (two non-empty sequences)."""
    first, end = document_range
    doc_index = np.asarray(indexed.document_indices[first:end + 1], dtype=np.int64)
    sequences = np.diff(doc_index)
    bad = np.flatnonzero(sequences != 2)
    if bad.size:
        j = int(bad[0])
        raise DataError(f"{indexed.prefix}: document {first + j} has {int(sequences[j])} sequence(s); data.format: sft "
                        f"needs every document to be [prompt, response], two non-empty sequences ({bad.size} of documents "
                        f"[{first}, {end}) are not)")
    lengths = np.asarray(indexed.sequence_lengths, dtype=np.int64)
    return lengths[doc_index[:-1]], lengths[doc_index[:-1] + 1]


def refuse_overlong(prefix: str, first: int, prompt: np.ndarray, response: np.ndarray, seq_len: int) -> None:
    over = np.flatnonzero(prompt + response > seq_len)
    if over.size:
        j = int(over[0])
        raise DataError(f"{prefix}: SFT example document {first + j} has {int(prompt[j] + response[j])} tokens "
                        f"(prompt {int(prompt[j])} + response {int(response[j])}), more than data.seq_len={seq_len}; "
                        f"{over.size} of the split's {len(prompt)} examples are too long: raise data.seq_len or drop or "
                        "shorten them in preprocessing (examples are never cut)")


def group_rows(lengths: np.ndarray, seq_len: int, seed: int, packing: bool) -> Dict[str, np.ndarray]:
    """``order`` (positions in the split, seeded permutation) and ``row_starts`` [rows + 1] into it:
    one example per row, or greedy: the next example joins the row while the row's total stays <= seq_len."""
    order = np.random.RandomState(seed).permutation(len(lengths)).astype(np.int64)
    if not packing:
        return {"order": order, "row_starts": np.arange(len(order) + 1, dtype=np.int64)}
    starts: List[int] = [0]
    filled = 0
    for i, n in enumerate(lengths[order].tolist()):
        if filled + n > seq_len:
            starts.append(i)
            filled = 0
        filled += n
    starts.append(len(order))
    return {"order": order, "row_starts": np.asarray(starts, dtype=np.int64)}


@dataclass
class SFTRows:
    """The grouping of one split's examples into rows (independent of how many epochs are served)."""

    indexed: IndexedDataset
    split: str
    document_range: Tuple[int, int]
    prompt_lengths: np.ndarray  # int64 [documents in range]
    response_lengths: np.ndarray
    order: np.ndarray  # positions in the range, in packing order
    row_starts: np.ndarray  # [rows + 1] into order
    description: Dict[str, object]  # what the arrays depend on (cache key)

    @property
    def samples_per_epoch(self) -> int:
        return len(self.row_starts) - 1

    @property
    def tokens_per_epoch(self) -> int:
        return int(self.prompt_lengths.sum() + self.response_lengths.sum())


def build_sft_rows(indexed: IndexedDataset, split: str, document_range: Tuple[int, int], cfg: DataConfig,
                   cache_dir: str) -> SFTRows:
    """Check the split's examples (two sequences each, none over seq_len) and group them into rows (cached)."""
    first, end = document_range
    if end <= first:
        raise DataError(f"{indexed.prefix}: the {split} split (documents [{first}, {end}) of {indexed.num_documents}, "
                        f"data.split={cfg.split}) has no examples")
    prompt, response = example_lengths(indexed, document_range)
    refuse_overlong(indexed.prefix, first, prompt, response, cfg.seq_len)
    description = {"version": SFT_INDEX_VERSION, "idx_sha256": file_sha256(idx_path(indexed.prefix)), "split": split,
                   "documents": [first, end], "seq_len": cfg.seq_len, "seed": cfg.seed, "packing": cfg.sft.packing}
    arrays = cached_arrays(cache_dir, "sft_rows", description, ["order", "row_starts"],
                           lambda: group_rows(prompt + response, cfg.seq_len, cfg.seed, cfg.sft.packing))
    return SFTRows(indexed, split, document_range, prompt, response, arrays["order"], arrays["row_starts"], description)


def build_row_shuffle(num_rows: int, seed: int, num_epochs: int) -> Dict[str, np.ndarray]:
    rng = np.random.RandomState([seed, 1])  # its own stream: independent of the grouping's draws
    return {"shuffle": np.stack([rng.permutation(num_rows) for _ in range(num_epochs)]).astype(np.int64)}


class SFTDataset:
    """``ds[k]``: row k of the served sequence (epoch ``k // samples_per_epoch``), a packing.py sample
    dict plus ``prompt_mask`` (and ``loss_weights`` when the EOS weight is on); see the module docstring."""

    def __init__(self, rows: SFTRows, num_epochs: int, cfg: DataConfig, cache_dir: str):
        self.rows, self.num_epochs = rows, num_epochs
        self.indexed, self.split = rows.indexed, rows.split
        self.samples_per_epoch, self.tokens_per_epoch = rows.samples_per_epoch, rows.tokens_per_epoch
        self.seq_len, self.pad_token_id, self.sft = cfg.seq_len, cfg.pad_token_id, cfg.sft
        description = {**rows.description, "num_epochs": num_epochs}
        self._shuffle = cached_arrays(cache_dir, "sft_shuffle", description, ["shuffle"],
                                      lambda: build_row_shuffle(rows.samples_per_epoch, cfg.seed, num_epochs))["shuffle"]

    def __len__(self) -> int:
        return self.num_epochs * self.samples_per_epoch

    def __getitem__(self, k: int) -> Dict[str, object]:
        if not 0 <= k < len(self):
            raise IndexError(f"{self.indexed.prefix} ({self.split}): SFT sample {k} out of range [0, {len(self)}) "
                             f"({self.num_epochs} epoch(s) of {self.samples_per_epoch} rows built)")
        epoch, j = divmod(k, self.samples_per_epoch)
        r = int(self._shuffle[epoch, j])
        first = self.rows.document_range[0]
        positions = self.rows.order[int(self.rows.row_starts[r]):int(self.rows.row_starts[r + 1])]
        tokens = np.full(self.seq_len, self.pad_token_id, dtype=np.int64)
        prompt_mask = np.zeros(self.seq_len, dtype=bool)
        segments: List[int] = []
        documents: List[int] = []
        responses: List[int] = []
        filled = 0
        for p in positions.tolist():
            n = int(self.rows.prompt_lengths[p] + self.rows.response_lengths[p])
            responses.append(int(self.rows.response_lengths[p]))
            tokens[filled:filled + n] = self.indexed.document(first + p)
            prompt_mask[filled:filled + int(self.rows.prompt_lengths[p])] = True
            segments.append(n)
            documents.append(first + p)
            filled += n
        tail = self.seq_len - filled
        if tail and self.sft.padding == "eos_train":
            # the tail belongs to the last example: it attends to it and is scored as its response
            tokens[filled:] = self.sft.eos_token_id
            segments[-1] += tail
            filled = self.seq_len
        elif tail:
            segments.append(tail)
        sample: Dict[str, object] = {"tokens": tokens, "num_tokens": filled, "segment_lengths": segments,
                                     "documents": documents, "offsets": [0] * len(documents), "prompt_mask": prompt_mask,
                                     "response_lengths": responses}
        if self.sft.eos_loss_weight != 1.0:
            weights = np.ones(self.seq_len, dtype=np.float32)
            eos_targets = (tokens == self.sft.eos_token_id) & ~prompt_mask & (np.arange(self.seq_len) < filled)
            weights[eos_targets] = self.sft.eos_loss_weight
            sample["loss_weights"] = weights
        return sample
