"""Configuration of the discrete flow-matching objective (docs/DESIGN.md §3 conventions).

Imports only torch-free modules: the registries of weightings, normalisers and presets are read
here for the allowed values, and ``megadfm.config`` imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal

from megadfm.config_base import check_choices, doc, require
from megadfm.dfm.loss_presets import LOSS_PRESETS, PRESET_COMPATIBLE_NORMALIZER
from megadfm.dfm.normalizers import LOSS_NORMALIZERS
from megadfm.dfm.weighting import LOSS_WEIGHTINGS


@dataclass
class DFMConfig:
    """Probability path, time sampling and loss. t = 0 is all-mask, t = 1 is clean data;
    kappa(t) is the probability a token is clean and the mask ratio is r = 1 - kappa(t)."""

    objective: Literal["dfm", "ar"] = doc(
        "dfm", "dfm: the discrete flow-matching loss. ar: next-token CE of a causal model (model.attention_mode: causal; "
        "needs loss_weighting: none, loss_normalizer: masked, shift_logits: true and no CoDA strategy), the loss of "
        "transformers' Qwen3ForCausalLM, for AR pretraining in the same engine (megadfm/dfm/ar_loss.py).")
    mode: Literal["full", "block"] = doc(
        "full", "full: attention is bidirectional over the whole document. block: block diffusion (BD3LM): bidirectional "
        "inside blocks of block_size tokens, causal across blocks, trained on the two-stream [x_t | x_0] layout, and "
        "decoded block by block with an exact K/V cache (megadfm/dfm/block_diffusion.py, docs/BLOCK_DIFFUSION.md).")
    block_size: int = doc(32, "With mode: block, tokens per block, counted from the start of each document.")
    block_size_warmup: List[List[int]] = doc(
        help="With mode: block, a block-size curriculum (LLaDA 2.0 warms up from small blocks to large): "
             "[[until_step, size], ...], until_step strictly increasing and size non-decreasing and <= block_size; "
             "optimizer steps up to until_step train with blocks of size, later ones with block_size; [] = off "
             "(megadfm/dfm/block_diffusion.py block_size_at).", factory=list)
    block_t: Literal["row", "block"] = doc(
        "row", "With mode: block, row: every block of a row is corrupted at the row's t; block: each block at its own t "
        "(spread from the row's by golden-ratio offsets; evaluation always uses the row's).")
    scheduler: Literal["polynomial", "linear", "cosine"] = doc("polynomial", "kappa(t): polynomial t^n, linear (n = 1) or cosine.")
    scheduler_exponent: float = doc(1.0, "n of the polynomial scheduler kappa(t) = t^n.")
    source: Literal["mask", "uniform", "mixture"] = doc("mask", "Source distribution at t = 0: all <|mask|>, uniform real tokens [0, mask_token_id), or a mixture. "
        "Non-mask sources score every maskable position (x1-prediction CE); the kl weight is exact for mask only.")
    mixture_uniform_fraction: float = doc(0.0, "With source=mixture: fraction of corrupted tokens replaced by a uniform token instead of the mask.")
    time_sampling: Literal["stratified", "uniform"] = doc(
        "stratified", "Draw t per sequence uniformly, or stratified across the global batch (one sample per stratum of [0, 1) "
        "from a per-step seed shared by all ranks; lower variance).")
    mask_ratio_eps: float = doc(1e-3, "Mask ratios are restricted to [eps, 1] (weights 1/r explode near r = 0).")
    loss_weighting: str = doc(
        "kl", "w(t), a weighting of megadfm/dfm/weighting.py or a preset of megadfm/dfm/loss_presets.py (which also fixes "
        "the normaliser). kl: kappa'(t)/(1-kappa(t)) (1/r for linear); inverse_mask_ratio: 1/r; none: plain masked CE; "
        "coda: CoDA's preset, weight 1/r and sum divided by B*L (all positions, padding included). "
        "Formulas: megadfm/dfm/README.md.", choices=(LOSS_WEIGHTINGS, LOSS_PRESETS))
    loss_normalizer: str = doc(
        "tokens", "What the weighted sum is divided by (megadfm/dfm/normalizers.py). tokens: the batch's real tokens "
        "(B*L for packed batches; CoDA, LLaDA); masked: the number of scored (masked) tokens; all_positions: B*L, "
        "padding included; response_length (SFT batches only): each row by B times its response tokens, LLaDA's SFT "
        "loss.", choices=LOSS_NORMALIZERS)
    attention_anneal_steps: int = doc(
        0, "Anneal attention from causal to bidirectional over this many optimizer steps (DiffuLLaMA's recipe when "
           "adapting an AR model; 0: off). At step s the model sees every earlier key of its document and each later one "
           "with probability (s-1)/N, never across documents or padding (megadfm/model/attention_anneal.py).")
    shift_logits: bool = doc(True, "Output at position i predicts token i+1 within its document (reuses the AR head, as CoDA and Dream); "
        "the first token of each document is then never masked. One function applies it: megadfm/dfm/shift.py.")
    prefix_mask_prob: float = doc(0.0, "CoDA strategy: probability a sequence gets an unmaskable prefix of length uniform in [1, n-1] (n real tokens).")
    truncate_suffix_prob: float = doc(0.0, "CoDA strategy: probability a sequence (without a prefix) is cut at a point uniform in [1, n-1]; "
        "the suffix becomes padding (own segment, out of the loss).")
    block_mask_prob: float = doc(0.0, "CoDA strategy: probability a sequence is masked in contiguous blocks (marginal rate kept at r).")
    block_mask_size: int = doc(8, "Length of a block for block masking.")

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.scheduler_exponent > 0, "scheduler_exponent", f"must be positive, got {self.scheduler_exponent}")
        require(0 < self.mask_ratio_eps < 1, "mask_ratio_eps", f"must be in (0, 1), got {self.mask_ratio_eps}")
        for name in ("mixture_uniform_fraction", "prefix_mask_prob", "truncate_suffix_prob", "block_mask_prob"):
            v = getattr(self, name)
            require(0.0 <= v <= 1.0, name, f"is a probability and must be in [0, 1], got {v}")
        require(self.block_mask_size > 0, "block_mask_size", f"must be positive, got {self.block_mask_size}")
        require(self.attention_anneal_steps >= 0, "attention_anneal_steps", f"must be >= 0, got {self.attention_anneal_steps}")
        if self.objective == "ar":  # the AR loss is fixed (mean next-token CE); settings it would ignore are refused
            for name, wanted in (("loss_weighting", "none"), ("loss_normalizer", "masked"), ("shift_logits", True),
                                 ("prefix_mask_prob", 0.0), ("truncate_suffix_prob", 0.0), ("block_mask_prob", 0.0)):
                require(getattr(self, name) == wanted, name, f"must be {wanted!r} with objective: ar (the mean next-token "
                        f"cross-entropy of transformers' Qwen3ForCausalLM), got {getattr(self, name)!r}")
        require(self.block_size >= 1, "block_size", f"must be >= 1, got {self.block_size}")
        warmup = self.block_size_warmup
        require(all(isinstance(e, (list, tuple)) and len(e) == 2 and all(isinstance(v, int) for v in e) for e in warmup),
                "block_size_warmup", f"must be a list of [until_step, size] integer pairs, got {warmup!r}")
        require(all(a[0] < b[0] and a[1] <= b[1] for a, b in zip(warmup, warmup[1:])), "block_size_warmup",
                f"until_step must increase strictly and size must not decrease, got {warmup!r}")
        require(all(e[0] >= 1 and 1 <= e[1] <= self.block_size for e in warmup), "block_size_warmup",
                f"until_step must be >= 1 and size in [1, block_size={self.block_size}], got {warmup!r}")
        require(not warmup or self.mode == "block", "block_size_warmup", "is a block-mode option (dfm.mode: block)")
        if self.mode == "block":  # what the two-stream layout does not implement is refused, not ignored
            require(self.objective == "dfm", "mode", f"block needs objective: dfm, got {self.objective!r}")
            require(self.source == "mask", "source", f"block mode needs source: mask, got {self.source!r}")
            require(self.attention_anneal_steps == 0, "attention_anneal_steps",
                    "must be 0 with mode: block (block mode has its own attention pattern)")
            for name in ("prefix_mask_prob", "truncate_suffix_prob", "block_mask_prob"):
                require(getattr(self, name) == 0.0, name, "CoDA's strategies are not implemented for mode: block; "
                        f"must be 0, got {getattr(self, name)}")
        if self.loss_weighting in LOSS_PRESETS:
            # The preset picks the normaliser; any other explicit choice would be silently ignored.
            preset = LOSS_PRESETS.get(self.loss_weighting)
            require(self.loss_normalizer in (PRESET_COMPATIBLE_NORMALIZER, preset.normalizer), "loss_normalizer",
                    f"the {self.loss_weighting} preset divides by its own normaliser ({preset.normalizer}); "
                    f"it requires loss_normalizer: {PRESET_COMPATIBLE_NORMALIZER} (or {preset.normalizer})")
