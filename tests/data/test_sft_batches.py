"""SFT rows (data.format: sft) from [prompt, response] documents: prompt_mask, packing, tail policies,
EOS loss weights, refusals, resume; pre-training batches unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megadfm.config_base import ConfigError
from megadfm.data.config import BlendSource, DataConfig, SFTConfig
from megadfm.data.indexed import IndexedDataset, IndexedDatasetWriter
from megadfm.data.loader import batches, build_blended_dataset, make_train_iterator
from megadfm.data.packing import DataError, PackedDataset
from megadfm.tokens import IM_END_TOKEN_ID, PAD_TOKEN_ID

SEQ_LEN = 96
QUESTIONS = ["What does os.path.join do?", "Explain list comprehensions in one sentence.", "What is a dict?",
             "How do I reverse a string in Python?", "Name three built-in types.", "What is PEP 8?",
             "Why use a context manager?", "What does `yield` return?", "How do I read a file line by line?",
             "What is the GIL?", "Define a closure.", "What does functools.lru_cache cache?"]
ANSWERS = ["It joins path components with the right separator.", "A compact way to build a list from an iterable.",
           "A mapping from keys to values.", "Slice it: s[::-1].", "int, str and list.", "Python's style guide.",
           "It releases resources even when an exception is raised, so files and locks never leak.",
           "It makes the function a generator; each yield hands one value to the caller.",
           "Iterate over the open file object: for line in f.", "A lock that lets one thread run Python bytecode at a time.",
           "A function that remembers variables of the scope it was defined in.", "Results of calls, keyed by arguments."]


@pytest.fixture(scope="module")
def sft_examples(qwen_tokenizer):
    """(prompt ids, response ids) of 36 real chat-formatted examples; each response ends with <|im_end|>."""
    out = []
    for k in range(36):
        q, a = QUESTIONS[k % len(QUESTIONS)], ANSWERS[(k * 5) % len(ANSWERS)] * (1 + k % 3)
        prompt = qwen_tokenizer.encode(f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
        response = qwen_tokenizer.encode(a, add_special_tokens=False) + [IM_END_TOKEN_ID]
        out.append((prompt, response))
    return out


def write_sft(prefix: str, examples) -> str:
    with IndexedDatasetWriter(prefix, np.int32) as w:
        for prompt, response in examples:
            w.add_document(prompt + response, sequence_lengths=[len(prompt), len(response)])
    return prefix


@pytest.fixture(scope="module")
def sft_prefix(sft_examples, tmp_path_factory):
    return write_sft(str(tmp_path_factory.mktemp("sft") / "chat"), sft_examples)


def sft_config(prefix, tmp_path, **sft) -> DataConfig:
    return DataConfig(blend=[BlendSource(prefix, 1.0)], seq_len=SEQ_LEN, split=[1, 0, 0], seed=3, format="sft",
                      sft=SFTConfig(**sft), cache_dir=str(tmp_path / "cache"))


def one_epoch_batches(cfg: DataConfig, micro_batch_size: int = 4):
    ds = build_blended_dataset(cfg, "train")
    return ds, list(batches(ds, 0, 1, micro_batch_size))


def row_examples(batch, b):
    """(start, length) of every segment of row b, from cu_seqlens (flat boundaries inside [b*L, (b+1)*L])."""
    cu = batch["cu_seqlens"].tolist()
    lo, hi = b * SEQ_LEN, (b + 1) * SEQ_LEN
    inner = [c for c in cu if lo <= c <= hi]
    return [(s - lo, e - s) for s, e in zip(inner[:-1], inner[1:])]


@pytest.mark.parametrize("packing", [False, True])
def test_prompt_mask_is_exactly_the_prompt_and_every_example_once_per_epoch(sft_prefix, sft_examples, tmp_path, packing):
    cfg = sft_config(sft_prefix, tmp_path, packing=packing, padding="exclude")
    ds, got = one_epoch_batches(cfg, micro_batch_size=1)
    n = len(sft_examples)
    assert (len(ds) == n) != packing  # packing puts several examples in some rows
    seen = []
    for batch in got:
        sample = ds[int(batch["sample_index"][0])]
        ids, prompt_mask, pos = batch["input_ids"][0], batch["prompt_mask"][0], batch["position_ids"][0]
        assert batch["prompt_mask"].dtype == torch.bool and batch["prompt_mask"].shape == (1, SEQ_LEN)
        segments = row_examples(batch, 0)
        expected_prompt = torch.zeros(SEQ_LEN, dtype=torch.bool)
        for (start, length), d in zip(segments, sample["documents"]):
            prompt, response = sft_examples[d]
            assert length == len(prompt) + len(response)  # one segment per whole example, never cut
            assert ids[start:start + length].tolist() == prompt + response
            assert pos[start:start + length].tolist() == list(range(length))  # positions restart per example
            expected_prompt[start:start + len(prompt)] = True
            seen.append(d)
        assert torch.equal(prompt_mask, expected_prompt)
        # response_lengths: the stored responses of the row's examples, in row order (telemetry's distribution)
        assert batch["response_lengths"].tolist() == [len(sft_examples[d][1]) for d in sample["documents"]]
        assert len(segments) in (len(sample["documents"]), len(sample["documents"]) + 1)  # + the padding segment
        if not packing:
            assert len(sample["documents"]) == 1
    assert sorted(seen) == list(range(n))
    if packing:
        assert max(len(ds[k]["documents"]) for k in range(len(ds))) >= 2


def test_packing_fills_rows_greedily_and_epochs_reorder_rows(sft_prefix, sft_examples, tmp_path):
    cfg = sft_config(sft_prefix, tmp_path, packing=True, padding="exclude")
    ds = build_blended_dataset(cfg, "train", num_samples=None)
    source = ds.datasets[0]
    lengths = [len(p) + len(r) for p, r in sft_examples]
    order = [int(x) for x in source.rows.order]
    starts = [int(x) for x in source.rows.row_starts]
    for a, b in zip(starts[:-1], starts[1:]):
        total = sum(lengths[order[i]] for i in range(a, b))
        assert total <= SEQ_LEN
        if b < len(order):  # greedy: the next example did not fit
            assert total + lengths[order[b]] > SEQ_LEN
    two = build_blended_dataset(cfg, "train", num_samples=2 * source.samples_per_epoch)
    rows = source.samples_per_epoch
    epoch0 = [two[k]["documents"] for k in range(rows)]
    epoch1 = [two[k]["documents"] for k in range(rows, 2 * rows)]
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1  # same rows, new order
    assert [ds[k]["documents"] for k in range(rows)] == epoch0  # more epochs never change the first


def test_eos_train_fills_the_tail_with_eos_in_the_last_example(sft_prefix, tmp_path):
    cfg = sft_config(sft_prefix, tmp_path, packing=True, padding="eos_train")
    ds, got = one_epoch_batches(cfg)
    tails = 0
    for batch in got:
        assert bool(batch["loss_mask"].all())  # the tail is trained on
        for b in range(batch["input_ids"].shape[0]):
            sample = ds[int(batch["sample_index"][b])]
            real = sum(len(ds.datasets[0].indexed.document(d)) for d in sample["documents"])
            segments = row_examples(batch, b)
            assert len(segments) == len(sample["documents"])  # no padding segment: the tail joined the last example
            assert segments[-1][0] + segments[-1][1] == SEQ_LEN
            assert bool((batch["input_ids"][b, real:] == IM_END_TOKEN_ID).all())
            assert not bool(batch["prompt_mask"][b, real:].any())  # scored as response
            tails += real < SEQ_LEN
    assert tails > 0


def test_exclude_pads_the_tail_as_its_own_segment_out_of_the_loss(sft_prefix, tmp_path):
    cfg = sft_config(sft_prefix, tmp_path, packing=False, padding="exclude")
    ds, got = one_epoch_batches(cfg)
    for batch in got:
        for b in range(batch["input_ids"].shape[0]):
            (doc,) = ds[int(batch["sample_index"][b])]["documents"]
            real = len(ds.datasets[0].indexed.document(doc))
            assert real < SEQ_LEN
            assert row_examples(batch, b) == [(0, real), (real, SEQ_LEN - real)]  # tail attends only to itself
            assert bool((batch["input_ids"][b, real:] == PAD_TOKEN_ID).all())
            assert batch["loss_mask"][b].tolist() == [True] * real + [False] * (SEQ_LEN - real)
            assert not bool(batch["prompt_mask"][b, real:].any())


@pytest.mark.parametrize("padding", ["eos_train", "exclude"])
def test_eos_loss_weight_marks_exactly_the_response_eos_targets(sft_prefix, tmp_path, padding):
    cfg = sft_config(sft_prefix, tmp_path, packing=True, padding=padding, eos_loss_weight=0.25)
    _, got = one_epoch_batches(cfg)
    for batch in got:
        w = batch["loss_weights"]
        assert w.dtype == torch.float32 and w.shape == batch["input_ids"].shape
        eos = (batch["input_ids"] == IM_END_TOKEN_ID) & ~batch["prompt_mask"] & batch["loss_mask"]
        assert bool((w[eos] == 0.25).all()) and bool((w[~eos] == 1.0).all())
        assert bool(eos.any())
        # the prompt's own <|im_end|> (end of the user turn) is not a target and keeps weight 1
        assert bool(((batch["input_ids"] == IM_END_TOKEN_ID) & batch["prompt_mask"]).any())
    plain = sft_config(sft_prefix, tmp_path, packing=True, padding=padding)
    assert "loss_weights" not in one_epoch_batches(plain)[1][0]  # weight 1.0: the key (and its cost) is absent


def test_overlong_example_is_refused_naming_prefix_and_document(sft_examples, tmp_path):
    long_prompt = sft_examples[0][0] * 12
    examples = list(sft_examples[:5]) + [(long_prompt, sft_examples[1][1])] + list(sft_examples[5:8])
    prefix = write_sft(str(tmp_path / "long"), examples)
    with pytest.raises(DataError, match=r"long: SFT example document 5 has \d+ tokens \(prompt \d+ \+ response \d+\), "
                                        r"more than data.seq_len=96; 1 of the split's 9"):
        build_blended_dataset(sft_config(prefix, tmp_path), "train")


def test_a_document_that_is_not_prompt_plus_response_is_refused(tmp_path):
    prefix = str(tmp_path / "plain")
    with IndexedDatasetWriter(prefix, np.int32) as w:
        w.add_document([1, 2, 3], sequence_lengths=[1, 2])
        w.add_document([4, 5, 6])  # one sequence: pre-training style, or an empty prompt
    with pytest.raises(DataError, match=r"plain: document 1 has 1 sequence\(s\); data.format: sft needs"):
        build_blended_dataset(sft_config(prefix, tmp_path), "train")


def test_bad_sft_config_names_the_field():
    with pytest.raises(ConfigError, match="eos_loss_weight"):
        SFTConfig(eos_loss_weight=-1.0)


def test_split_by_document_and_resume_by_consumed_samples(sft_prefix, sft_examples, tmp_path):
    cfg = DataConfig(blend=[BlendSource(sft_prefix, 1.0)], seq_len=SEQ_LEN, split=[0.75, 0.25, 0], seed=3,
                     format="sft", sft=SFTConfig(packing=True), cache_dir=str(tmp_path / "cache"))
    train, valid = build_blended_dataset(cfg, "train"), build_blended_dataset(cfg, "valid")
    train_docs = {d for k in range(len(train)) for d in train[k]["documents"]}
    valid_docs = {d for k in range(len(valid)) for d in valid[k]["documents"]}
    assert train_docs == set(range(27)) and valid_docs == set(range(27, 36))  # contiguous document ranges
    full = list(make_train_iterator(cfg, 0, 1, 2, consumed_samples=0, num_samples=24))
    resumed = list(make_train_iterator(cfg, 0, 1, 2, consumed_samples=10, num_samples=24))
    assert len(full) == 12 and len(resumed) == 7
    for a, b in zip(full[5:], resumed):
        for key in ("input_ids", "prompt_mask", "loss_mask", "cu_seqlens", "sample_index"):
            assert torch.equal(a[key], b[key]), key


def test_pretrain_batches_have_no_sft_keys_and_are_unchanged(stdlib_corpus, tmp_path):
    prefix, _ = stdlib_corpus
    base = dict(blend=[BlendSource(prefix, 1.0)], seq_len=128, split=[1, 0, 0], seed=5)
    default = DataConfig(**base, cache_dir=str(tmp_path / "a"))
    # sft settings are read only with format: sft
    explicit = DataConfig(**base, format="pretrain", sft=SFTConfig(packing=True, eos_loss_weight=0.5),
                          cache_dir=str(tmp_path / "b"))
    a = next(make_train_iterator(default, 0, 1, 4, consumed_samples=0, num_samples=8))
    b = next(make_train_iterator(explicit, 0, 1, 4, consumed_samples=0, num_samples=8))
    assert set(a) == {"input_ids", "position_ids", "cu_seqlens", "max_seqlen", "loss_mask", "sample_index",
                      "dataset_index", "dataset_sample_index"}
    for key in a:
        assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key
    # and they are the pre-training packer's samples (packing.py), untouched by the sft code path
    ix = IndexedDataset(prefix)
    packed = PackedDataset(ix, "train", (0, ix.num_documents), 128, 5, 1, str(tmp_path / "c"), PAD_TOKEN_ID)
    for r in range(4):
        assert a["input_ids"][r].tolist() == packed[r]["tokens"].tolist()
        assert a["loss_mask"][r].sum() == packed[r]["num_tokens"]
