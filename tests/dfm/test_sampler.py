"""Sampler rules on a random tiny model: clamping, no masks, exact unmasking rate, t consistent with training,
ragged batches equal to row-by-row generation, rows leaving at EOS, honest throughput accounting."""

import pytest
import torch

from megadfm.dfm.config import DFMConfig
from megadfm.dfm.sampler import generate, time_grid
from megadfm.dfm.sampler_config import SamplerConfig
from megadfm.dfm.schedulers import make_scheduler

from .helpers import Recorder, tiny_sampler_model, assert_time_matches_mask_ratio, generation_mask

VOCAB, MASK, PAD = 64, 60, 0


@pytest.fixture(scope="module")
def model():
    return tiny_sampler_model(VOCAB, MASK)


PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10], [11, 12]]
SUFFIXES = [[20, 21], [], [22], [23, 24, 25, 26]]
CASES = [
    SamplerConfig(method="euler", steps=5, eos_token_id=None),
    SamplerConfig(method="euler", steps=3, time_grid="scheduler", temperature=0.7, top_k=5, eos_token_id=None),
    SamplerConfig(method="confidence", steps=6, eos_token_id=None),
    SamplerConfig(method="confidence", steps=8, block_length=3, confidence="margin", top_p=0.9, eos_token_id=None),
    SamplerConfig(method="confidence", steps=4, confidence="entropy", temperature=0.0, eos_token_id=None),
    SamplerConfig(method="threshold", steps=5, block_length=3, threshold=0.3, temperature=0.8, eos_token_id=None),
    SamplerConfig(method="threshold", steps=4, threshold_mode="factor", confidence="margin", eos_token_id=None),
]


def rows_of(x: torch.Tensor, prompts) -> list:
    """Which prompt each row of a recorded model input is (a method runs only the rows that have work):
    the prompts of these tests have distinct first tokens."""
    first = {p[0]: b for b, p in enumerate(prompts)}
    return [first[int(tok)] for tok in x[:, 0]]


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
        for i, b in enumerate(rows_of(x, PROMPTS)):
            prompt, suffix = PROMPTS[b], SUFFIXES[b]
            assert x[i, : len(prompt)].tolist() == prompt
            assert x[i, len(prompt) + 7: len(prompt) + 7 + len(suffix)].tolist() == suffix
    assert not (out.sequences == MASK).any()


def test_euler_unmasking_fraction_matches_the_exact_formula(model):
    """Fraction of still-masked positions unmasked by step k = (kappa(t_{k+1}) - kappa(t_k)) / (1 - kappa(t_k))."""
    dfm = DFMConfig(scheduler="polynomial", scheduler_exponent=2.0)
    cfg = SamplerConfig(method="euler", steps=6, eos_token_id=None)
    scheduler = make_scheduler(dfm)
    prompts = [[1 + b % 50, 1 + b // 50] for b in range(96)]  # distinct, so rows can be told apart
    with Recorder(model) as rec:
        out = generate(model, prompts, 32, cfg, dfm, pad_token_id=PAD)
    grid = time_grid(cfg.steps, cfg.time_grid, scheduler)
    kappa = scheduler.kappa(grid)
    # every step unmasks something at this size, so call k is step k
    assert [round(float(t[0]) * cfg.steps) for _, t in rec.calls] == list(range(cfg.steps))
    # Only rows with a jump are run; a row not run at step k is unchanged by it, so its state before
    # step k is the one at its next run (or the final one): fill the states in from the end.
    index = {(p[0], p[1]): b for b, p in enumerate(prompts)}
    state, states = out.sequences.clone(), []
    for x, _ in reversed(rec.calls):
        rows = torch.tensor([index[(int(a), int(c))] for a, c in x[:, :2]])
        state[rows] = x
        states.insert(0, state[:, 2:].clone())
    states.append(out.sequences[:, 2:])
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
    # (only rows with a jump are run; all 64 rows have the same layout)
    for x, t in rec.calls:
        rows = x.shape[0]
        assert_time_matches_mask_ratio([(x, t)], generation_mask([1] * rows, [32] * rows, 33), MASK, scheduler, exact=False)
    # Confidence: the fraction is exact per row, and t is its time (rows of different lengths)
    gen = generation_mask([1, 2], [20, 13], 21)
    for method in ["confidence", "threshold"]:
        with Recorder(model) as rec:
            generate(model, [[1], [2, 3]], [20, 13], SamplerConfig(method=method, steps=7, threshold=0.05, eos_token_id=None),
                     dfm, pad_token_id=PAD)
        # a row with nothing to unmask at a step is not run: pick its generation mask by its prompt
        calls = [(x, t, gen[rows_of(x, [[1], [2, 3]])]) for x, t in rec.calls]
        for x, t, g in calls:
            assert_time_matches_mask_ratio([(x, t)], g, MASK, scheduler, exact=True)


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
    assert again.model_evals <= 4  # stopped in the first block, once the EOS and everything before it was decoded
    assert again.new_tokens == cut and again.decoded_positions <= 4
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
    from megadfm.dfm.sampling.steps import predict_tokens, write_rows

    @SAMPLER_METHODS.register("test_one_shot")
    def one_shot(ctx):
        rows = torch.arange(ctx.x.shape[0])
        t = torch.zeros(rows.numel())
        target, tokens, _ = predict_tokens(ctx, rows, t, ctx.layout.generate, (0, ctx.layout.max_new_tokens))
        write_rows(ctx, rows, target, tokens)
        ctx.steps += 1

    try:
        out = generate(model, PROMPTS, 5, SamplerConfig(method="test_one_shot", eos_token_id=None), DFMConfig(),
                       pad_token_id=PAD)
    finally:
        SAMPLER_METHODS.unregister("test_one_shot")
    assert out.model_evals == out.nfe_full == out.steps == 1 and out.nfe_block == 0
    assert all(len(row) == 5 for row in out.tokens) and not (out.sequences == MASK).any()


RAGGED_PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10], [11, 12]]
RAGGED_SUFFIXES = [[20, 21], [], [22], [23, 24, 25, 26]]
RAGGED_BUDGETS = [7, 12, 3, 9]
GREEDY = [
    # Euler's jumps are random draws from the batch's stream, so only its one-step form is batch-invariant
    SamplerConfig(method="euler", steps=1, temperature=0.0, eos_token_id=None),
    SamplerConfig(method="confidence", steps=8, temperature=0.0, eos_token_id=None),
    SamplerConfig(method="confidence", steps=8, block_length=3, confidence="margin", temperature=0.0, eos_token_id=None),
    SamplerConfig(method="threshold", steps=6, block_length=4, threshold=0.1, temperature=0.0, eos_token_id=None),
    SamplerConfig(method="threshold", steps=6, threshold_mode="factor", threshold_factor=2.0, confidence="entropy",
                  temperature=0.0, eos_token_id=None),
]


@pytest.mark.parametrize("case", range(len(GREEDY)))
@pytest.mark.parametrize("eos", [None, 7])
def test_a_ragged_batch_equals_row_by_row_generation(model, case, eos):
    """Ragged prompts, suffixes and budgets, greedy: each row of the batch is what it would be alone."""
    from dataclasses import replace

    cfg = replace(GREEDY[case], eos_token_id=eos)
    dfm = DFMConfig()
    batch = generate(model, RAGGED_PROMPTS, RAGGED_BUDGETS, cfg, dfm, suffixes=RAGGED_SUFFIXES, pad_token_id=PAD)
    for b, (prompt, budget, suffix) in enumerate(zip(RAGGED_PROMPTS, RAGGED_BUDGETS, RAGGED_SUFFIXES)):
        alone = generate(model, [prompt], [budget], cfg, dfm, suffixes=[suffix], pad_token_id=PAD)
        assert batch.tokens[b] == alone.tokens[0], b
        assert batch.finished[b] == alone.finished[0]
        row = batch.sequences[b].tolist()
        assert row[: len(prompt)] == prompt and row[len(prompt) + budget: len(prompt) + budget + len(suffix)] == suffix


def _greedy_tokens(model, method):
    """Greedy, never-stopping tokens of the row [1, 2] (to pick an EOS from)."""
    cfg = SamplerConfig(method=method, steps=12, temperature=0.0, eos_token_id=None, threshold=1.0)
    out = generate(model, [[1, 2]], 12, cfg, DFMConfig(), pad_token_id=PAD)
    return out.tokens[0]


@pytest.mark.parametrize("method", ["confidence", "threshold"])
def test_a_row_that_emits_eos_early_costs_fewer_forward_rows(model, method):
    """Row 0 ends at an early EOS; from then on only row 1 is run (rows counted at the model's input)."""
    cfg = dict(method=method, steps=12, temperature=0.0, threshold=1.0)  # one position per step either way
    prompts = [[1, 2], [3, 4]]
    tokens = _greedy_tokens(model, method)
    eos = next(tok for tok in tokens[:3] if tok not in generate(model, [[3, 4]], 12, SamplerConfig(**cfg, eos_token_id=None),
                                                                 DFMConfig(), pad_token_id=PAD).tokens[0])
    rows_per_call = []
    handle = model.register_forward_hook(lambda mod, args, out: rows_per_call.append(args[0].shape[0]))
    try:
        out = generate(model, prompts, 12, SamplerConfig(**cfg, eos_token_id=eos), DFMConfig(), pad_token_id=PAD)
    finally:
        handle.remove()
    never = generate(model, prompts, 12, SamplerConfig(**cfg, eos_token_id=None), DFMConfig(), pad_token_id=PAD)
    assert out.finished == [True, False]
    assert out.tokens[0] == tokens[: tokens.index(eos)] and out.tokens[1] == never.tokens[1]
    assert sum(rows_per_call) == out.forward_rows < never.forward_rows == 2 * 12
    assert rows_per_call[-1] == 1  # the late steps run row 1 alone
    assert out.new_tokens == len(out.tokens[0]) + 12


def test_throughput_counts_new_tokens_only(model):
    """new_tokens excludes the prompt, the suffix, the EOS and everything after it; tokens/s uses it."""
    cfg = SamplerConfig(method="confidence", steps=16, block_length=4, temperature=0.0, eos_token_id=None)
    first = generate(model, [[1, 2, 3, 4, 5, 6]], 16, cfg, DFMConfig(), suffixes=[[7, 8]], pad_token_id=PAD)
    assert first.new_tokens == first.decoded_positions == 16
    eos = first.tokens[0][1]
    cut = first.tokens[0].index(eos)
    out = generate(model, [[1, 2, 3, 4, 5, 6]], 16, SamplerConfig(method="confidence", steps=16, block_length=4,
                   temperature=0.0, eos_token_id=eos), DFMConfig(), suffixes=[[7, 8]], pad_token_id=PAD)
    assert out.new_tokens == cut == len(out.tokens[0])
    assert out.decoded_positions <= 4 < 16  # the first block only
    assert out.tokens_per_second == pytest.approx(out.new_tokens / out.seconds)
    summary = out.summary()
    assert summary["new_tokens"] == cut and summary["nfe_full"] == out.model_evals and summary["nfe_block"] == 0
