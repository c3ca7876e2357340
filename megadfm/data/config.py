"""Configuration of the data pipeline (indexed datasets, packing, blending, splits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal, Optional

from megadfm.config_base import doc, require
from megadfm.tokens import ENDOFTEXT_TOKEN_ID, IM_END_TOKEN_ID, PAD_TOKEN_ID


@dataclass
class BlendSource:
    """One indexed dataset of a blend."""

    prefix: str = doc(help="Path prefix P of P.bin / P.idx (as written by tools/preprocess_data.py).")
    weight: float = doc(1.0, "Fraction of *samples drawn* from this source (normalized over the blend), not of corpus size.")

    def __post_init__(self) -> None:
        require(bool(self.prefix), "prefix", "must be a non-empty path prefix")
        require(self.weight > 0, "weight", f"must be positive, got {self.weight}")


@dataclass
class SFTConfig:
    """How instruction examples ([prompt, response] documents) become rows (used with data.format: sft;
    megadfm/data/sft.py, megadfm/dfm/README.md "SFT")."""

    packing: bool = doc(False, "false: one example per row; true: consecutive examples of a seeded order share a row "
                               "(each its own cu_seqlens segment, never attending to another) while the next one fits.")
    padding: Literal["eos_train", "exclude"] = doc(
        "eos_train", "Row tail after the last example. eos_train: filled with eos_token_id, part of the last example's "
        "segment and scored as response (LLaDA: teaches where to stop); exclude: pad_token_id, its own segment, out of "
        "attention and loss.")
    eos_token_id: int = doc(IM_END_TOKEN_ID, "End-of-turn token that ends every response (<|im_end|> in Qwen3); "
                                             "fills the row tail under padding: eos_train.")
    eos_loss_weight: float = doc(1.0, "Multiplier of the loss of response positions whose target is eos_token_id "
                                      "(the tail under eos_train included); 1.0 leaves the loss as it is.")

    def __post_init__(self) -> None:
        require(self.eos_token_id >= 0, "eos_token_id", f"must be a token id >= 0, got {self.eos_token_id}")
        require(self.eos_loss_weight >= 0, "eos_loss_weight", f"must be >= 0, got {self.eos_loss_weight}")


@dataclass
class DataConfig:
    """Where the tokens come from and how they are cut into training samples (see megadfm/data/README.md)."""

    tokenizer: str = doc("artifacts/tokenizer/qwen3", "Local HF tokenizer folder (build with tools/build_qwen_tokenizer.py).")
    blend: List[BlendSource] = doc(help="Indexed datasets and their sampling weights.", factory=list)
    seq_len: int = doc(128, "Tokens per packed training sample.")
    split: List[float] = doc(help="Train/valid/test fractions of each prefix's documents (normalized; contiguous ranges, "
                                  "Megatron's rounding).", factory=lambda: [0.98, 0.01, 0.01])
    seed: int = doc(1234, "Seed of the per-epoch document and sample shuffles (blending itself is deterministic).")
    on_exhausted: Literal["repeat", "error"] = doc(
        "repeat", "When a source is asked for more samples than one epoch holds: repeat epochs (logged) or raise.")
    cache_dir: Optional[str] = doc(None, "Where index arrays are cached; null means next to the first prefix under .megadfm_cache/.")
    eod_token_id: int = doc(ENDOFTEXT_TOKEN_ID, "End-of-document token appended by preprocessing (<|endoftext|>).")
    pad_token_id: int = doc(PAD_TOKEN_ID, "Token used to fill the tail of a sample; padding is never attended to nor in the loss.")
    num_workers: int = doc(0, "DataLoader worker processes per rank.")
    format: Literal["pretrain", "sft"] = doc(
        "pretrain", "pretrain: documents packed back to back into seq_len rows (packing.py). sft: every document is one "
        "instruction example of two sequences [prompt, response], never cut; batches gain prompt_mask (megadfm/data/sft.py). "
        "An example longer than seq_len is refused at start-up.")
    sft: SFTConfig = doc(help="Rows of instruction examples (only read with format: sft).", factory=SFTConfig)

    def __post_init__(self) -> None:
        require(self.seq_len > 0, "seq_len", f"must be a positive integer, got {self.seq_len}")
        require(len(self.split) == 3, "split", f"needs three fractions (train, valid, test), got {self.split}")
        require(all(x >= 0 for x in self.split) and sum(self.split) > 0, "split",
                f"fractions must be non-negative and not all zero, got {self.split}")
        require(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
