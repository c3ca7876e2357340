"""HF Qwen3 folder -> megadfm init folder (what ``training.init_from`` reads through open_source).

Output layout::

    OUT/model.safetensors                  (or model-0000k-of-0000n.safetensors + model.safetensors.index.json)
    OUT/megadfm_model.yaml                 the ModelConfig the weights were written for
    OUT/tokenizer/                         the tokenizer with <|mask|> (when one was found)
    OUT/megadfm_conversion.json            source, config, parameter count, key report, sha256 per file

Every check (config, names, shapes, shards, tokenizer) runs before the first byte is written.
Tensors are streamed one at a time from the source shards into the output shards and keep their
dtype. The changes to the checkpoint (mask row, added time conditioning, dropped tied head) are
plan.py's, all listed in the report; ``mask_row='auto'`` means mean unless config.json says the
checkpoint already has a trained mask row.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, Optional

import yaml

from megadfm.checkpoints.layout import MODEL_CONFIG_FILE, TOKENIZER_SUBDIR
from megadfm.checkpoints.safetensors_io import TensorSpec, human_bytes, parse_size
from megadfm.config_base import ConfigError, to_dict
from megadfm.conversion.hf_config import model_config_from_hf
from megadfm.conversion.hf_folder import HFFolder
from megadfm.conversion.metadata import staged_output, write_metadata, write_planned
from megadfm.conversion.name_map import ConversionError
from megadfm.conversion.plan import HF_EMBEDDING, hf_import_plan, import_report, import_tensors

logger = logging.getLogger("megadfm.conversion")


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
    embed_dtype = src.specs[HF_EMBEDDING].dtype
    out_specs = [TensorSpec(plan.rename[n], src.specs[n].dtype, src.specs[n].shape) for n in src.names_in_file_order()
                 if n in plan.rename]
    out_specs += [TensorSpec(n, embed_dtype, shape) for n, shape in plan.added.items()]
    total = sum(s.nbytes for s in out_specs)
    logger.info("converting %s (%s, %d file(s)) -> %s: %d tensors, %s, time_conditioning=%s, mask row %s",
                src.folder, src.format, len(src.files), os.path.abspath(out_dir), len(out_specs), human_bytes(total),
                cfg.time_conditioning, mask_row)

    with staged_output(out_dir, force=force, needed_bytes=total) as tmp:
        tensors = import_tensors(plan, src.iter_tensors(), src.read_tensor, cfg, mask_row, seed)
        sha = write_planned(tmp, out_specs, max_bytes, tensors, progress)
        with open(os.path.join(tmp, MODEL_CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(f"# ModelConfig of the weights in this folder (written by tools/convert_hf_to_megadfm.py from {src.folder})\n")
            yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
        if tok is not None:
            tok.save_pretrained(os.path.join(tmp, TOKENIZER_SUBDIR))
        report = import_report(plan, cfg, mask_row, seed)
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


def _find_tokenizer(src: HFFolder, tokenizer: Optional[str]):
    if tokenizer is not None:
        return os.path.abspath(tokenizer), f"tokenizer from --tokenizer {os.path.abspath(tokenizer)}"
    if src.tokenizer_files():
        return src.folder, f"tokenizer from the HF folder ({', '.join(src.tokenizer_files())})"
    note = (f"NO TOKENIZER: {src.folder} has no tokenizer files and --tokenizer was not given; the init folder has no "
            "tokenizer/ (training reads data.tokenizer; build one with tools/build_qwen_tokenizer.py)")
    logger.warning(note)
    return None, note
