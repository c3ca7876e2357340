"""Overfit-and-regenerate: train a tiny Qwen3DFM with dfm_loss on four real stdlib functions, then
regenerate them with both samplers from their first quarter (and infill their middle).

This is the end-to-end check that training and sampling agree on the shift convention and on t:
a model trained by :func:`dfm_loss` only reproduces the sequences if the sampler reads its outputs
the same way (``test_shift_mismatch_breaks_regeneration`` shows that a disagreement fails). The
optimal mask-source denoiser does not depend on t (the mask ratio of x_t reveals it), so t is
checked directly: at every evaluation during regeneration, the t given to the model must be the
time at which the training path produces the input's mask ratio.

Vocabulary: the sequences are tokenized with the real Qwen3 tokenizer, then their ~100 distinct
ids are remapped to a compact vocabulary 0..K-1 (mask = K) so that the model trains in seconds on
2 CPU cores instead of carrying a 151,936-row embedding; the result is mapped back and decoded
with the real tokenizer. Training: plain torch AdamW (no DeepSpeed), 320 steps (tests.dfm.helpers.memorize), cosine decay,
6 copies of the 4 sequences per batch, stratified t, CoDA prefix strategy on half the rows.
"""

from __future__ import annotations

import ast
import os
import sysconfig
from dataclasses import dataclass
from typing import List

import pytest

from megadfm.data.batch import batch_from_documents
from megadfm.dfm.config import DFMConfig
from megadfm.dfm.sampler import generate
from megadfm.dfm.sampler_config import SamplerConfig
from megadfm.dfm.schedulers import make_scheduler
from megadfm.model import ModelConfig, Qwen3DFM

from .helpers import Recorder, assert_time_matches_mask_ratio, generation_mask, memorize

EOD = 151643  # <|endoftext|>, appended to every document as preprocessing does
FUNCTIONS = [("posixpath.py", "basename"), ("genericpath.py", "exists"), ("heapq.py", "heappush"), ("shlex.py", "join")]
STEPS, COPIES, LR = 320, 6, 5e-3
SEED = int(os.environ.get("MEGADFM_OVERFIT_SEED", "0"))  # model init + training RNG; seeds 0-3 checked


def stdlib_function_source(module_file: str, name: str) -> str:
    path = os.path.join(sysconfig.get_paths()["stdlib"], module_file)
    with open(path, encoding="utf-8") as f:
        source = f.read()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(source, node)
    raise LookupError(f"{path} has no top-level function {name}")


@dataclass
class Memorized:
    model: Qwen3DFM
    dfm: DFMConfig
    docs: List[List[int]]  # compact ids, EOD last
    vocab: List[int]  # compact id -> Qwen3 id
    mask_id: int
    eod: int  # compact id of <|endoftext|> (also the pad)
    texts: List[str]


@pytest.fixture(scope="module", params=[True, False], ids=["shift", "noshift"])
def memorized(request, qwen_tokenizer) -> Memorized:
    shift = request.param
    texts = [stdlib_function_source(m, n) for m, n in FUNCTIONS]
    qwen_docs = [qwen_tokenizer.encode(text) + [EOD] for text in texts]
    vocab = sorted({tok for doc in qwen_docs for tok in doc})
    compact = {tok: i for i, tok in enumerate(vocab)}
    docs = [[compact[tok] for tok in doc] for doc in qwen_docs]
    mask_id, eod = len(vocab), compact[EOD]

    model_cfg = ModelConfig(vocab_size=(mask_id + 8) // 8 * 8, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, mask_token_id=mask_id, kernels="torch")
    model = Qwen3DFM(model_cfg, seed=SEED)
    # eps 0.05 bounds the 1/r weight (20): memorization is what is tested, not the r -> 0 tail.
    dfm = DFMConfig(scheduler="linear", shift_logits=shift, prefix_mask_prob=0.5, mask_ratio_eps=0.05)
    batch = batch_from_documents(docs * COPIES, pad_token_id=eod)
    memorize(model, batch, dfm, STEPS, LR, SEED, eod)
    return Memorized(model, dfm, docs, vocab, mask_id, eod, texts)


SAMPLERS = {
    "euler": SamplerConfig(method="euler", steps=16, temperature=0.0),
    "euler_scheduler_grid": SamplerConfig(method="euler", steps=12, time_grid="scheduler", temperature=0.0),
    "confidence": SamplerConfig(method="confidence", steps=16, temperature=0.0),
    "confidence_blocks": SamplerConfig(method="confidence", steps=16, block_length=8, confidence="margin", temperature=0.0),
}


def _regenerate(m: Memorized, sampler: SamplerConfig, dfm: DFMConfig):
    cfg = SamplerConfig(**{**sampler.__dict__, "eos_token_id": m.eod})
    prompts = [doc[: len(doc) // 4] for doc in m.docs]  # prompts of different lengths
    counts = [len(doc) - len(p) for doc, p in zip(m.docs, prompts)]  # the rest, EOD included
    return prompts, generate(m.model, prompts, counts, cfg, dfm, mask_token_id=m.mask_id, pad_token_id=m.eod)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_regenerates_the_rest_from_the_first_quarter(memorized, sampler, qwen_tokenizer):
    m = memorized
    with Recorder(m.model) as rec:
        prompts, out = _regenerate(m, SAMPLERS[sampler], m.dfm)
    # A mask-source denoiser's optimum does not depend on t (x_t reveals it), so a memorized model
    # regenerates even with a wrong t: check the t of every evaluation against the training path.
    counts = [len(doc) - len(p) for doc, p in zip(m.docs, prompts)]
    gen = generation_mask([len(p) for p in prompts], counts, rec.calls[0][0].shape[1])
    for x, t in rec.calls:  # only rows with work are run (and none after its EOS): find each by its prompt
        rows = [next(b for b, p in enumerate(prompts) if x[i, : len(p)].tolist() == p) for i in range(x.shape[0])]
        assert_time_matches_mask_ratio([(x, t)], gen[rows], m.mask_id, make_scheduler(m.dfm),
                                       exact=SAMPLERS[sampler].method == "confidence")
    for b, doc in enumerate(m.docs):
        assert out.tokens[b] == doc[len(prompts[b]): -1], f"row {b}"
        assert out.finished[b]
        text = qwen_tokenizer.decode([m.vocab[i] for i in prompts[b] + out.tokens[b]])
        assert text == m.texts[b]


@pytest.mark.parametrize("sampler", ["euler", "confidence"])
def test_infill_regenerates_the_middle(memorized, sampler):
    m = memorized
    prefixes = [doc[: len(doc) // 4] for doc in m.docs]
    suffixes = [doc[3 * len(doc) // 4:] for doc in m.docs]
    middles = [doc[len(p): len(doc) - len(s)] for doc, p, s in zip(m.docs, prefixes, suffixes)]
    cfg = SamplerConfig(**{**SAMPLERS[sampler].__dict__, "eos_token_id": None})
    out = generate(m.model, prefixes, [len(x) for x in middles], cfg, m.dfm, suffixes=suffixes,
                   mask_token_id=m.mask_id, pad_token_id=m.eod)
    assert out.tokens == middles


def test_shift_mismatch_breaks_regeneration(memorized):
    """Sampling with the other shift convention than training must not reproduce the data."""
    m = memorized
    wrong = DFMConfig(**{**m.dfm.__dict__, "shift_logits": not m.dfm.shift_logits})
    prompts, out = _regenerate(m, SAMPLERS["confidence"], wrong)
    correct = sum(out.tokens[b] == doc[len(prompts[b]): -1] for b, doc in enumerate(m.docs))
    assert correct == 0
