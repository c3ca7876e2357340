"""Provenance gates, checked at start-up before anything is loaded.

Data: each blend prefix's ``{prefix}_summary.json`` (tools/preprocess_data.py) records the
tokenizer it was made with. Data tokenized with another tokenizer of the same size would train
without a word, so a summary disagreeing with ``data.tokenizer`` (tokenizer.json sha256 or size)
is refused; a prefix without a summary (e.g. made by Megatron's own tool) gets one warning. Then
the token ids of every prefix are checked (megadfm/data/token_validation.py).

Resume: the checkpoint's resolved ``config.yaml`` and ``megadfm_meta.json`` are compared with
this run's. Every field that changes the function the weights compute or the data stream they
see (:func:`guarded_fields`) must agree, or be named in ``checkpoint.allow_changes`` (then the
change is logged). Anything else -- LR, steps, intervals, sinks, output paths, telemetry -- may
change freely.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

from megadfm.checkpoints.layout import META_FILE, RUN_CONFIG_FILE, tag_for_step
from megadfm.config import ConfigError, MegaDFMConfig, load_config
from megadfm.dfm.config import DFMConfig
from megadfm.model.config import ARCHITECTURE, ModelConfig
from megadfm.config_base import fields_tagged
from megadfm.training.callbacks.checkpointing import tokenizer_sha256

logger = logging.getLogger("megadfm")

DATA_STREAM_KEYS = ("data.tokenizer", "data.blend", "data.seq_len", "data.split", "data.seed", "training.seed",
                    "training.global_batch_size")
"""Keys beyond the model architecture and the DFM objective that change what the model sees.
training.global_batch_size is the effective one (micro x accumulation x data-parallel): it decides
which samples and which noise make up each step; micro batch, accumulation and world size may
otherwise change freely (the sample and noise sequences do not depend on them)."""


class ProvenanceError(RuntimeError):
    """The data or the checkpoint was made under other settings than this run's; the message lists them."""


def _rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


# ---- resume ---------------------------------------------------------------------------------------

def guarded_keys() -> Tuple[str, ...]:
    """Every dotted key a resume compares (and so every key checkpoint.allow_changes may name)."""
    model = [f"model.{k}" for k in fields_tagged(ModelConfig, ARCHITECTURE)] + ["model.attention_mode"]
    return tuple(model + [f"dfm.{f.name}" for f in dataclasses.fields(DFMConfig)] + list(DATA_STREAM_KEYS))


Guarded = Dict[str, Tuple[Any, str]]
"""dotted key -> (value compared, value shown): e.g. a tokenizer compares by hash, shows hash and path."""


def guarded_fields(cfg: MegaDFMConfig, tokenizer_json_sha256: Optional[str], global_batch: Optional[int],
                   blend: Optional[List[Tuple[str, float]]] = None) -> Guarded:
    """The guarded values of ``cfg``. ``blend`` overrides the (absolute prefix, weight) list read from
    ``cfg`` (a checkpoint's manifest records the absolute paths of its run); ``global_batch`` None
    means unknown (not compared)."""
    out: Guarded = {}
    model = dict(cfg.model.tagged(ARCHITECTURE), attention_mode=cfg.model.attention_mode)  # head_dim resolved
    for name, value in model.items():
        out[f"model.{name}"] = (value, repr(value))
    for f in dataclasses.fields(cfg.dfm):
        value = getattr(cfg.dfm, f.name)
        out[f"dfm.{f.name}"] = (value, repr(value))
    data = cfg.data
    out["data.tokenizer"] = (tokenizer_json_sha256, f"{data.tokenizer} (tokenizer.json sha256 {tokenizer_json_sha256})")
    blend = blend if blend is not None else [(os.path.abspath(s.prefix), float(s.weight)) for s in data.blend]
    out["data.blend"] = (blend, "[" + ", ".join(f"{p} weight {w:g}" for p, w in blend) + "]")
    for key, value in (("data.seq_len", data.seq_len), ("data.split", [float(x) for x in data.split]),
                       ("data.seed", data.seed), ("training.seed", cfg.training.seed)):
        out[key] = (value, repr(value))
    out["training.global_batch_size"] = (global_batch, repr(global_batch))
    return out


def diff_guarded(old: Guarded, new: Guarded) -> List[Tuple[str, str, str]]:
    """(key, old shown, new shown) for every guarded key whose compared values differ, in key order."""
    changes = []
    for key in guarded_keys():
        (a, shown_a), (b, shown_b) = old[key], new[key]
        if key == "training.global_batch_size" and (a is None or b is None):
            continue  # unknown for a checkpoint saved at step 0
        if a != b:
            changes.append((key, shown_a, shown_b))
    return changes


def check_allow_changes(cfg: MegaDFMConfig) -> None:
    """Every key of checkpoint.allow_changes must be one a resume compares (a typo would accept nothing)."""
    known = guarded_keys()
    for key in cfg.checkpoint.allow_changes:
        if key not in known:
            raise ConfigError("checkpoint.allow_changes", f"{key!r} is not a key a resume compares; those are: "
                              f"{', '.join(known)} (every other key may change without being named)")


def checkpoint_guarded(step_dir: str, step: int) -> Guarded:
    """The guarded values checkpoint ``step`` (in ``step_dir``) was trained under, from its config.yaml
    and megadfm_meta.json."""
    config_path, meta_path = os.path.join(step_dir, RUN_CONFIG_FILE), os.path.join(step_dir, META_FILE)
    if not os.path.isfile(config_path):
        raise ProvenanceError(f"{config_path} is missing: the checkpoint's run config cannot be compared with this "
                              "run's, so resuming it is refused (start a new training.output_dir, or use training.init_from)")
    try:
        old = load_config(config_path)
    except ConfigError as e:
        raise ProvenanceError(f"the checkpoint's run config no longer loads ({e}); resuming it is refused (start a new "
                              "training.output_dir, or use training.init_from)") from e
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    global_batch = int(meta["consumed_samples"]) // step if step else None  # every step consumes one global batch
    sources = (meta.get("data_manifest") or {}).get("sources")
    blend = [(s["prefix"], float(s["weight"])) for s in sources] if sources else None
    return guarded_fields(old, meta.get("tokenizer_json_sha256"), global_batch, blend)


def check_resume_provenance(cfg: MegaDFMConfig, ckpt, step: Optional[int], global_batch: int) -> None:
    """Refuse to resume checkpoint ``step`` of ``ckpt`` (a CheckpointManager; None: no resume) when a
    guarded field differs and is not in checkpoint.allow_changes; log the accepted changes."""
    check_allow_changes(cfg)
    if step is None:
        return
    step_dir = os.path.join(ckpt.root, tag_for_step(step))
    changes = diff_guarded(checkpoint_guarded(step_dir, step),
                           guarded_fields(cfg, tokenizer_sha256(cfg.data.tokenizer), global_batch))
    allowed = set(cfg.checkpoint.allow_changes)
    refused = [c for c in changes if c[0] not in allowed]
    if refused:
        lines = "\n".join(f"  {key}: {a} (checkpoint) -> {b} (this run)" for key, a, b in refused)
        keys = ", ".join(key for key, _, _ in refused)
        raise ProvenanceError(
            f"refusing to resume {step_dir}: this run changes what the checkpoint was trained on or computes:\n{lines}\n"
            f"Restore these values, start a new training.output_dir (or training.init_from for the weights only), or "
            f"accept the changes with checkpoint.allow_changes: [{keys}]")
    if _rank0():
        for key, a, b in changes:
            logger.warning("resuming %s with %s changed (checkpoint.allow_changes): %s -> %s", step_dir, key, a, b)


# ---- data -----------------------------------------------------------------------------------------

def summary_path_for(prefix: str) -> str:
    """tools/preprocess_data.py writes {output_prefix}_summary.json next to {output_prefix}_{key}_document."""
    base = prefix.rsplit("_", 2)[0] if prefix.endswith("_document") else prefix
    return f"{base}_summary.json"


def check_summary(prefix: str, tokenizer_dir: str, tokenizer_size: int, tokenizer_json_sha256: Optional[str]) -> bool:
    """Compare ``prefix``'s preprocessing summary with the tokenizer this run reads it with; False when
    there is no summary (provenance unknown), ProvenanceError when it names another tokenizer."""
    path = summary_path_for(prefix)
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        try:
            recorded = json.load(f).get("tokenizer", {})
        except json.JSONDecodeError as e:
            raise ProvenanceError(f"{path}: not valid JSON ({e}); re-run tools/preprocess_data.py for {prefix}") from e
    their_sha = recorded.get("sha256", {}).get("tokenizer.json")
    their_size = recorded.get("size")
    if their_sha != tokenizer_json_sha256 or their_size != tokenizer_size:
        raise ProvenanceError(
            f"{prefix} was tokenized with another tokenizer than data.tokenizer:\n"
            f"  {path}: tokenizer {recorded.get('path')}, tokenizer.json sha256 {their_sha}, size {their_size}\n"
            f"  data.tokenizer {os.path.abspath(tokenizer_dir)}: tokenizer.json sha256 {tokenizer_json_sha256}, size {tokenizer_size}\n"
            f"Re-run tools/preprocess_data.py --tokenizer {tokenizer_dir} for it, or set data.tokenizer to the tokenizer it was made with.")
    return True


def check_data_provenance(cfg: MegaDFMConfig) -> None:
    """Every blend prefix's summary against data.tokenizer, then its token ids (collective: every rank calls it)."""
    if not cfg.data.blend:
        return  # nothing named to check: a custom data source (Trainer's data_factory) brings its own batches
    from megadfm.data.token_validation import validate_blend_token_ids
    from megadfm.data.tokenizer import tokenizer_size as read_tokenizer_size

    tokenizer_size = read_tokenizer_size(cfg.data.tokenizer, cfg.model.mask_token_id)
    sha = tokenizer_sha256(cfg.data.tokenizer)
    for source in cfg.data.blend:
        if not check_summary(source.prefix, cfg.data.tokenizer, tokenizer_size, sha) and _rank0():
            logger.warning("%s has no %s (not made by tools/preprocess_data.py): which tokenizer made it cannot be "
                           "checked; its token ids are still checked against data.tokenizer", source.prefix,
                           os.path.basename(summary_path_for(source.prefix)))
    validate_blend_token_ids(cfg.data, tokenizer_size, cfg.model.vocab_size, cfg.model.mask_token_id)
