"""pass@k against hand-computed values and the exact binomial formula; mean and standard error."""

from __future__ import annotations

import math
import re

import pytest

from megadfm.eval.pass_at_k import mean_and_stderr, pass_at_k


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 0.4),        # c/n
    (5, 2, 2, 0.7),        # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (10, 0, 1, 0.0),
    (10, 0, 10, 0.0),
    (7, 7, 3, 1.0),
    (5, 3, 3, 1.0),        # n - c = 2 < k: every 3-subset holds a correct sample
    (1, 1, 1, 1.0),
    (1, 0, 1, 0.0),
])
def test_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_matches_exact_binomials():
    for n in range(1, 25):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1.0 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)


def test_large_n_is_finite():
    value = pass_at_k(10_000, 37, 100)
    assert 0.0 < value < 1.0


@pytest.mark.parametrize("n, c, k, message", [
    (5, 2, 6, "k must be in"),
    (5, 2, 0, "k must be in"),
    (5, 6, 1, "c (correct samples)"),
    (5, -1, 1, "c (correct samples)"),
    (0, 0, 1, "n (samples)"),
])
def test_bad_arguments(n, c, k, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        pass_at_k(n, c, k)


def test_non_int_rejected():
    with pytest.raises(TypeError, match="k must be an int"):
        pass_at_k(5, 2, 1.0)


def test_mean_and_stderr():
    assert mean_and_stderr([0.25]) == (0.25, 0.0)
    mean, err = mean_and_stderr([1.0, 0.0, 1.0, 0.0])
    assert mean == 0.5
    # sample std = sqrt(4 * 0.25 / 3); stderr = that / 2
    assert err == pytest.approx(math.sqrt(1.0 / 3.0) / 2.0)
    assert mean_and_stderr([1.0] * 164) == (1.0, 0.0)


def test_mean_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no values"):
        mean_and_stderr([])
