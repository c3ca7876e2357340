"""kappa(t), kappa'(t), the loss weight and the inverses against their closed forms."""

import math

import pytest
import torch

from megadfm.dfm.config import DFMConfig
from megadfm.dfm.schedulers import Cosine, PolynomialConvex, make_scheduler

T = torch.linspace(0.0, 0.999, 1001, dtype=torch.float64)


@pytest.mark.parametrize("n", [0.5, 1.0, 2.0, 3.0])
def test_polynomial_closed_forms(n):
    s = PolynomialConvex(n)
    torch.testing.assert_close(s.kappa(T), T ** n)
    inner = T[1:]  # n t^(n-1) is infinite at t = 0 for n < 1
    torch.testing.assert_close(s.d_kappa(inner), n * inner ** (n - 1))
    torch.testing.assert_close(s.weight(inner), n * inner ** (n - 1) / (1 - inner ** n))
    torch.testing.assert_close(s.mask_ratio(T), 1 - T ** n)


def test_linear_weight_is_one_over_mask_ratio():
    s = make_scheduler(DFMConfig(scheduler="linear", scheduler_exponent=3.0))  # linear ignores the exponent
    r = s.mask_ratio(T)
    torch.testing.assert_close(s.weight(T), 1 / r)
    torch.testing.assert_close(r, 1 - T)


def test_cosine_closed_forms():
    s = Cosine()
    torch.testing.assert_close(s.kappa(T), 1 - torch.cos(math.pi * T / 2))
    torch.testing.assert_close(s.mask_ratio(T), torch.cos(math.pi * T / 2))
    torch.testing.assert_close(s.d_kappa(T), math.pi / 2 * torch.sin(math.pi * T / 2))
    torch.testing.assert_close(s.weight(T), math.pi / 2 * torch.tan(math.pi * T / 2))


@pytest.mark.parametrize("scheduler", [PolynomialConvex(1.0), PolynomialConvex(2.0), PolynomialConvex(0.7), Cosine()])
def test_derivative_matches_finite_differences_and_inverse(scheduler):
    t = torch.linspace(0.05, 0.95, 91, dtype=torch.float64)
    h = 1e-6
    numeric = (scheduler.kappa(t + h) - scheduler.kappa(t - h)) / (2 * h)
    torch.testing.assert_close(scheduler.d_kappa(t), numeric, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(scheduler.t_for_mask_ratio(scheduler.mask_ratio(t)), t)
    torch.testing.assert_close(scheduler.t_for_kappa(torch.tensor([0.0, 1.0], dtype=torch.float64)),
                               torch.tensor([0.0, 1.0], dtype=torch.float64))


def test_make_scheduler_uses_the_config():
    s = make_scheduler(DFMConfig(scheduler="polynomial", scheduler_exponent=2.0))
    assert isinstance(s, PolynomialConvex) and s.exponent == 2.0
    assert isinstance(make_scheduler(DFMConfig(scheduler="cosine")), Cosine)


def test_worked_example_in_readme():
    """megadfm/dfm/README.md: n = 2, t = 0.6 -> kappa = 0.36, r = 0.64, kappa' = 1.2, w = 1.2 / 0.64 = 1.875."""
    s = PolynomialConvex(2.0)
    t = torch.tensor(0.6, dtype=torch.float64)
    assert float(s.mask_ratio(t)) == pytest.approx(0.64)
    assert float(s.weight(t)) == pytest.approx(1.875)
