"""Sampler rules on a random tiny model: clamping, no masks, exact unmasking rate, t consistent with training."""

import pytest
import torch

from megadfm.dfm.config import DFMConfig
from megadfm.dfm.sampler import generate, time_grid
from megadfm.dfm.sampler_config import SamplerConfig
from megadfm.dfm.schedulers import make_scheduler
from megadfm.model import ModelConfig, Qwen3DFM

from .helpers import Recorder, assert_time_matches_mask_ratio, generation_mask

VOCAB, MASK, PAD = 64, 60, 0


@pytest.fixture(scope="module")
def model():
    m = Qwen3DFM(ModelConfig(vocab_size=VOCAB, mask_token_id=MASK, hidden_size=32, intermediate_size=64,
                             num_attention_heads=4, num_key_value_heads=2, kernels="torch"), seed=0)
    return m.eval()


PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10], [11, 12]]
SUFFIXES = [[20, 21], [], [22], [23, 24, 25, 26]]
CASES = [
    SamplerConfig(method="euler", steps=5, eos_token_id=None),
    SamplerConfig(method="euler", steps=3, time_grid="scheduler", temperature=0.7, top_k=5, eos_token_id=None),
    SamplerConfig(method="confidence", steps=6, eos_token_id=None),
    SamplerConfig(method="confidence", steps=8, block_length=3, confidence="margin", top_p=0.9, eos_token_id=None),
    SamplerConfig(method="confidence", steps=4, confidence="entropy", temperature=0.0, eos_token_id=None),
]


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_prompts_and_suffixes_are_clamped_and_no_mask_remains(model, case, shift):
    cfg = CASES[case]
    dfm = DFMConfig(scheduler="polynomial", scheduler_exponent=2.0, shift_logits=shift)
    with Recorder(model) as rec:
        out = generate(model, PROMPTS, 7, cfg, dfm, suffixes=SUFFIXES, pad_token_id=PAD)
    assert out.model_evals == len(rec.calls) > 0
    for b, (prompt, suffix) in enumerate(zip(PROMPTS, SUFFIXES)):
        row = out.sequences[b].tolist()
        assert row[: len(prompt)] == prompt
        assert row[len(prompt) + 7: len(prompt) + 7 + len(suffix)] == suffix
        assert len(out.tokens[b]) == 7 and MASK not in out.tokens[b]
        assert all(0 <= tok < MASK for tok in out.tokens[b])  # never the mask nor an id above it
        for x, _ in rec.calls:  # and never rewritten at any step
            assert x[b, : len(prompt)].tolist() == prompt
            assert x[b, len(prompt) + 7: len(prompt) + 7 + len(suffix)].tolist() == suffix
    assert not (out.sequences == MASK).any()


def test_euler_unmasking_fraction_matches_the_exact_formula(model):
    """Fraction of still-masked positions unmasked by step k = (kappa(t_{k+1}) - kappa(t_k)) / (1 - kappa(t_k))."""
    dfm = DFMConfig(scheduler="polynomial", scheduler_exponent=2.0)
    cfg = SamplerConfig(method="euler", steps=6, eos_token_id=None)
    scheduler = make_scheduler(dfm)
    with Recorder(model) as rec:
        out = generate(model, [[1]] * 96, 32, cfg, dfm, pad_token_id=PAD)
    grid = time_grid(cfg.steps, cfg.time_grid, scheduler)
    kappa = scheduler.kappa(grid)
    states = [x[:, 1:] for x, _ in rec.calls] + [out.sequences[:, 1:]]
    # every step unmasks something at this size, so call k is step k
    assert [round(float(t[0]) * cfg.steps) for _, t in rec.calls] == list(range(cfg.steps))
    for k in range(cfg.steps):
        before = states[k] == MASK
        unmasked = before & (states[k + 1] != MASK)
        observed = float(unmasked.sum() / before.sum())
        expected = float((kappa[k + 1] - kappa[k]) / (1 - kappa[k]))
        n = int(before.sum())
        # binomial standard error; 5 sigma (the last step is exactly 1)
        assert abs(observed - expected) <= 5 * (expected * (1 - expected) / n) ** 0.5 + 1e-9, (k, observed, expected, n)
    assert float((states[-2] == MASK).float().mean()) > 0.0  # something was still masked before the last step


@pytest.mark.parametrize("kind", ["polynomial", "cosine"])
def test_sampler_time_agrees_with_the_training_path(model, kind):
    """At every evaluation, the masked fraction of the new positions is the mask ratio training uses at that t."""
    dfm = DFMConfig(scheduler=kind, scheduler_exponent=3.0)
    scheduler = make_scheduler(dfm)
    # Euler: the fraction is random; over many rows it must be r(t) = 1 - kappa(t)
    with Recorder(model) as rec:
        generate(model, [[1]] * 64, 32, SamplerConfig(method="euler", steps=5, eos_token_id=None), dfm, pad_token_id=PAD)
    assert_time_matches_mask_ratio(rec.calls, generation_mask([1] * 64, [32] * 64, 33), MASK, scheduler, exact=False)
    # Confidence: the fraction is exact per row, and t is its time (rows of different lengths)
    with Recorder(model) as rec:
        generate(model, [[1], [2, 3]], [20, 13], SamplerConfig(method="confidence", steps=7, eos_token_id=None), dfm,
                 pad_token_id=PAD)
    assert_time_matches_mask_ratio(rec.calls, generation_mask([1, 2], [20, 13], 21), MASK, scheduler, exact=True)


def test_confidence_blocks_stop_at_eos_and_truncate(model):
    cfg = SamplerConfig(method="confidence", steps=16, block_length=4, temperature=0.0, eos_token_id=None)
    dfm = DFMConfig()
    first = generate(model, [[1, 2]], 16, cfg, dfm, pad_token_id=PAD)
    assert first.model_evals == 16
    eos = first.tokens[0][2]  # a token decoded in the first block
    cfg_eos = SamplerConfig(method="confidence", steps=16, block_length=4, temperature=0.0, eos_token_id=eos)
    again = generate(model, [[1, 2]], 16, cfg_eos, dfm, pad_token_id=PAD)
    cut = first.tokens[0].index(eos)
    assert again.tokens[0] == first.tokens[0][:cut]
    assert again.finished == [True]
    assert again.model_evals == 4  # stopped after the first block
    assert not (again.sequences == MASK).any()


def test_shift_needs_a_prompt(model):
    with pytest.raises(ValueError, match="prompt"):
        generate(model, [[]], 4, SamplerConfig(), DFMConfig(shift_logits=True), pad_token_id=PAD)
    out = generate(model, [[]], 4, SamplerConfig(eos_token_id=None), DFMConfig(shift_logits=False), pad_token_id=PAD)
    assert len(out.tokens[0]) == 4


@pytest.mark.parametrize("method", ["euler", "confidence"])
def test_chunked_decoding_gives_the_same_tokens(model, method, monkeypatch):
    import megadfm.dfm.sampling.steps as sampler_module

    cfg = SamplerConfig(method=method, steps=4, temperature=0.0, confidence="margin", eos_token_id=None)
    whole = generate(model, PROMPTS, 9, cfg, DFMConfig(), pad_token_id=PAD)
    monkeypatch.setattr(sampler_module, "LOGITS_BUDGET", 3 * VOCAB)  # 3 positions per chunk
    chunked = generate(model, PROMPTS, 9, cfg, DFMConfig(), pad_token_id=PAD)
    assert chunked.tokens == whole.tokens


def test_euler_with_a_mixture_source(model):
    dfm = DFMConfig(source="mixture", mixture_uniform_fraction=0.5)
    out = generate(model, PROMPTS, 6, SamplerConfig(method="euler", steps=4, eos_token_id=None), dfm, suffixes=SUFFIXES,
                   pad_token_id=PAD)
    for b, prompt in enumerate(PROMPTS):
        assert out.sequences[b, : len(prompt)].tolist() == prompt
        assert len(out.tokens[b]) == 6
    assert not (out.sequences == MASK).any()
    with pytest.raises(ValueError, match="mask source"):
        generate(model, PROMPTS, 6, SamplerConfig(method="confidence"), dfm, pad_token_id=PAD)


def test_a_method_registered_in_a_test_is_a_config_value(model):
    """A sampler method is one registered function: here, every new position from one evaluation."""
    from megadfm.dfm.sampling import SAMPLER_METHODS
    from megadfm.dfm.sampling.steps import predict_tokens, write_tokens

    @SAMPLER_METHODS.register("test_one_shot")
    def one_shot(model, x, layout, cfg, dfm, scheduler, mask_id, generator):
        t = torch.zeros(x.shape[0])
        target, tokens, _ = predict_tokens(model, x, t, layout, layout.generate, dfm.shift_logits, cfg, generator)
        write_tokens(x, target, tokens)
        return 1

    try:
        out = generate(model, PROMPTS, 5, SamplerConfig(method="test_one_shot", eos_token_id=None), DFMConfig(),
                       pad_token_id=PAD)
    finally:
        SAMPLER_METHODS.unregister("test_one_shot")
    assert out.model_evals == 1
    assert all(len(row) == 5 for row in out.tokens) and not (out.sequences == MASK).any()
