"""method: threshold (Fast-dLLM's confidence-threshold parallel decoding): the rules, their limits, the config."""

import math

import pytest
import torch

from megadfm.config_base import ConfigError
from megadfm.dfm.config import DFMConfig
from megadfm.dfm.sampler import generate
from megadfm.dfm.sampler_config import SamplerConfig
from megadfm.dfm.sampling.threshold import count_rule

from .helpers import Recorder, tiny_sampler_model

VOCAB, MASK, PAD = 64, 60, 0


@pytest.fixture(scope="module")
def model():
    return tiny_sampler_model(VOCAB, MASK)


def masks_per_call(rec, out):
    """Masked new positions before every evaluation, then after the last (single-row runs)."""
    return [int((x == MASK).sum()) for x, _ in rec.calls] + [int((out.sequences == MASK).sum())]


@pytest.mark.parametrize("confidence", ["probability", "margin", "entropy"])
def test_threshold_one_unmasks_one_position_per_step(model, confidence):
    cfg = SamplerConfig(method="threshold", threshold=1.0, steps=4, block_length=4, confidence=confidence,
                        temperature=0.0, eos_token_id=None)
    with Recorder(model) as rec:
        out = generate(model, [[1, 2]], 12, cfg, DFMConfig(), suffixes=[[3]], pad_token_id=PAD)
    assert masks_per_call(rec, out) == list(range(12, -1, -1))  # one per step
    assert out.steps == out.nfe_full == 12  # steps == the block's budget, for each of the 3 blocks
    assert len(out.tokens[0]) == 12


def test_steps_bound_a_block_and_the_last_step_takes_the_rest(model):
    cfg = SamplerConfig(method="threshold", threshold=1.0, steps=3, block_length=6, temperature=0.0, eos_token_id=None)
    with Recorder(model) as rec:
        out = generate(model, [[1, 2]], 12, cfg, DFMConfig(), pad_token_id=PAD)
    # per block of 6: one, one, then the remaining four
    assert masks_per_call(rec, out) == [12, 11, 10, 6, 5, 4, 0]
    assert out.steps == 6


@pytest.mark.parametrize("block_length, blocks", [(0, 1), (5, 3)])
def test_threshold_zero_decodes_a_block_in_one_step(model, block_length, blocks):
    cfg = SamplerConfig(method="threshold", threshold=0.0, steps=8, block_length=block_length, confidence="entropy",
                        eos_token_id=None)
    with Recorder(model) as rec:
        out = generate(model, [[1], [2, 3]], [13, 11], cfg, DFMConfig(), suffixes=[[4], []], pad_token_id=PAD)
    assert out.steps == len(rec.calls) == blocks
    assert [len(t) for t in out.tokens] == [13, 11] and not (out.sequences == MASK).any()


def test_prompts_and_suffixes_are_never_rewritten(model):
    prompts, suffixes, budgets = [[1, 2, 3], [4], [5, 6, 7, 8]], [[20], [21, 22, 23], []], [6, 9, 4]
    for mode in ["fixed", "factor"]:
        cfg = SamplerConfig(method="threshold", threshold=0.2, threshold_mode=mode, steps=6, block_length=3,
                            temperature=0.9, eos_token_id=None)
        with Recorder(model) as rec:
            out = generate(model, prompts, budgets, cfg, DFMConfig(), suffixes=suffixes, pad_token_id=PAD)
        first = {p[0]: b for b, p in enumerate(prompts)}
        for x in [x for x, _ in rec.calls] + [out.sequences]:
            for i in range(x.shape[0]):
                b = first[int(x[i, 0])]
                p, n, s = prompts[b], budgets[b], suffixes[b]
                assert x[i, : len(p)].tolist() == p and x[i, len(p) + n: len(p) + n + len(s)].tolist() == s
        assert [len(t) for t in out.tokens] == budgets and not (out.sequences == MASK).any()


def test_fixed_rule_keeps_the_confident_and_at_least_one():
    values = torch.tensor([[0.95, 0.92, 0.5, float("-inf")], [0.3, 0.2, float("-inf"), float("-inf")]])
    candidates = torch.tensor([3, 2])
    assert count_rule("fixed", 0.9, 1.0, "probability")(values, candidates).tolist() == [2, 1]
    # entropy scores are -H: exp(-H) >= threshold
    entropy = torch.log(values.clamp_min(1e-30))
    assert count_rule("fixed", 0.9, 1.0, "entropy")(entropy, candidates).tolist() == [2, 1]


def test_factor_rule_is_fast_dllms():
    """Unmask the largest n with (m + 1)(1 - c_m) <= f for every m <= n; the most confident always."""
    values = torch.tensor([[0.9, 0.8, 0.7, 0.2], [0.1, 0.05, float("-inf"), float("-inf")],
                           [0.99, 0.98, 0.97, 0.96]])
    candidates = torch.tensor([4, 2, 4])
    # f = 1: m = 2 needs c >= 2/3 (0.8 passes), m = 3 needs 3/4 (0.7 fails)
    assert count_rule("factor", 0.9, 1.0, "probability")(values, candidates).tolist() == [2, 1, 4]
    # f = 2: m = 3 needs 1/2 (0.7 passes), m = 4 needs 3/5 (0.2 fails)
    assert count_rule("factor", 0.9, 2.0, "probability")(values, candidates).tolist() == [3, 1, 4]
    for row, n in zip(values.tolist(), [3, 1, 4]):  # the closed form, for f = 2
        ok = [(m + 1) * (1 - c) <= 2.0 for m, c in enumerate(row, start=1) if not math.isinf(c)]
        assert n == max(1, next((i for i, good in enumerate(ok) if not good), len(ok)))


def test_factor_mode_end_to_end(model):
    cfg = SamplerConfig(method="threshold", threshold_mode="factor", threshold_factor=4.0, steps=5, block_length=8,
                        temperature=0.0, eos_token_id=None)
    out = generate(model, [[1, 2]], 16, cfg, DFMConfig(), pad_token_id=PAD)
    assert 2 <= out.steps <= 2 * 5 and len(out.tokens[0]) == 16 and not (out.sequences == MASK).any()


@pytest.mark.parametrize("field, value, message", [
    ("threshold", 1.5, "in \\[0, 1\\]"), ("threshold", -0.1, "in \\[0, 1\\]"),
    ("threshold_mode", "dynamic", "fixed or factor"), ("threshold_factor", 0.0, "> 0")])
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=f"'{field}'.*{message}"):
        SamplerConfig(method="threshold", **{field: value})


def test_blocks_belong_to_block_methods_and_a_mask_source_is_needed(model):
    with pytest.raises(ConfigError, match="block_length"):
        SamplerConfig(method="euler", block_length=4)
    SamplerConfig(method="threshold", block_length=4)
    with pytest.raises(ValueError, match="mask source"):
        generate(model, [[1]], 4, SamplerConfig(method="threshold"), DFMConfig(source="uniform"), pad_token_id=PAD)
