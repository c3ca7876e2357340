"""Provenance gates: the resume config diff and checkpoint.allow_changes, data summaries against
data.tokenizer, and one real 2-process run whose resume with a changed seq_len is refused."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

from megadfm.checkpoints.layout import META_FILE, RUN_CONFIG_FILE, tag_for_step
from megadfm.config import ConfigError, MegaDFMConfig, config_to_yaml
from megadfm.config_base import build
from megadfm.data.indexed import IndexedDatasetWriter
from megadfm.model.config import ModelConfig
from megadfm.training.callbacks.checkpointing import tokenizer_sha256
from megadfm.training.provenance import (ProvenanceError, check_data_provenance, check_resume_provenance, guarded_keys)

from tests.conftest import preprocess
from tests.training.engine_helpers import assert_ok, run, tiny_config, write_config

STEP = 2
GLOBAL_BATCH = 4  # micro 2 x accumulation 1 x 2 ranks


def make_cfg(tmp_path, tokenizer_dir, **sections) -> MegaDFMConfig:
    return build(MegaDFMConfig, tiny_config(str(tmp_path / "run"), str(tmp_path / "data_text_document"), tokenizer_dir, **sections))


class Ckpt:
    """What check_resume_provenance reads of a CheckpointManager: the checkpoints root."""

    def __init__(self, root: str):
        self.root = root


def fake_checkpoint(tmp_path, cfg: MegaDFMConfig, tokenizer_hash=None) -> Ckpt:
    """A step directory as CheckpointCallback.save writes it (config.yaml and megadfm_meta.json)."""
    root = tmp_path / "run" / "checkpoints"
    step_dir = root / tag_for_step(STEP)
    step_dir.mkdir(parents=True)
    (step_dir / RUN_CONFIG_FILE).write_text(config_to_yaml(cfg))
    sources = [{"prefix": os.path.abspath(s.prefix), "weight": s.weight} for s in cfg.data.blend]
    meta = {"consumed_samples": STEP * GLOBAL_BATCH, "data_manifest": {"sources": sources, "seq_len": cfg.data.seq_len},
            "tokenizer_json_sha256": tokenizer_hash or tokenizer_sha256(cfg.data.tokenizer)}
    (step_dir / META_FILE).write_text(json.dumps(meta))
    return Ckpt(str(root))


def test_guarded_keys_cover_the_architecture_dfm_and_data_stream():
    keys = set(guarded_keys())
    assert {f"model.{k}" for k in ModelConfig().tagged("architecture")} <= keys
    assert {"model.attention_mode", "model.rope_theta", "dfm.shift_logits", "dfm.scheduler", "data.tokenizer", "data.blend",
            "data.seq_len", "data.split", "data.seed", "training.seed", "training.global_batch_size"} <= keys
    assert not keys & {"training.lr", "training.train_steps", "checkpoint.save_interval", "model.kernels", "model.dtype"}


def test_free_changes_resume_silently(tmp_path, tokenizer_dir, caplog):
    ckpt = fake_checkpoint(tmp_path, make_cfg(tmp_path, tokenizer_dir))
    new = make_cfg(tmp_path, tokenizer_dir, training={"lr": 1e-4, "min_lr": 1e-5, "train_steps": 50, "log_interval": 7,
                                                      "output_dir": str(tmp_path / "elsewhere"), "grad_accum_steps": 2},
                   checkpoint={"save_interval": 9}, telemetry={"wandb": "offline"}, model={"kernels": "auto"})
    with caplog.at_level(logging.WARNING, logger="megadfm"):
        check_resume_provenance(new, ckpt, STEP, GLOBAL_BATCH)  # accumulation 2 x 1 rank: the same global batch
    assert not caplog.records


def test_guarded_changes_are_listed_with_old_and_new_values(tmp_path, tokenizer_dir):
    ckpt = fake_checkpoint(tmp_path, make_cfg(tmp_path, tokenizer_dir))
    new = make_cfg(tmp_path, tokenizer_dir, data={"seq_len": 32, "seed": 7}, model={"rope_theta": 10000.0, "hidden_size": 64,
                   "attention_mode": "causal"}, dfm={"shift_logits": False}, training={"seed": 99, "lr": 1e-4, "min_lr": 1e-5})
    with pytest.raises(ProvenanceError) as e:
        check_resume_provenance(new, ckpt, STEP, GLOBAL_BATCH)
    msg = str(e.value)
    for line in ("model.hidden_size: 32 (checkpoint) -> 64 (this run)", "model.rope_theta: 1000000.0 (checkpoint) -> 10000.0",
                 "model.attention_mode: 'bidirectional' (checkpoint) -> 'causal'", "dfm.shift_logits: True (checkpoint) -> False",
                 "data.seq_len: 64 (checkpoint) -> 32", "data.seed: 1234 (checkpoint) -> 7", "training.seed: 1234 (checkpoint) -> 99"):
        assert line in msg, (line, msg)
    assert "training.lr" not in msg and os.path.join(ckpt.root, tag_for_step(STEP)) in msg
    assert ("checkpoint.allow_changes: [model.hidden_size, model.rope_theta, model.attention_mode, dfm.shift_logits, "
            "data.seq_len, data.seed, training.seed]") in msg


def test_tokenizer_blend_and_global_batch_changes(tmp_path, tokenizer_dir):
    ckpt = fake_checkpoint(tmp_path, make_cfg(tmp_path, tokenizer_dir), tokenizer_hash="0" * 64)
    new = make_cfg(tmp_path, tokenizer_dir, data={"blend": [{"prefix": str(tmp_path / "data_text_document"), "weight": 2.0}]})
    with pytest.raises(ProvenanceError) as e:
        check_resume_provenance(new, ckpt, STEP, 8)
    msg = str(e.value)
    ours = tokenizer_sha256(tokenizer_dir)
    assert f"data.tokenizer: {tokenizer_dir} (tokenizer.json sha256 {'0' * 64}) (checkpoint) -> {tokenizer_dir} (tokenizer.json sha256 {ours})" in msg
    assert "data.blend: [" in msg and "weight 1] (checkpoint) -> [" in msg and "weight 2] (this run)" in msg
    assert "training.global_batch_size: 4 (checkpoint) -> 8 (this run)" in msg


def test_allow_changes_accepts_named_keys_and_logs_them(tmp_path, tokenizer_dir, caplog):
    ckpt = fake_checkpoint(tmp_path, make_cfg(tmp_path, tokenizer_dir))
    changed = {"data": {"seq_len": 32}, "model": {"rope_theta": 10000.0}}
    partly = make_cfg(tmp_path, tokenizer_dir, checkpoint={"allow_changes": ["data.seq_len"]}, **changed)
    with pytest.raises(ProvenanceError) as e:
        check_resume_provenance(partly, ckpt, STEP, GLOBAL_BATCH)
    assert "model.rope_theta" in str(e.value) and "data.seq_len" not in str(e.value)

    both = make_cfg(tmp_path, tokenizer_dir, checkpoint={"allow_changes": ["data.seq_len", "model.rope_theta"]}, **changed)
    with caplog.at_level(logging.WARNING, logger="megadfm"):
        check_resume_provenance(both, ckpt, STEP, GLOBAL_BATCH)
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2 and "data.seq_len changed (checkpoint.allow_changes): 64 -> 32" in logged[1]


def test_unknown_allow_changes_key_and_missing_config_are_errors(tmp_path, tokenizer_dir):
    with pytest.raises(ConfigError, match="'training.lr' is not a key a resume compares"):
        check_resume_provenance(make_cfg(tmp_path, tokenizer_dir, checkpoint={"allow_changes": ["training.lr"]}), None, None, 4)
    ckpt = fake_checkpoint(tmp_path, make_cfg(tmp_path, tokenizer_dir))
    os.remove(os.path.join(ckpt.root, tag_for_step(STEP), RUN_CONFIG_FILE))
    with pytest.raises(ProvenanceError, match="config.yaml is missing"):
        check_resume_provenance(make_cfg(tmp_path, tokenizer_dir), ckpt, STEP, GLOBAL_BATCH)


# ---- data summaries ------------------------------------------------------------------------------

def test_data_from_another_tokenizer_of_the_same_size_is_refused(tmp_path, tokenizer_dir, qwen_tokenizer, preprocess_tool):
    # another tokenizer.json of the same size: the same vocabulary, written out differently
    other = tmp_path / "other_tokenizer"
    shutil.copytree(tokenizer_dir, other)
    content = json.load(open(other / "tokenizer.json", encoding="utf-8"))
    (other / "tokenizer.json").write_text(json.dumps(content, indent=1), encoding="utf-8")
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": "import os\nprint(os.sep)\n"}) + "\n")
    preprocess(preprocess_tool, qwen_tokenizer, str(other), [str(src)], str(tmp_path / "data"), "--append-eod")
    cfg = make_cfg(tmp_path, tokenizer_dir)
    with pytest.raises(ProvenanceError) as e:
        check_data_provenance(cfg)
    msg = str(e.value)
    assert f"{tmp_path / 'data_text_document'} was tokenized with another tokenizer than data.tokenizer" in msg
    assert f"tokenizer {other}, tokenizer.json sha256 {tokenizer_sha256(str(other))}, size {len(qwen_tokenizer)}" in msg
    assert f"data.tokenizer {tokenizer_dir}: tokenizer.json sha256 {tokenizer_sha256(tokenizer_dir)}, size {len(qwen_tokenizer)}" in msg


def test_prefix_without_summary_warns_once_then_checks_ids(tmp_path, tokenizer_dir, caplog):
    with IndexedDatasetWriter(str(tmp_path / "data_text_document"), np.int32) as w:
        for n in (30, 12):
            w.add_document(np.arange(n) + 100)
    with caplog.at_level(logging.WARNING):
        check_data_provenance(make_cfg(tmp_path, tokenizer_dir))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "has no data_summary.json" in warnings[0] and "cannot be checked" in warnings[0]


def test_matching_summary_passes(tmp_path, tokenizer_dir, stdlib_prefix, caplog):
    cfg = build(MegaDFMConfig, tiny_config(str(tmp_path / "run"), stdlib_prefix, tokenizer_dir))
    with caplog.at_level(logging.WARNING):
        check_data_provenance(cfg)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ---- one real run ---------------------------------------------------------------------------------

def test_resume_with_changed_seq_len_is_refused_unless_allowed(tmp_path, stdlib_prefix, tokenizer_dir):
    run_dir = str(tmp_path / "run")
    cfg = tiny_config(run_dir, stdlib_prefix, tokenizer_dir, training={"train_steps": 2}, checkpoint={"save_interval": 0})
    path = write_config(str(tmp_path / "c.yaml"), cfg)
    assert_ok(run(path, nproc=2))

    refused = run(path, nproc=2, overrides=["data.seq_len=32"])
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "refusing to resume" in out, out[-4000:]
    assert "data.seq_len: 64 (checkpoint) -> 32 (this run)" in out and "resumed from" not in out

    allowed = run(path, nproc=2, overrides=["data.seq_len=32", "checkpoint.allow_changes=[data.seq_len]", "training.train_steps=3"])
    assert_ok(allowed)
    assert "data.seq_len changed (checkpoint.allow_changes): 64 -> 32" in allowed.stdout
    assert "resumed from" in allowed.stdout and "done: 3 steps" in allowed.stdout
