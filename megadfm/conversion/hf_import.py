"""HF Qwen3 folder -> megadfm init folder (what ``training.init_from`` / load_init_folder reads).

Output layout::

    OUT/model.safetensors                  (or model-0000k-of-0000n.safetensors + model.safetensors.index.json)
    OUT/megadfm_model.yaml                 the ModelConfig the weights were written for
    OUT/tokenizer/                         the tokenizer with <|mask|> (when one was found)
    OUT/megadfm_conversion.json            source, config, parameter count, key report, sha256 per file

Every check (config, names, shapes, shards, tokenizer) runs before the first byte is written.
Tensors are streamed one at a time from the source shards into the output shards and keep their
dtype. Changes to the checkpoint, all listed in the report:

- ``embed_tokens.weight[mask_token_id]`` = mean of rows 0..mask_token_id-1 (``mask_row='mean'``;
  the default unless config.json says the checkpoint already has a trained mask row);
- time conditioning is added: the modulation outputs (``layers.{i}.adaln.proj.*`` /
  ``adaln_single.proj.*``, ``layers.{i}.adaln.table``) are zero, so the model computes exactly the
  pretrained function for every t; the time MLP (``time_embedding.linear_{1,2}``) gets normal(0,
  initializer_range) weights from ``seed`` and zero biases, as Qwen3DFM initializes it (an all-zero
  time MLP would give the zero modulation a zero gradient, so t could never be learned);
- a tied ``lm_head.weight`` alias is dropped after checking it equals the embedding.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, Optional

import torch
import yaml

from megadfm.config_base import ConfigError, to_dict
from megadfm.conversion.hf_folder import HFFolder
from megadfm.conversion.metadata import staged_output, write_metadata
from megadfm.conversion.name_map import ConversionError, hf_import_plan, model_config_from_hf, modulation_output_names
from megadfm.conversion.safetensors_io import ShardedSafetensorsWriter, TensorSpec, human_bytes, parse_size
from megadfm.model.config import ModelConfig
from megadfm.training.init_weights import MODEL_CONFIG_FILE

logger = logging.getLogger("megadfm.conversion")

TOKENIZER_SUBDIR = "tokenizer"
EMBEDDING = "embed_tokens.weight"


def convert_hf_to_megadfm(hf_dir: str, out_dir: str, time_conditioning: str = "adaln", tokenizer: Optional[str] = None,
                          mask_token_id: Optional[int] = None, mask_row: str = "auto", time_embedding_dim: int = 256,
                          seed: int = 0, max_shard_size: str = "5GB", force: bool = False,
                          progress: bool = False) -> Dict[str, Any]:
    """Convert; returns the metadata written to ``megadfm_conversion.json``. Raises (writing nothing
    under ``out_dir``) on any problem with the inputs."""
    if mask_row not in ("auto", "mean", "keep"):
        raise ValueError(f"mask_row must be auto, mean or keep, got {mask_row!r}")
    max_bytes = parse_size(max_shard_size)
    src = HFFolder(hf_dir)
    overrides: Dict[str, Any] = {"time_conditioning": time_conditioning, "time_embedding_dim": time_embedding_dim}
    if mask_token_id is not None:
        overrides["mask_token_id"] = mask_token_id
    try:
        cfg = model_config_from_hf(src.config, **overrides)
    except ConfigError as e:
        raise ConversionError(f"{src.folder}/config.json: {e}" + (
            " (pass --mask-token-id for a vocabulary without Qwen3's 151,669 tokens)" if e.key == "mask_token_id" else "")) from None
    plan = hf_import_plan(src.shapes, cfg)
    if mask_row == "auto":
        mask_row = "keep" if "mask_token_id" in src.config else "mean"
    tokenizer_dir, tokenizer_note = _find_tokenizer(src, tokenizer)
    tok = None
    if tokenizer_dir is not None:
        from megadfm.data.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer_dir, cfg.mask_token_id)
        if len(tok) > cfg.vocab_size:
            raise ConversionError(f"tokenizer {tokenizer_dir} has {len(tok)} entries, more than the model's vocab_size {cfg.vocab_size}")
    embed_dtype = src.specs["model.embed_tokens.weight"].dtype
    out_specs = [TensorSpec(plan.rename[n], src.specs[n].dtype, src.specs[n].shape) for n in src.names_in_file_order()
                 if n in plan.rename]
    out_specs += [TensorSpec(n, embed_dtype, shape) for n, shape in plan.added.items()]
    total = sum(s.nbytes for s in out_specs)
    logger.info("converting %s (%s, %d file(s)) -> %s: %d tensors, %s, time_conditioning=%s, mask row %s",
                src.folder, src.format, len(src.files), os.path.abspath(out_dir), len(out_specs), human_bytes(total),
                cfg.time_conditioning, mask_row)

    with staged_output(out_dir, force=force, needed_bytes=total) as tmp:
        bar = progress_bar(total, progress)
        writer = ShardedSafetensorsWriter(tmp, out_specs, max_bytes, on_bytes=bar.update)
        try:
            for name, tensor in src.iter_tensors():
                if name in plan.dropped:
                    continue
                if name == "model.embed_tokens.weight":
                    tensor = _prepare_embedding(src, plan, tensor, cfg, mask_row)
                writer.write(plan.rename[name], tensor)
                del tensor
            for name, tensor in _added_tensors(cfg, plan.added, embed_dtype, seed):
                writer.write(name, tensor)
            sha = writer.close()
        except BaseException:
            writer.abort()
            raise
        finally:
            bar.close()
        with open(os.path.join(tmp, MODEL_CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(f"# ModelConfig of the weights in this folder (written by tools/convert_hf_to_megadfm.py from {src.folder})\n")
            yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
        if tok is not None:
            tok.save_pretrained(os.path.join(tmp, TOKENIZER_SUBDIR))
        report = plan.report()
        report["mask_row"] = (f"{EMBEDDING}[{cfg.mask_token_id}] = mean of rows 0..{cfg.mask_token_id - 1}" if mask_row == "mean"
                              else f"{EMBEDDING}[{cfg.mask_token_id}] kept as in the checkpoint")
        report["time_conditioning"] = (_time_note(cfg, seed) if plan.added else
                                       "imported from the checkpoint" if cfg.time_conditioning != "none" else "none")
        meta = {
            "direction": "hf_to_megadfm",
            "source": {"path": src.folder, "kind": "huggingface", "format": src.format,
                       "files": [os.path.basename(p) for p in src.files], "config": src.config},
            "step": None,
            "model_config": to_dict(cfg),
            "parameter_count": sum(math.prod(s.shape) for s in out_specs),
            "dtypes": sorted({str(s.dtype).replace("torch.", "") for s in out_specs}),
            "report": report,
            "tokenizer": {"source": tokenizer_dir, "note": tokenizer_note,
                          "path": TOKENIZER_SUBDIR if tok is not None else None,
                          "mask_token_id": cfg.mask_token_id if tok is not None else None},
        }
        written = write_metadata(tmp, meta, sha)
    logger.info("wrote %s: %s parameters in %d weight file(s); %s; %s; %s", os.path.abspath(out_dir),
                f"{meta['parameter_count']:,}", len(sha), plan.summary(), report["mask_row"], tokenizer_note)
    return written


def _time_note(cfg: ModelConfig, seed: int) -> str:
    if cfg.time_conditioning == "none":
        return "none"
    return (f"added ({cfg.time_conditioning}): modulation outputs zero (exactly the pretrained function for every t); "
            f"time MLP normal(0, {cfg.initializer_range}) from seed {seed}, zero biases")


def _find_tokenizer(src: HFFolder, tokenizer: Optional[str]):
    if tokenizer is not None:
        return os.path.abspath(tokenizer), f"tokenizer from --tokenizer {os.path.abspath(tokenizer)}"
    if src.tokenizer_files():
        return src.folder, f"tokenizer from the HF folder ({', '.join(src.tokenizer_files())})"
    note = (f"NO TOKENIZER: {src.folder} has no tokenizer files and --tokenizer was not given; the init folder has no "
            "tokenizer/ (training reads data.tokenizer; build one with tools/build_qwen_tokenizer.py)")
    logger.warning(note)
    return None, note


def _prepare_embedding(src: HFFolder, plan, emb: torch.Tensor, cfg: ModelConfig, mask_row: str) -> torch.Tensor:
    if "lm_head.weight" in plan.dropped:  # tied alias: it must really be the same matrix
        head = src.read_tensor("lm_head.weight")
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


def _added_tensors(cfg: ModelConfig, added: Dict[str, tuple], dtype: torch.dtype, seed: int):
    """Time-conditioning tensors in a deterministic order: zero modulation, seeded time MLP."""
    zero = set(modulation_output_names(cfg))
    gen = torch.Generator().manual_seed(seed)
    for name, shape in added.items():
        if name in zero or name.endswith(".bias"):
            yield name, torch.zeros(shape, dtype=dtype)
        else:
            yield name, (torch.randn(shape, generator=gen) * cfg.initializer_range).to(dtype)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="writing weights", dynamic_ncols=True)

