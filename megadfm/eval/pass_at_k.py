"""The unbiased pass@k estimator and a mean with its standard error.

pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): from ``n`` samples of
which ``c`` are correct, the probability that at least one of ``k`` samples drawn without replacement
is correct, ``1 - C(n-c, k) / C(n, k)``. The binomial ratio is computed as a product so it never
forms the huge binomials themselves.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple


def _require_int(name: str, value: object) -> int:
    # bool is an int subclass; True as a sample count is a caller bug, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"pass_at_k: {name} must be an int, got {type(value).__name__} {value!r}")
    return value


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``n`` samples, ``c`` of them correct, ``1 <= k <= n``."""
    n, c, k = _require_int("n", n), _require_int("c", c), _require_int("k", k)
    if n < 1:
        raise ValueError(f"pass_at_k: n (samples) must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c (correct samples) must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be in [1, n={n}], got {k} (draw more samples per problem)")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    failure = 1.0
    for i in range(n - c + 1, n + 1):
        failure *= 1.0 - k / i
    return 1.0 - failure


def mean_and_stderr(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and standard error of the mean (sample std with N-1, over sqrt(N); 0 for one value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_and_stderr: no values (an evaluation over zero problems has no score)")
    count = len(values)
    mean = math.fsum(values) / count
    if count == 1:
        return mean, 0.0
    variance = math.fsum((v - mean) ** 2 for v in values) / (count - 1)
    return mean, math.sqrt(variance / count)
