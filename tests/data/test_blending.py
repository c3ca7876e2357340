"""Blending real preprocessed corpora: Megatron's rule, proportions, exhaustion policy, logged mix."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from megadfm.data.blending import build_blend_index
from megadfm.data.config import BlendSource, DataConfig
from megadfm.data.indexed import IndexedDataset
from megadfm.data.loader import build_blended_dataset, make_train_iterator
from megadfm.data.packing import DataError


def test_megatron_rule_worked_example():
    # README.md: weights 0.5 / 0.3 / 0.2, the source with the largest shortfall w_d*max(s,1) - count_d wins
    index = build_blend_index([5, 3, 2], 10)
    assert index["dataset_index"].tolist() == [0, 1, 2, 0, 1, 0, 2, 0, 1, 0]
    assert index["dataset_sample_index"].tolist() == [0, 0, 0, 1, 1, 2, 1, 3, 2, 4]


def blend(stdlib_corpus, small_corpus, tmp_path, weights, **kw) -> DataConfig:
    return DataConfig(blend=[BlendSource(stdlib_corpus[0], weights[0]), BlendSource(small_corpus[0], weights[1])],
                      seq_len=32, split=[1.0, 0.0, 0.0], cache_dir=str(tmp_path / "cache"), **kw)


def test_proportions_follow_the_weights_not_the_corpus_sizes(stdlib_corpus, small_corpus, tmp_path, caplog):
    cfg = blend(stdlib_corpus, small_corpus, tmp_path, [0.35, 0.65])  # the small corpus gets most samples
    with caplog.at_level(logging.INFO, logger="megadfm.data"):
        dataset = build_blended_dataset(cfg, "train", num_samples=10_000)
    counts = np.bincount(np.asarray(dataset.dataset_index), minlength=2)
    assert abs(counts[0] / 10_000 - 0.35) < 0.01 and abs(counts[1] / 10_000 - 0.65) < 0.01
    # after every prefix each source is within one sample of its share
    running = np.cumsum(np.eye(2)[np.asarray(dataset.dataset_index)], axis=0)
    assert np.abs(running - np.arange(1, 10_001)[:, None] * np.array([0.35, 0.65])).max() <= 1.0
    # the small corpus holds fewer samples than asked for: it repeats, and that is logged
    assert dataset.mix[1]["epochs"] > 1 > dataset.mix[0]["epochs"]
    assert dataset.mix[1]["corpus_token_share"] < 0.35
    log = caplog.text
    assert "weights are fractions of samples drawn, not of corpus size" in log
    assert "repeating it for" in log and small_corpus[0] in log
    # every sample holds tokens of the source the blend index names
    sources = [IndexedDataset(stdlib_corpus[0]), IndexedDataset(small_corpus[0])]
    for s in range(0, 10_000, 97):
        sample = dataset[s]
        at = 0
        for n, doc, offset in zip(sample["segment_lengths"], sample["documents"], sample["offsets"]):
            expected = sources[sample["dataset_index"]].document(doc)[offset:offset + n]
            assert np.array_equal(sample["tokens"][at:at + n], expected)
            at += n


def test_batches_carry_the_blend_identity(stdlib_corpus, small_corpus, tmp_path):
    cfg = blend(stdlib_corpus, small_corpus, tmp_path, [3, 1])
    batch = next(make_train_iterator(cfg, 1, 2, 4, 8, num_samples=64))
    index = build_blend_index([0.75, 0.25], 64)
    assert batch["sample_index"].tolist() == [12, 13, 14, 15]
    assert batch["dataset_index"].tolist() == index["dataset_index"][12:16].tolist()
    assert batch["dataset_sample_index"].tolist() == index["dataset_sample_index"][12:16].tolist()


def test_on_exhausted_error_raises_naming_the_source(stdlib_corpus, small_corpus, tmp_path):
    cfg = blend(stdlib_corpus, small_corpus, tmp_path, [0.35, 0.65], on_exhausted="error")
    with pytest.raises(DataError, match=small_corpus[0] + ".*but one epoch holds .*data.on_exhausted"):
        build_blended_dataset(cfg, "train", num_samples=10_000)
    # within one epoch the same config is fine
    assert len(build_blended_dataset(cfg, "train", num_samples=1_000)) == 1_000


def test_longer_run_extends_never_reorders(stdlib_corpus, small_corpus, tmp_path):
    cfg = blend(stdlib_corpus, small_corpus, tmp_path, [0.5, 0.5])
    short = build_blended_dataset(cfg, "train", num_samples=500)
    long = build_blended_dataset(cfg, "train", num_samples=9_000)  # more epochs of the small corpus
    for s in range(0, 500, 7):
        assert np.array_equal(short[s]["tokens"], long[s]["tokens"])
