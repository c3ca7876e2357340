"""megadfm checkpoint (or init folder) -> Hugging Face folder.

Default: a DFM model that transformers loads with the modeling code shipped in the folder::

    OUT/config.json                        model_type megadfm_qwen3, auto_map -> the two code files
    OUT/configuration_megadfm.py, OUT/modeling_megadfm.py, OUT/generation_megadfm.py,
    OUT/block_generation_megadfm.py        (torch + transformers only; the last: block diffusion's sampling)
    OUT/README.md                          model card: loading, the forward, model.diffusion_generate and its arguments
    OUT/model.safetensors                  (or shards + model.safetensors.index.json above --max-shard-size)
    OUT/generation_config.json             mask / eos / pad ids and megadfm's sampler defaults (dfm_sampler)
    OUT/tokenizer.json, tokenizer_config.json, ...   with <|mask|>
    OUT/megadfm_conversion.json            source, step, config, parameter count, key report, sha256 per file

    model = AutoModelForMaskedLM.from_pretrained(OUT, trust_remote_code=True)   # logits, mask logit -inf
    model = AutoModel.from_pretrained(OUT, trust_remote_code=True)              # hidden states after the final norm
    model.diffusion_generate(input_ids, max_new_tokens=64, ...)   # megadfm's sampler, token for token (README.md)

``as_qwen3``: the backbone as a plain ``Qwen3ForCausalLM`` (config.json model_type qwen3, no code
files), refused when any time-conditioning modulation output is non-zero (a Qwen3 has no t, so it
would compute another function). Qwen3ForCausalLM attends causally: for a model trained
bidirectionally the export carries the weights, not the DFM function; the log says so.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from typing import Any, Dict, List, Optional

import torch

from megadfm.checkpoints.layout import TOKENIZER_SUBDIR
from megadfm.checkpoints.safetensors_io import TensorSpec, human_bytes, parse_size
from megadfm.checkpoints.source import MegaDFMSource, SourceError, open_source
from megadfm.config_base import to_dict
from megadfm.conversion import hf_modeling
from megadfm.conversion.hf_config import hf_config_from_model_config, megadfm_config_fields
from megadfm.conversion.metadata import staged_output, write_metadata, write_planned
from megadfm.conversion.plan import export_tensors, hf_export_plan, refuse_trained_time_conditioning
from megadfm.data.config import DataConfig
from megadfm.dfm.sampler_config import SamplerConfig
from megadfm.io_utils import sha256_file
from megadfm.model.config import ModelConfig

logger = logging.getLogger("megadfm.conversion")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def export_to_hf(ckpt: str, out_dir: str, step: Optional[int] = None, as_qwen3: bool = False, max_shard_size: str = "2GB",
                 dtype: str = "auto", tokenizer: Optional[str] = None, force: bool = False,
                 progress: bool = False, allow_other_tokenizer: bool = False) -> Dict[str, Any]:
    """Export; returns the metadata written to ``megadfm_conversion.json``. Raises (writing nothing
    under ``out_dir``) on any problem."""
    max_bytes = parse_size(max_shard_size)
    src = open_source(ckpt, step)
    cfg = src.model_config
    out_dtype = _resolve_dtype(dtype, src)
    tokenizer_dir = os.path.abspath(tokenizer) if tokenizer else src.tokenizer_dir
    if tokenizer_dir is None or not os.path.isdir(tokenizer_dir):
        wanted = tokenizer or (src.run_config.data.tokenizer if src.run_config else os.path.join(src.path, TOKENIZER_SUBDIR))
        raise SourceError(f"tokenizer folder {wanted!r} (from {'--tokenizer' if tokenizer else 'the ' + src.kind}) not found; "
                          "pass --tokenizer DIR (a local HF tokenizer folder, e.g. artifacts/tokenizer/qwen3)")
    from megadfm.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir, cfg.mask_token_id)
    _check_tokenizer_hash(src, tokenizer_dir, allow_other_tokenizer)
    shapes = {n: s.shape for n, s in src.specs.items()}
    warnings: List[str] = []
    if as_qwen3:
        refuse_trained_time_conditioning(cfg, src.read, "--as-qwen3",
                                         "Export without --as-qwen3 (megadfm's modeling code keeps t).")
        if cfg.attention_mode == "bidirectional" and src.step:
            warnings.append(f"this model was trained with attention_mode=bidirectional for {src.step} steps; "
                            "Qwen3ForCausalLM attends causally, so the export carries the weights, not the DFM function")
    plan = hf_export_plan(shapes, cfg, "drop" if as_qwen3 else "keep")
    out_specs = [TensorSpec(plan.rename[n], out_dtype if s.dtype.is_floating_point else s.dtype, s.shape)
                 for n, s in src.specs.items() if n in plan.rename]
    total = sum(s.nbytes for s in out_specs)
    for w in warnings:
        logger.warning(w)
    logger.info("exporting %s %s (step %s) -> %s as %s: %d tensors, %s %s", src.kind, src.path, src.step,
                os.path.abspath(out_dir), "Qwen3ForCausalLM" if as_qwen3 else hf_modeling.ARCHITECTURE, len(out_specs),
                human_bytes(total), str(out_dtype).replace("torch.", ""))

    with staged_output(out_dir, force=force, needed_bytes=total) as tmp:
        sha = write_planned(tmp, out_specs, max_bytes, export_tensors(plan, src.iter_tensors(), out_dtype), progress)
        config = _hf_config(cfg, src, out_dtype, as_qwen3)
        _write_json(os.path.join(tmp, "config.json"), config)
        generation = _generation_config(cfg, src, as_qwen3)
        _write_json(os.path.join(tmp, "generation_config.json"), generation)
        if not as_qwen3:
            code_dir = os.path.dirname(os.path.abspath(hf_modeling.__file__))
            for name in hf_modeling.CODE_FILES:
                shutil.copyfile(os.path.join(code_dir, name), os.path.join(tmp, name))
            with open(os.path.join(tmp, README_FILE), "w", encoding="utf-8") as f:
                f.write(model_card(src, generation))
        tok.save_pretrained(tmp)
        report = plan.report()
        report["time_conditioning"] = ("dropped: every modulation output is exactly zero" if as_qwen3 and plan.dropped else
                                       "kept as model.<name> (megadfm's modeling code)" if cfg.time_conditioning != "none" else "none")
        meta = {
            "direction": "megadfm_to_hf",
            "format": "qwen3" if as_qwen3 else hf_modeling.MODEL_TYPE,
            "source": {"path": src.path, "kind": src.kind, **src.details},
            "step": src.step,
            "model_config": to_dict(cfg),
            "run_config": to_dict(src.run_config) if src.run_config is not None else None,
            "checkpoint_meta": src.meta or None,
            "parameter_count": sum(math.prod(s.shape) for s in out_specs),
            "dtype": str(out_dtype).replace("torch.", ""),
            "report": report,
            "warnings": warnings,
            "tokenizer": {"source": tokenizer_dir, "mask_token_id": cfg.mask_token_id},
            "load_with": ("transformers.Qwen3ForCausalLM.from_pretrained(folder)" if as_qwen3 else
                          "transformers.AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)"),
        }
        written = write_metadata(tmp, meta, sha)
    logger.info("wrote %s: %s parameters in %d weight file(s); %s", os.path.abspath(out_dir),
                f"{meta['parameter_count']:,}", len(sha), plan.summary())
    return written


def _resolve_dtype(dtype: str, src: MegaDFMSource) -> torch.dtype:
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"--dtype must be auto, {', '.join(DTYPES)}; got {dtype!r}")
        return DTYPES[dtype]
    if src.run_config is not None:  # master weights are fp32; a bf16 run is exported in bf16
        return torch.bfloat16 if src.run_config.training.precision == "bf16" else torch.float32
    floats = {s.dtype for s in src.specs.values() if s.dtype.is_floating_point}
    return floats.pop() if len(floats) == 1 else torch.float32


def _check_tokenizer_hash(src: MegaDFMSource, tokenizer_dir: str, allow_other: bool) -> None:
    """An export ships the tokenizer the run trained with: another one (same size, other merges) would encode
    the same text to other ids, silently. Refused unless --allow-other-tokenizer."""
    expected = (src.meta or {}).get("tokenizer_json_sha256")
    path = os.path.join(tokenizer_dir, "tokenizer.json")
    if not expected or not os.path.isfile(path):
        return
    found = sha256_file(path)
    if found == expected:
        return
    message = (f"{path} (sha256 {found[:16]}...) is not the tokenizer.json the run was trained with (sha256 "
               f"{expected[:16]}... recorded in {src.path}); an export with it would encode text to other ids")
    if not allow_other:
        raise SourceError(message + ". Pass the run's tokenizer with --tokenizer DIR, or --allow-other-tokenizer if you "
                                    "really mean to ship this one")
    logger.warning("%s (--allow-other-tokenizer)", message)


def _hf_config(cfg: ModelConfig, src: MegaDFMSource, dtype: torch.dtype, as_qwen3: bool) -> Dict[str, Any]:
    import transformers

    data = src.run_config.data if src.run_config is not None else DataConfig()
    ids = {"eos_token_id": data.eod_token_id, "pad_token_id": data.pad_token_id, "bos_token_id": None}
    dtype_name = str(dtype).replace("torch.", "")
    if as_qwen3:
        out = hf_config_from_model_config(cfg)
        out.update(ids, dtype=dtype_name, torch_dtype=dtype_name, transformers_version=transformers.__version__)
        return out
    dfm = src.run_config.dfm if src.run_config is not None else None
    shift = dfm.shift_logits if dfm is not None else True
    mode = _dfm_mode(src)
    out = {"architectures": [hf_modeling.ARCHITECTURE], "model_type": hf_modeling.MODEL_TYPE,
           "auto_map": dict(hf_modeling.AUTO_MAP)}
    out.update(megadfm_config_fields(cfg))
    # the model's attention pattern (diffusion_generate decodes a block model in its blocks): config.json, like shift
    out.update(shift_logits=shift, dfm_mode=mode, block_size=dfm.block_size if mode == "block" else None, dtype=dtype_name, torch_dtype=dtype_name, **ids,
               transformers_version=transformers.__version__)
    return out


def _generation_config(cfg: ModelConfig, src: MegaDFMSource, as_qwen3: bool) -> Dict[str, Any]:
    import transformers

    data = src.run_config.data if src.run_config is not None else DataConfig()  # defaults: Qwen3's <|endoftext|>
    sampler = SamplerConfig()
    out: Dict[str, Any] = {"eos_token_id": data.eod_token_id, "pad_token_id": data.pad_token_id,
                           "transformers_version": transformers.__version__}
    if as_qwen3:
        return out
    dfm = src.run_config.dfm if src.run_config is not None else None
    out["mask_token_id"] = cfg.mask_token_id
    out["dfm_sampler"] = {
        **{k: v for k, v in to_dict(sampler).items() if k not in ("eos_token_id", "seed")},
        "shift_logits": dfm.shift_logits if dfm else True,
        "scheduler": dfm.scheduler if dfm else "polynomial",
        "scheduler_exponent": dfm.scheduler_exponent if dfm else 1.0,
        "source": dfm.source if dfm else "mask",
        "mode": _dfm_mode(src),
        "block_size": dfm.block_size if _dfm_mode(src) == "block" else None,
        "note": "defaults of megadfm.dfm.sampler_config.SamplerConfig; t = 0 is all masked, t = 1 is clean",
    }
    return out


def _dfm_mode(src: MegaDFMSource) -> str:
    """dfm.mode of the run (full without a run config: an init folder has never been trained in blocks)."""
    return src.run_config.dfm.mode if src.run_config is not None else "full"


README_FILE = "README.md"


def model_card(src: MegaDFMSource, generation: Dict[str, Any]) -> str:
    """README.md of a megadfm-format export: how to load it, call it and generate with it (its defaults filled in)."""
    d = generation["dfm_sampler"]
    source = src.run_config.dfm.source if src.run_config is not None else "mask"
    source_note = ("" if source == "mask" else
                   f"\n**This model was trained with `dfm.source: {source}`; `diffusion_generate` implements the mask "
                   "source only, so sample it with megadfm's own sampler (tools/generate.py).**\n")
    step = f" (step {src.step})" if src.step is not None else ""
    block_note = ("" if d.get("mode", "full") != "block" else
                  f"\n**This is a block-diffusion model** (`dfm.mode: block`, config.json `dfm_mode` / `block_size`): "
                  f"bidirectional inside blocks of {d['block_size']} tokens, causal across them. `diffusion_generate` "
                  "decodes it in those blocks, left to right (methods `confidence` and `threshold`; `euler`, "
                  "`cache=\"dual\"` and a `block_length` other than 0 or the block size are refused), and its "
                  "`cache=\"prefix\"` is exact (the clean keys and values of finished blocks never change).\n")
    cfg = src.model_config
    attention = cfg.attention_mode
    return f"""# megadfm discrete flow-matching Qwen3 (`{hf_modeling.MODEL_TYPE}`)

Exported by megadfm from {src.kind} `{os.path.basename(os.path.normpath(src.path))}`{step}. A Qwen3 with
{attention} attention and time conditioning `{cfg.time_conditioning}`, a masked-diffusion (discrete flow-matching) model. The
modeling code in this folder imports only torch and transformers; load it with `trust_remote_code=True`.
t = 0 is all masked, t = 1 is clean; shift_logits = {d["shift_logits"]} (true: the output at position i
predicts the token at i + 1); scheduler {d["scheduler"]} (exponent {d["scheduler_exponent"]}); mask token id
{generation["mask_token_id"]}, whose logit is always -inf.
{source_note}{block_note}
## Load

```python
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
logits = model(input_ids, t=t, attention_mask=attention_mask).logits   # [B, L, V] fp32; t: [B] in [0, 1]
```

## Generate: `model.diffusion_generate`

```python
ids = tok(["def add(a, b):\\n"], return_tensors="pt")
out = model.diffusion_generate(ids.input_ids, attention_mask=ids.attention_mask, max_new_tokens=64,
                               steps=64, method="confidence", block_length=32, temperature=0.0)
print(tok.decode(out.tokens[0]))
```

It is megadfm's own sampler (`megadfm.dfm.sampler.generate`) re-implemented in `generation_megadfm.py` and
gives the same tokens for the same seed and settings. Arguments (a setting left out takes the value in
`generation_config.json` `dfm_sampler`, shown here):

| argument | default | meaning |
|---|---|---|
| `input_ids` | | prompts: LongTensor [B, L] (or a list of token lists) |
| `attention_mask` | None | [B, L], 1 on prompt tokens, 0 on padding (left or right); ragged prompts are fine |
| `max_new_tokens` | required | new tokens per row (an int, or one per row) |
| `steps` | {d["steps"]} | euler: solver steps; confidence: steps per generation, split over the blocks; threshold: at most this many per block |
| `method` | {d["method"]} | `confidence` (unmask the most confident positions, a fixed number per step), `threshold` (Fast-dLLM: every position whose confidence passes the rule, at least one), `euler` (the exact-rate Euler DFM solver, random unmasking) |
| `block_length` | {d["block_length"]} | confidence / threshold: semi-autoregressive blocks of this many new tokens, left to right (0 = one block) |
| `threshold` | {d["threshold"]} | threshold, mode `fixed`: unmask every position with confidence >= this |
| `threshold_mode` | {d["threshold_mode"]} | `fixed`, or `factor`: the largest n with (m + 1)(1 - c_m) <= threshold_factor for all m <= n |
| `threshold_factor` | {d["threshold_factor"]} | the factor of mode `factor` |
| `confidence` | {d["confidence"]} | ranking of the block methods: `probability`, `margin` (top1 - top2), `entropy` |
| `temperature` | {d["temperature"]} | 0 is greedy |
| `top_k`, `top_p` | {d["top_k"]}, {d["top_p"]} | filters of the draw (0 / 1 = off) |
| `eos_token_id` | {generation["eos_token_id"]} | a row stops once it has decoded it (output cut before it); None: never stop |
| `cache` | {d.get("cache", "none")} | `none` (exact), `prefix` or `dual` (block K/V caches, see below) |
| `seed` | 0 | seeds a torch.Generator on the model's device (or pass `generator=`) |
| `suffix_ids` | None | infilling: per-row suffixes (a list of token lists, or one list for all rows); the new tokens go between prompt and suffix |
| `time_grid` | {d["time_grid"]} | `uniform` in t, or `scheduler` (uniform in kappa) |

It returns `out.sequences` [B, L] (prompt + new tokens + suffix, right-padded, never a mask), `out.tokens` (each
row's new tokens, cut before the first EOS), `out.finished`, `out.steps`, `out.nfe_full`, `out.nfe_block`.

**Caches are approximate.** `cache="prefix"` / `"dual"` (confidence and threshold methods; Fast-dLLM's
prefix and dual caches) run one full forward at a block's first step, keep every layer's K/V, and then
recompute only the block (and, for `prefix`, everything after it), attending to the kept K/V of the other
positions. Those K/V belong to the block's first step (its tokens and its t), so later steps differ from
the full forward: faster, not exact. `cache="none"` is the exact sampler. A block-diffusion model's
`cache="prefix"` (`block_generation_megadfm.py`) is exact instead: its finished blocks never attend to later ones.
"""


def _write_json(path: str, data: Dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
