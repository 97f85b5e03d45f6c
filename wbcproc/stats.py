"""Exact binomial (Clopper-Pearson) confidence intervals for differential percentages.

Rümke's classic table of 95 % limits for manual differentials is the Clopper-Pearson interval; we
compute it rather than look it up so that every count and total is covered.  No SciPy dependency: the
binomial CDF is summed in log space and inverted by bisection (60 halvings: far below 1e-12).
"""

from __future__ import annotations

import math

import numpy as np


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    ks = np.arange(0, k + 1, dtype=np.float64)
    lg = np.vectorize(math.lgamma)
    logpmf = math.lgamma(n + 1) - lg(ks + 1) - lg(n - ks + 1) + ks * math.log(p) + (n - ks) * math.log1p(-p)
    m = float(logpmf.max())
    return float(min(1.0, math.exp(m) * np.exp(logpmf - m).sum()))


def bisect_decreasing(f, lo: float, hi: float) -> float:
    """Root of a decreasing function f on [lo, hi] (60 halvings: far below 1e-12); shared with
    ``wbcproc.correction``'s one-sided rate bounds."""
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(mid) > 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(x: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval for a proportion x/n, as fractions in [0, 1].

    With n == 0 nothing is known and the interval is (0, 1).
    """
    if n < 0 or x < 0 or x > n:
        raise ValueError(f"need 0 <= x <= n, got x={x}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence} is not in (0, 1)")
    if n == 0:
        return 0.0, 1.0
    alpha = 1.0 - confidence
    # lower: P(X >= x | p) = alpha/2  <=>  1 - cdf(x-1) = alpha/2 (increasing in p)
    lower = 0.0 if x == 0 else bisect_decreasing(lambda p: alpha / 2 - (1.0 - binom_cdf(x - 1, n, p)), 0.0, 1.0)
    # upper: P(X <= x | p) = alpha/2 (decreasing in p)
    upper = 1.0 if x == n else bisect_decreasing(lambda p: binom_cdf(x, n, p) - alpha / 2, 0.0, 1.0)
    return lower, upper


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
