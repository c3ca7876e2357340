"""Overfit-and-answer: fine-tune a tiny Qwen3DFM on four real instruction pairs through the whole SFT
path, then ask the questions through the chat path and get the exact responses back, with both samplers.

The pairs are four short records of the stdlib instruction set (megadfm/data/stdlib_instructions.py).
Every step is the production one:
- ``preprocess_data.py --chat`` writes them as [prompt, response] documents with the chat template;
- ``data.format: sft`` rows give ``prompt_mask``, and the EOS tail is trained (``padding: eos_train``);
- ``dfm_loss`` uses the ``response_length`` normaliser;
- the question is rendered by ``ChatEncoder.generation_prompt_ids``, the function behind
  ``generate.py --chat`` and the evaluation's chat mode;
- the sampler stops at ``<|im_end|>``, and ``reply_text`` strips the template's empty think block.

The model never sees a response token in its input unless that token is unmasked by the path, and
the prompt is never masked, so answering from the prompt alone proves that prompt and response are
wired as documented.

Training: plain torch AdamW, 200 steps, 4 copies of the 4 rows per batch. Vocabulary: the distinct Qwen3 ids of the four examples are remapped to a compact vocabulary
(mask = K), as in test_overfit_regenerate.py, so that training takes seconds on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import pytest

from megadfm.data.chat import ChatEncoder, reply_text, resolve_chat_template
from megadfm.data.config import BlendSource, DataConfig, SFTConfig
from megadfm.data.loader import build_blended_dataset, collate_samples
from megadfm.data.stdlib_instructions import build, stdlib_root
from megadfm.dfm.config import DFMConfig
from megadfm.dfm.sampler import generate
from megadfm.dfm.sampler_config import SamplerConfig
from megadfm.model import ModelConfig, Qwen3DFM
from megadfm.tokens import IM_END_TOKEN_ID
from tests.conftest import preprocess
from tests.dfm.helpers import memorize

PAIRS, STEPS, COPIES, LR, TAIL = 4, 200, 4, 5e-3, 8
SEED = int(os.environ.get("MEGADFM_OVERFIT_SEED", "0"))  # model init + training RNG; seeds 0-2 checked


@dataclass
class Tuned:
    model: Qwen3DFM
    dfm: DFMConfig
    encoder: ChatEncoder
    records: List[Dict[str, str]]
    compact: Dict[int, int]   # Qwen3 id -> compact id
    vocab: List[int]          # compact id -> Qwen3 id
    mask_id: int
    seq_len: int
    rows: List[Dict[str, object]]  # the training rows, in compact ids


def short_records(n: int) -> List[Dict[str, str]]:
    """The n shortest training records (prompt + response characters) of the first 40 stdlib files."""
    train = build(stdlib_root(), limit=40).train
    picked = sorted(train, key=lambda e: (len(e.prompt) + len(e.response), e.source))[:n]
    return [e.to_json() for e in picked]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, preprocess_tool, qwen_tokenizer, tokenizer_dir) -> Tuned:
    records = short_records(PAIRS)
    folder = tmp_path_factory.mktemp("sft_overfit")
    jsonl = folder / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = preprocess(preprocess_tool, qwen_tokenizer, tokenizer_dir, [str(jsonl)], str(folder / "pairs"), "--chat")
    assert summary["documents"] == PAIRS

    encoder = ChatEncoder(qwen_tokenizer, resolve_chat_template(tokenizer_dir, qwen_tokenizer))
    prefix = str(folder / "pairs_chat_document")
    from megadfm.data.indexed import IndexedDataset

    lengths = [len(IndexedDataset(prefix).document(i)) for i in range(PAIRS)]
    seq_len = max(lengths) + TAIL  # every row ends with at least TAIL trained <|im_end|> (padding: eos_train)
    data = DataConfig(blend=[BlendSource(prefix, 1.0)], seq_len=seq_len, split=[1, 0, 0], format="sft",
                      sft=SFTConfig(packing=False, padding="eos_train"), cache_dir=str(folder / "cache"))
    ds = build_blended_dataset(data, "train")
    samples = [ds[i] for i in range(len(ds))]
    assert len(samples) == PAIRS

    vocab = sorted({int(x) for s in samples for x in s["tokens"]} | {IM_END_TOKEN_ID})
    compact = {tok: i for i, tok in enumerate(vocab)}
    mask_id = len(vocab)
    rows = []
    for s in samples:
        rows.append({**s, "tokens": np.array([compact[int(x)] for x in s["tokens"]], dtype=np.int64)})
    batch = collate_samples(rows * COPIES)

    model_cfg = ModelConfig(vocab_size=(mask_id + 8) // 8 * 8, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, mask_token_id=mask_id, kernels="torch")
    model = Qwen3DFM(model_cfg, seed=SEED)
    dfm = DFMConfig(scheduler="linear", loss_normalizer="response_length", mask_ratio_eps=0.05)
    memorize(model, batch, dfm, STEPS, LR, SEED, compact[IM_END_TOKEN_ID])
    return Tuned(model, dfm, encoder, records, compact, vocab, mask_id, seq_len, rows)


def test_the_chat_prompt_is_the_trained_prompt(tuned):
    """generate.py --chat's rendering of the question equals the prompt preprocessing stored."""
    for record, row in zip(tuned.records, sorted(tuned.rows, key=lambda r: r["documents"][0])):
        ids = [tuned.compact[i] for i in tuned.encoder.generation_prompt_ids([{"role": "user", "content": record["prompt"]}])]
        mask = np.asarray(row["prompt_mask"])
        assert ids == row["tokens"][mask].tolist() and int(mask.sum()) == len(ids)


@pytest.mark.parametrize("sampler", [SamplerConfig(method="euler", steps=32, temperature=0.0),
                                     SamplerConfig(method="confidence", steps=32, temperature=0.0)],
                         ids=["euler", "confidence"])
def test_chat_sampling_answers_with_the_exact_responses(tuned, sampler, qwen_tokenizer):
    encoder = tuned.encoder
    prompts = [[tuned.compact[i] for i in encoder.generation_prompt_ids([{"role": "user", "content": r["prompt"]}])]
               for r in tuned.records]
    cfg = SamplerConfig(**{**sampler.__dict__, "eos_token_id": tuned.compact[encoder.end_of_turn_id]})
    budgets = [tuned.seq_len - len(p) for p in prompts]  # the rows' length, as in training
    out = generate(tuned.model, prompts, budgets, cfg, tuned.dfm, mask_token_id=tuned.mask_id,
                   pad_token_id=tuned.compact[IM_END_TOKEN_ID])
    for b, record in enumerate(tuned.records):
        assert out.finished[b], f"row {b} never produced {encoder.end_of_turn}"
        text = qwen_tokenizer.decode([tuned.vocab[i] for i in out.tokens[b]], skip_special_tokens=False)
        assert text.startswith("<think>\n\n</think>\n\n")  # the template's empty think block is part of the response
        assert reply_text(text) == record["response"], f"row {b} ({record['function']})"
