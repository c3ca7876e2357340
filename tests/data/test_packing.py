"""Packing a real preprocessed stdlib corpus into samples: coverage, boundaries, ranks, resume, determinism."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch

from megadfm.data.config import BlendSource, DataConfig
from megadfm.data.indexed import IndexedDataset
from megadfm.data.loader import RankBatches, batches as rank_batches, build_blended_dataset, make_train_iterator
from megadfm.data.packing import DataError, PackedDataset, split_ranges

EOD = 151643
SEQ_LEN = 256


def config(prefix: str, tmp_path, **kw) -> DataConfig:
    kw.setdefault("seq_len", SEQ_LEN)
    kw.setdefault("split", [0.9, 0.1, 0.0])
    return DataConfig(blend=[BlendSource(prefix=prefix, weight=1.0)], cache_dir=str(tmp_path / "cache"), **kw)


def test_split_ranges_follow_megatron_rounding():
    assert split_ranges(60, [0.9, 0.1, 0.0]) == [(0, 54), (54, 60), (60, 60)]
    assert split_ranges(10, [98, 1, 1]) == [(0, 10), (10, 10), (10, 10)]
    # 7/3 rounds to 2, 2, 2 (sum 6): Megatron shifts every bound after the first by the shortfall
    assert split_ranges(7, [1, 1, 1]) == [(0, 3), (3, 5), (5, 7)]


def test_every_token_once_per_epoch(stdlib_corpus, tmp_path):
    prefix, _ = stdlib_corpus
    ix = IndexedDataset(prefix)
    (first, end), = split_ranges(ix.num_documents, [0.9, 0.1, 0.0])[:1]
    ds = PackedDataset(ix, "train", (first, end), SEQ_LEN, seed=7, num_epochs=2, cache_dir=str(tmp_path), pad_token_id=EOD)
    lengths = ix.document_lengths()
    assert ds.samples_per_epoch == -(-int(lengths[first:end].sum()) // SEQ_LEN)
    orders = []
    for epoch in range(2):
        covered = {d: [] for d in range(first, end)}
        padded = 0
        order = []
        for k in range(epoch * ds.samples_per_epoch, (epoch + 1) * ds.samples_per_epoch):
            s = ds[k]
            assert sum(s["segment_lengths"]) == SEQ_LEN
            padded += s["num_tokens"] < SEQ_LEN
            assert np.all(s["tokens"][s["num_tokens"]:] == EOD)
            at = 0
            for n, d, o in zip(s["segment_lengths"], s["documents"], s["offsets"]):
                # each segment is a contiguous piece of one document of this split
                assert first <= d < end
                assert np.array_equal(s["tokens"][at:at + n], ix.document(d)[o:o + n])
                covered[d].append((o, o + n))
                at += n
            order.append(s["documents"][0])
        assert padded == (1 if int(lengths[first:end].sum()) % SEQ_LEN else 0)
        for d, pieces in covered.items():  # the pieces of a document tile it exactly once
            pieces.sort()
            assert [a for a, _ in pieces] == [0] + [b for _, b in pieces[:-1]]
            assert pieces[-1][1] == lengths[d]
        orders.append(order)
    assert orders[0] != orders[1]  # each epoch has its own document and sample order


def _drain(iterator):
    return [b for b in iterator]


def test_batches_follow_the_contract(stdlib_corpus, tmp_path):
    prefix, _ = stdlib_corpus
    cfg = config(prefix, tmp_path)
    batches = _drain(make_train_iterator(cfg, 0, 1, 4, 0, num_samples=400))
    assert len(batches) == 100
    saw_boundary = False
    for b in batches:
        ids, pos, cu, mask = b["input_ids"], b["position_ids"], b["cu_seqlens"], b["loss_mask"]
        assert ids.shape == pos.shape == mask.shape == (4, SEQ_LEN) and ids.dtype == torch.long
        assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == 4 * SEQ_LEN
        assert b["max_seqlen"] == int((cu[1:] - cu[:-1]).max())
        assert set(range(0, 4 * SEQ_LEN + 1, SEQ_LEN)) <= set(cu.tolist())  # every sample start is a boundary
        flat_ids, flat_pos, flat_mask = ids.flatten(), pos.flatten(), mask.flatten()
        for a, z in zip(cu[:-1].tolist(), cu[1:].tolist()):
            assert flat_pos[a:z].tolist() == list(range(z - a))  # positions restart at each segment
            segment = flat_ids[a:z]
            if not flat_mask[a]:
                assert not flat_mask[a:z].any() and (a // SEQ_LEN + 1) * SEQ_LEN == z  # padding runs to the row end
                continue
            assert flat_mask[a:z].all()
            # documents end in EOD: a segment holds no EOD except as its last token, and a
            # segment that ends before its row does ends exactly at a document boundary
            assert EOD not in segment[:-1].tolist()
            if z % SEQ_LEN:
                saw_boundary = True
                assert segment[-1] == EOD or not flat_mask[z]
    assert saw_boundary


def test_padding_only_in_the_last_sample_of_an_epoch(stdlib_corpus, tmp_path):
    prefix, _ = stdlib_corpus
    dataset = build_blended_dataset(config(prefix, tmp_path), "train", num_samples=3000)
    n = dataset.datasets[0].samples_per_epoch
    real = np.array([dataset[s]["num_tokens"] for s in range(min(len(dataset), 2 * n))])
    assert (real < SEQ_LEN).sum() == 2 and real.sum() == 2 * dataset.datasets[0].tokens_per_epoch


def test_ranks_are_disjoint_and_cover_the_epoch(stdlib_corpus, tmp_path):
    prefix, _ = stdlib_corpus
    cfg = config(prefix, tmp_path)
    total = build_blended_dataset(cfg, "train", num_samples=10 ** 6).datasets[0].samples_per_epoch
    world, mbs = 3, 2
    seen = [torch.cat([b["sample_index"] for b in make_train_iterator(cfg, r, world, mbs, 0, total)]) for r in range(world)]
    flat = torch.cat(seen).tolist()
    assert len(flat) == len(set(flat)) == total - total % (world * mbs)
    assert sorted(flat) == list(range(len(flat)))
    assert seen[1][:mbs].tolist() == [2, 3] and seen[2][mbs:2 * mbs].tolist() == [10, 11]  # contiguous slices per step


def test_resume_from_the_counter_equals_uninterrupted(stdlib_corpus, small_corpus, tmp_path):
    cfg = DataConfig(blend=[BlendSource(stdlib_corpus[0], 0.6), BlendSource(small_corpus[0], 0.4)], seq_len=64,
                     split=[0.9, 0.1, 0.0], cache_dir=str(tmp_path / "cache"), seed=3)
    world, mbs, accum, steps = 2, 2, 3, 5
    global_batch = world * mbs * accum
    runs = [list(make_train_iterator(cfg, r, world, mbs, 0, steps * global_batch)) for r in range(world)]
    k = 2  # stop after step 2 and resume: same batches, bit for bit
    for r in range(world):
        resumed = list(make_train_iterator(cfg, r, world, mbs, k * global_batch, steps * global_batch))
        uninterrupted = runs[r][k * accum:]
        assert len(resumed) == len(uninterrupted) == (steps - k) * accum
        for a, b in zip(resumed, uninterrupted):
            assert a.keys() == b.keys() and all(torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])) for key in a)
    # another world size with the same global batch consumes the same global sample sequence
    single = torch.cat([b["sample_index"] for b in make_train_iterator(cfg, 0, 1, world * mbs, 0, steps * global_batch)])
    interleaved = torch.stack([torch.cat([b["sample_index"] for b in run]).view(-1, mbs) for run in runs], 1).flatten()
    assert torch.equal(single, interleaved)


def test_same_seed_same_data_other_seed_other_order(stdlib_corpus, tmp_path):
    prefix, _ = stdlib_corpus

    def first_batches(seed):
        it = make_train_iterator(config(prefix, tmp_path, seed=seed), 0, 1, 4, 0, 40)
        return torch.cat([b["input_ids"] for b in itertools.islice(it, 5)])

    assert torch.equal(first_batches(1), first_batches(1))
    assert not torch.equal(first_batches(1), first_batches(2))
    assert len([f for f in os.listdir(tmp_path / "cache") if f.endswith(".json")]) == 2  # one cached index per seed


def test_valid_iterator_is_one_pass_over_the_valid_split(stdlib_corpus, tmp_path):
    prefix, _ = stdlib_corpus
    cfg = config(prefix, tmp_path)
    ix = IndexedDataset(prefix)
    a, b = split_ranges(ix.num_documents, cfg.split)[1]
    batches = list(rank_batches(build_blended_dataset(cfg, "valid"), 0, 1, 1))  # what the trainer validates on
    tokens = sum(int(batch["loss_mask"].sum()) for batch in batches)
    assert tokens == int(ix.document_lengths()[a:b].sum())
    docs = {int(d) for batch in batches for d in batch["input_ids"][batch["loss_mask"]].unique()}
    assert docs <= set(np.unique(np.concatenate([ix.document(j) for j in range(a, b)])).tolist())


def test_empty_split_and_bad_positions_are_clear_errors(stdlib_corpus, tmp_path):
    prefix, _ = stdlib_corpus
    with pytest.raises(DataError, match="the test split .* has no tokens"):
        build_blended_dataset(config(prefix, tmp_path), "test")
    with pytest.raises(DataError, match="multiple of micro_batch_size\\*world_size=8"):
        RankBatches(100, 0, 2, 4, consumed_samples=4)
    with pytest.raises(DataError, match="rank 2 is outside"):
        RankBatches(100, 2, 2, 4, consumed_samples=0)


def test_readme_worked_example(tmp_path):
    from megadfm.data.indexed import IndexedDatasetWriter

    prefix = str(tmp_path / "example")
    d0, d1, d2 = list(range(100, 105)), list(range(200, 203)), list(range(300, 307))
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for doc in (d0, d1, d2):
            w.add_document(doc)
    cfg = DataConfig(blend=[BlendSource(prefix, 1.0)], seq_len=4, seed=2, split=[1, 0, 0], pad_token_id=0,
                     cache_dir=str(tmp_path / "cache"))
    batch = next(make_train_iterator(cfg, 0, 1, 2, 0, num_samples=8))
    assert batch["input_ids"].tolist() == [d0[2:5] + [0], d1[1:3] + d0[0:2]]
    assert batch["cu_seqlens"].tolist() == [0, 3, 4, 6, 8]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0], [0, 1, 0, 1]]
    assert batch["loss_mask"].tolist() == [[True, True, True, False], [True] * 4]
    assert batch["max_seqlen"] == 3
    assert batch["sample_index"].tolist() == [0, 1] and batch["dataset_sample_index"].tolist() == [0, 1]


def test_dataloader_workers_give_the_same_batches(stdlib_corpus, tmp_path):
    prefix, _ = stdlib_corpus
    inline = list(make_train_iterator(config(prefix, tmp_path), 1, 2, 3, 12, num_samples=120))
    workers = list(make_train_iterator(config(prefix, tmp_path, num_workers=2), 1, 2, 3, 12, num_samples=120))
    assert len(inline) == len(workers) == 18
    for a, b in zip(inline, workers):
        assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
