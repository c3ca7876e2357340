"""Shared fixtures of the evaluation tests: a tiny Qwen3DFM overfit on a few held-out stdlib functions.

As tests/dfm/test_overfit_regenerate.py: the functions are tokenized with the real Qwen3 tokenizer
and their few distinct ids remapped to a compact vocabulary 0..K-1 (mask = K) so that the model
trains in seconds on 2 CPU cores; ``to_compact`` / ``to_text`` map between the two. The functions
are the shortest tasks of the real held-out infill task set (two ``line``, two ``span``), each
document being ``prefix + middle + suffix`` tokenized piece by piece (the way the fill callable
tokenizes them), then ``<|endoftext|>``.

Built once per process (``functools.lru_cache``) and shared by test_infill.py and test_likelihood.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, List


from megadfm.data.batch import batch_from_documents
from megadfm.dfm.config import DFMConfig
from megadfm.eval.infill import InfillTask, build_infill_tasks, held_out_files, stdlib_root
from megadfm.model import ModelConfig, Qwen3DFM
from megadfm.tokens import ENDOFTEXT_TOKEN_ID
from tests.dfm.helpers import memorize

STEPS, COPIES, LR, SEED = 300, 8, 5e-3, 0
PARTIAL_STEPS = 40  # a snapshot between fresh and memorised: its CE varies with the mask ratio


def pick_tasks(tokenizer, per_kind: int = 2) -> List[InfillTask]:
    """The ``per_kind`` shortest tasks of each kind among 60 tasks of the real held-out task set."""
    tasks = build_infill_tasks(held_out_files(stdlib_root()), 60, 0).tasks
    size = {t.task_id: len(tokenizer.encode(t.prefix + t.middle + t.suffix, add_special_tokens=False)) for t in tasks}
    out: List[InfillTask] = []
    for kind in ("line", "span"):
        out += sorted((t for t in tasks if t.kind == kind), key=lambda t: (size[t.task_id], t.task_id))[:per_kind]
    return out


@dataclass
class Overfit:
    model: Qwen3DFM
    fresh: Qwen3DFM  # same architecture, untrained
    partial: Qwen3DFM  # after PARTIAL_STEPS of the same training
    dfm: DFMConfig
    tasks: List[InfillTask]
    docs: List[List[int]]  # compact ids, EOD last
    vocab: List[int]  # compact id -> Qwen3 id
    compact: Dict[int, int]
    mask_id: int
    eod: int  # compact id of <|endoftext|> (also the pad)
    tokenizer: object

    def to_compact(self, text: str) -> List[int]:
        return [self.compact[x] for x in self.tokenizer.encode(text, add_special_tokens=False)]

    def to_text(self, ids: List[int]) -> str:
        return self.tokenizer.decode([self.vocab[i] for i in ids])


@functools.lru_cache(maxsize=None)
def overfit_model(tokenizer) -> Overfit:
    tasks = pick_tasks(tokenizer)
    pieces = [[tokenizer.encode(p, add_special_tokens=False) for p in (t.prefix, t.middle, t.suffix)] for t in tasks]
    qwen_docs = [a + b + c + [ENDOFTEXT_TOKEN_ID] for a, b, c in pieces]
    vocab = sorted({tok for doc in qwen_docs for tok in doc})
    compact = {tok: i for i, tok in enumerate(vocab)}
    docs = [[compact[tok] for tok in doc] for doc in qwen_docs]
    mask_id, eod = len(vocab), compact[ENDOFTEXT_TOKEN_ID]
    model_cfg = ModelConfig(vocab_size=(mask_id + 8) // 8 * 8, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, mask_token_id=mask_id, kernels="torch")
    model = Qwen3DFM(model_cfg, seed=SEED)
    # eps 0.05 bounds the 1/r weight (20): memorisation is what is tested, not the r -> 0 tail.
    dfm = DFMConfig(scheduler="linear", prefix_mask_prob=0.5, mask_ratio_eps=0.05)
    batch = batch_from_documents(docs * COPIES, pad_token_id=eod)
    partial = Qwen3DFM(model_cfg, seed=SEED)

    def snapshot(step: int) -> None:
        if step == PARTIAL_STEPS:
            partial.load_state_dict(model.state_dict())

    memorize(model, batch, dfm, STEPS, LR, SEED, eod, on_step=snapshot)
    return Overfit(model.eval(), Qwen3DFM(model_cfg, seed=SEED + 1).eval(), partial.eval(), dfm, tasks, docs, vocab, compact, mask_id, eod,
                   tokenizer)
