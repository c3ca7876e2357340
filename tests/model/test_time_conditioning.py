"""AdaLN(t): zero-initialized, so the output at init does not depend on t; then it does."""

from __future__ import annotations

import pytest
import torch

from megadfm.model.time_conditioning import timestep_embedding
from tests.model.tiny import random_ids, tiny_model


@pytest.mark.parametrize("mode", ["adaln", "adaln_single", "none"])
def test_output_independent_of_t_at_init(mode):
    model = tiny_model(time_conditioning=mode)
    baseline = tiny_model(time_conditioning="none")  # same seed: the same backbone
    ids = random_ids((2, 9))
    with torch.no_grad():
        a = model(ids, t=torch.tensor([0.0, 0.3]))
        b = model(ids, t=torch.tensor([1.0, 0.7]))
        plain = baseline(ids)
    assert torch.equal(a, b)
    assert torch.equal(a, plain)  # bit for bit the unmodulated Qwen3 function


@pytest.mark.parametrize("mode", ["adaln", "adaln_single"])
def test_modulation_outputs_zero_and_time_mlp_random(mode):
    model = tiny_model(time_conditioning=mode)
    groups = {n: model.parameter_group(n) for n, _ in model.named_parameters()}
    time_params = {n: p for n, p in model.named_parameters() if groups[n] == "time_conditioning"}
    outputs = [n for n in time_params if ".adaln." in n or n.startswith("adaln_single.")]
    assert outputs and all(torch.count_nonzero(time_params[n]) == 0 for n in outputs)
    assert time_params["time_embedding.linear_1.weight"].std() > 0


@pytest.mark.parametrize("mode", ["adaln", "adaln_single"])
def test_trained_modulation_makes_output_depend_on_t(mode):
    model = tiny_model(time_conditioning=mode)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if model.parameter_group(n) == "time_conditioning":
                p.normal_(0, 0.05)
    ids = random_ids((2, 9))
    with torch.no_grad():
        a = model(ids, t=torch.tensor([0.1, 0.1]))
        b = model(ids, t=torch.tensor([0.9, 0.1]))
    assert not torch.allclose(a[0], b[0], atol=1e-4)
    torch.testing.assert_close(a[1], b[1])  # t is per sequence: row 1 kept its t


def test_time_conditioned_model_requires_t():
    model = tiny_model(time_conditioning="adaln")
    with pytest.raises(ValueError, match="needs t"):
        model(random_ids((1, 4)))
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        model(random_ids((2, 4)), t=torch.ones(3))


def test_timestep_embedding_separates_nearby_times():
    e = timestep_embedding(torch.tensor([0.500, 0.501, 0.9]), 256)
    assert e.shape == (3, 256)
    assert (e[0] - e[1]).norm() > 1e-2
