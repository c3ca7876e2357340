"""The one HF <-> megadfm conversion: a plan from names and shapes, then the tensors it maps.

A plan (:func:`hf_import_plan`, :func:`hf_export_plan`) is built from the name table (name_map.py)
and the source's names and shapes only, so every check runs before any tensor data is read. The
tensor steps (:func:`import_tensors`, :func:`export_tensors`) then map a stream of ``(name, tensor)``
pairs: the tools stream them file to file (hf_import.py, export.py), in_memory.py applies the very
same steps to a state dict. What the import changes, listed in its report (:func:`import_report`):

- ``embed_tokens.weight[mask_token_id]`` = mean of rows 0..mask_token_id-1 (``mask_row='mean'``);
- absent time conditioning is added: the modulation outputs are zero, so the model computes exactly
  the pretrained function for every t; the time MLP gets normal(0, initializer_range) weights from
  ``seed`` and zero biases, as Qwen3DFM initializes it (an all-zero time MLP would give the zero
  modulation a zero gradient, so t could never be learned);
- a tied ``lm_head.weight`` alias is dropped after checking it equals the embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Tuple

import torch

from megadfm.conversion.name_map import (HF_ONLY, HF_PREFIX, ConversionError, Shape, backbone_names, check_shapes,
                                         modulation_output_names, time_conditioning_names)
from megadfm.model.config import ModelConfig

HF_EMBEDDING = "model.embed_tokens.weight"
EMBEDDING = "embed_tokens.weight"
MASK_ROWS = ("mean", "keep")

Tensors = Iterable[Tuple[str, torch.Tensor]]


@dataclass
class ConversionPlan:
    """Which source tensor becomes which output tensor, checked against the table before any data is read.

    ``rename``: source name -> output name, in source order; ``added``: output names that do not
    exist in the source (created by the converter, with their shapes); ``dropped``: source names
    left out, each with the reason.
    """

    rename: Dict[str, str]
    added: Dict[str, Shape]
    dropped: Dict[str, str]

    def report(self) -> Dict[str, Any]:
        return {"mapped": len(self.rename), "added": sorted(self.added), "dropped": dict(sorted(self.dropped.items()))}

    def summary(self, limit: int = 4) -> str:
        """One line for the log: counts, and the first added / dropped names."""
        def names(keys):
            keys = sorted(keys)
            return (": " + ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")) if keys else ""
        return f"mapped {len(self.rename)}; added {len(self.added)}{names(self.added)}; dropped {len(self.dropped)}{names(self.dropped)}"


def hf_import_plan(hf_shapes: Mapping[str, Shape], cfg: ModelConfig) -> ConversionPlan:
    """The import plan of an HF Qwen3 checkpoint with these names and shapes.

    Time conditioning present in the source (a megadfm export) is mapped as a complete set; absent,
    its megadfm names are ``added`` (the converter creates them, zero modulation). A tied
    ``lm_head.weight`` is ``dropped``: the caller must check it equals the embedding.
    """
    table = backbone_names(cfg)
    time_hf = {HF_PREFIX + n: shape for n, shape in time_conditioning_names(cfg).items()}
    optional = dict(time_hf)
    if cfg.tie_word_embeddings:
        optional["lm_head.weight"] = (cfg.vocab_size, cfg.hidden_size)
    check_shapes(hf_shapes, {hf: shape for hf, (_, shape) in table.items()}, optional, "HF Qwen3 checkpoint")
    present = [k for k in time_hf if k in hf_shapes]
    if present and len(present) != len(time_hf):
        raise ConversionError(f"partial time conditioning: missing {sorted(set(time_hf) - set(present))}")
    rename, dropped = {}, {}
    for name in hf_shapes:
        if name in table:
            rename[name] = table[name][0]
        elif name in time_hf:
            rename[name] = name[len(HF_PREFIX):]
        else:  # only the tied head is left (check_shapes let nothing else through)
            dropped[name] = HF_ONLY[name]
    added = {} if present else time_conditioning_names(cfg)
    return ConversionPlan(rename, added, dropped)


def hf_export_plan(shapes: Mapping[str, Shape], cfg: ModelConfig, time_conditioning: str = "keep") -> ConversionPlan:
    """The export plan of a megadfm model with these names and shapes. With ``time_conditioning='drop'``
    the time-conditioning names are ``dropped``; the caller must first check they are untrained
    (:func:`refuse_trained_time_conditioning`)."""
    if time_conditioning not in ("keep", "drop"):
        raise ValueError(f"time_conditioning must be 'keep' or 'drop', got {time_conditioning!r}")
    table = backbone_names(cfg)
    time_names = time_conditioning_names(cfg)
    expected = {ours: shape for ours, shape in table.values()}
    expected.update(time_names)
    check_shapes(shapes, expected, {}, "megadfm state dict")
    to_hf = {ours: hf for hf, (ours, _) in table.items()}
    rename, dropped = {}, {}
    for name in shapes:
        if name in to_hf:
            rename[name] = to_hf[name]
        elif time_conditioning == "keep":
            rename[name] = HF_PREFIX + name
        else:
            dropped[name] = "time conditioning with zero modulation (a plain Qwen3 computes the same function)"
    return ConversionPlan(rename, {}, dropped)


# ---- import: HF -> megadfm ----------------------------------------------------------------------

def import_tensors(plan: ConversionPlan, tensors: Tensors, read: Callable[[str], torch.Tensor], cfg: ModelConfig,
                   mask_row: str = "mean", seed: int = 0) -> Iterator[Tuple[str, torch.Tensor]]:
    """The megadfm tensors of an HF Qwen3 stream, in stream order, then the ``added`` ones.

    ``read(name)`` reads one source tensor again (the tied head, to compare with the embedding). The
    embedding is modified in place when ``mask_row='mean'``: pass a tensor the caller may change."""
    if mask_row not in MASK_ROWS:
        raise ValueError(f"mask_row must be one of {MASK_ROWS}, got {mask_row!r}")
    dtype = None
    for name, tensor in tensors:
        if name == HF_EMBEDDING:
            dtype = tensor.dtype
            tensor = _prepare_embedding(plan, tensor, read, cfg, mask_row)
        if name in plan.dropped:
            continue
        yield plan.rename[name], tensor
    yield from added_tensors(cfg, plan.added, dtype, seed)


def _prepare_embedding(plan: ConversionPlan, emb: torch.Tensor, read: Callable[[str], torch.Tensor], cfg: ModelConfig,
                       mask_row: str) -> torch.Tensor:
    if "lm_head.weight" in plan.dropped:  # tied alias: it must really be the same matrix
        head = read("lm_head.weight")
        if not torch.equal(head, emb):
            raise ConversionError("config says tie_word_embeddings=true but lm_head.weight differs from "
                                  "model.embed_tokens.weight; the checkpoint is untied")
        del head
    if mask_row == "mean":
        emb = emb if emb.is_contiguous() else emb.contiguous()
        emb[cfg.mask_token_id] = mask_row_mean(emb, cfg.mask_token_id)
    return emb


@torch.no_grad()
def mask_row_mean(weight: torch.Tensor, mask_token_id: int, chunk_rows: int = 8192) -> torch.Tensor:
    """Mean of rows 0..mask_token_id-1: fp32 sums of row chunks accumulated in float64 (never an fp32
    copy of the whole matrix), cast to the weight's dtype (Qwen3DFM.init_mask_embedding's value up to rounding)."""
    if not 0 < mask_token_id < weight.shape[0]:
        raise ConversionError(f"mask_token_id {mask_token_id} must be in [1, {weight.shape[0]})")
    acc = torch.zeros(weight.shape[1], dtype=torch.float64)
    for start in range(0, mask_token_id, chunk_rows):
        acc += weight[start:min(start + chunk_rows, mask_token_id)].float().sum(0).double()
    return (acc / mask_token_id).to(weight.dtype)


def added_tensors(cfg: ModelConfig, added: Mapping[str, Shape], dtype: Optional[torch.dtype], seed: int):
    """Time-conditioning tensors in a deterministic order, in the embedding's dtype: zero modulation, seeded time MLP."""
    zero = set(modulation_output_names(cfg))
    gen = torch.Generator().manual_seed(seed)
    for name, shape in added.items():
        if name in zero or name.endswith(".bias"):
            yield name, torch.zeros(shape, dtype=dtype)
        else:
            yield name, (torch.randn(shape, generator=gen) * cfg.initializer_range).to(dtype)


def import_report(plan: ConversionPlan, cfg: ModelConfig, mask_row: str, seed: int) -> Dict[str, Any]:
    """The key report of an import: mapped / added / dropped, the mask row and the time conditioning."""
    report = plan.report()
    report["mask_row"] = (f"{EMBEDDING}[{cfg.mask_token_id}] = mean of rows 0..{cfg.mask_token_id - 1}" if mask_row == "mean"
                          else f"{EMBEDDING}[{cfg.mask_token_id}] kept as in the checkpoint")
    report["time_conditioning"] = (_time_note(cfg, seed) if plan.added else
                                   "imported from the checkpoint" if cfg.time_conditioning != "none" else "none")
    return report


def _time_note(cfg: ModelConfig, seed: int) -> str:
    if cfg.time_conditioning == "none":
        return "none"
    return (f"added ({cfg.time_conditioning}): modulation outputs zero (exactly the pretrained function for every t); "
            f"time MLP normal(0, {cfg.initializer_range}) from seed {seed}, zero biases")


# ---- export: megadfm -> HF ----------------------------------------------------------------------

def export_tensors(plan: ConversionPlan, tensors: Tensors, dtype: Optional[torch.dtype] = None) -> Iterator[Tuple[str, torch.Tensor]]:
    """The HF tensors of a megadfm stream, in stream order; floating-point ones cast to ``dtype`` if given."""
    for name, tensor in tensors:
        if name in plan.rename:
            yield plan.rename[name], tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def refuse_trained_time_conditioning(cfg: ModelConfig, read: Callable[[str], torch.Tensor], action: str, instead: str) -> None:
    """Raise a ConversionError naming the non-zero modulation outputs: dropping the time conditioning
    (``action``) is only exact while every one is zero; ``instead`` says what to do."""
    nonzero = []
    for name in modulation_output_names(cfg):
        t = read(name).detach()
        if bool(t.ne(0).any()):
            nonzero.append(f"{name} (max |x| {float(t.abs().max()):.3g})")
    if nonzero:
        raise ConversionError(
            f"{action} refused: the time conditioning ({cfg.time_conditioning}) is trained, {len(nonzero)} modulation "
            f"output(s) are non-zero, e.g. {', '.join(nonzero[:3])}. A plain Qwen3ForCausalLM has no input t, so it would "
            f"compute a different function. {instead}")
