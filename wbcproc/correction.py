"""Differential corrected for the classifier's own, measured confusion - and how sure a flag is.

Why: a flag compares a percentage with a narrow interval (immature granulocytes 0-1 %).  The model calls
about 1.4 % of neutrophils IG (band vs metamyelocyte), so a normal 100-cell sample with 60 neutrophils
shows one or two "IG" cells about half the time and the raw count crosses 1 % - a false left shift on
every other slide.  The leak is measured: the model's confusion
matrix on its validation cells, P(called j | truly i), is in the sidecar (``confusion_val``).

Method (adjusted classify-and-count by maximum likelihood): the called counts are a multinomial draw
from q = C^T p, where p is the sample's true composition over the eight classes and C the confusion
matrix; p is estimated by expectation-maximisation (Saerens et al. 2002; in physics "Richardson-Lucy"
unfolding), which stays on the simplex.  Uncertainty - of the count *and* of the correction - by a
bootstrap: each replicate resamples the cells and draws every row of C from its Dirichlet posterior
(validation counts + 1/8, Perks), and re-estimates p.  From the replicates: a 95 % interval for every corrected
percentage, and the probability that the true value lies beyond each reference limit, which grades a
flag: *definite* at >= 0.95, *possible* at >= 0.5 (the corrected value itself is beyond the limit).

NRBC is different: its limit is 0 (any NRBC is abnormal in an adult), so the question is *detection*,
and the evidence is a handful of cells.  The validation set saw no cell wrongly called an erythroblast
(0 of 1,114 for model 1.2.0), so the confusion matrix cannot know the rare lymphocyte or platelet that
is (0.1 % on the test split), and at 400 cells one such call flagged every other NRBC-free sample.  The
laboratory answer is a *limit of blank* (CLSI EP17): the number of erythroblast calls that NRBC-free
samples of this size reach by misclassification alone in at most 5 % of samples.  The false-call rate is
taken at its one-sided 95 % upper confidence bound from validation (Clopper-Pearson; 0 of 1,114 gives
0.27 %), pooled over the non-erythroblast classes, so a leak validation was too small to see is still
covered; the expected false calls are that rate times the sample's other cells, and the calls are
Poisson.  "NRBC present" needs more calls than that limit (2 of 100 cells, 3 of 200, 4 of 400).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from wbcproc.classes import CLASSES, WBC_CLASSES
from wbcproc.stats import binom_cdf, bisect_decreasing

N_BOOT = 400
_WBC_IDX = np.array([CLASSES.index(c) for c in WBC_CLASSES])
_NRBC = CLASSES.index("erythroblast")
BLANK_ALPHA = 0.05  # share of NRBC-free samples allowed to reach the NRBC limit of blank
RATE_CONFIDENCE = 0.95  # the false-call rate is taken at this one-sided upper confidence bound


PRIOR = 1.0 / len(CLASSES)  # Perks prior: one pseudo-count per row, spread over the classes


def confusion_probabilities(counts: np.ndarray, prior: float = PRIOR) -> np.ndarray:
    """Rows true class, columns called class, each row a probability (with a small Perks prior: a leak never
    seen in validation is rare, not impossible; a larger prior invents leaks and biases small classes)."""
    c = np.asarray(counts, dtype=float) + prior
    return c / c.sum(1, keepdims=True)


def unmix(called: np.ndarray, confusion: np.ndarray, iterations: int = 300, tol: float = 1e-7) -> np.ndarray:
    """Maximum-likelihood true composition (shares of all cells) from called counts and P(called | true).

    Batched: ``called`` (..., K) and ``confusion`` (..., K, K) broadcast, so the bootstrap runs at once."""
    called = np.asarray(called, dtype=float)
    confusion = np.asarray(confusion, dtype=float)
    n = called.sum(-1, keepdims=True)
    k = called.shape[-1]
    p = np.full(np.broadcast_shapes(called.shape, confusion.shape[:-1]), 1.0 / k)
    for _ in range(iterations):
        q = np.einsum("...i,...ij->...j", p, confusion)  # expected called shares
        ratio = called / np.maximum(q, 1e-12)
        new = p * np.einsum("...ij,...j->...i", confusion, ratio) / np.maximum(n, 1e-12)
        done = np.abs(new - p).max() < tol
        p = new
        if done:
            break
    return np.where(n > 0, p, 0.0)


def binomial_upper(successes: int, trials: int, confidence: float = RATE_CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound of a rate: the p at which seeing ``successes`` or fewer in
    ``trials`` has probability 1 - confidence (by bisection on the binomial CDF: no SciPy at run time)."""
    if trials <= 0 or successes >= trials:
        return 1.0
    return bisect_decreasing(lambda p: binom_cdf(successes, trials, p) - (1 - confidence), 0.0, 1.0)


def poisson_tail(k: int, mean: float) -> float:
    """P(X >= k) for X ~ Poisson(mean)."""
    if k <= 0:
        return 1.0
    return max(0.0, 1.0 - sum(math.exp(-mean) * mean**i / math.factorial(i) for i in range(k)))


def false_call_rate(confusion_counts: Any, cls: str = "erythroblast") -> float:
    """Upper 95 % bound of the share of cells of *other* classes that the model calls ``cls`` (validation
    counts, pooled over the other classes)."""
    cm = np.asarray(confusion_counts, dtype=float)
    j = CLASSES.index(cls)
    others = [i for i in range(len(CLASSES)) if i != j]
    return binomial_upper(round(float(cm[others, j].sum())), round(float(cm[others].sum())))


def blank_limit(expected_false: float, alpha: float = BLANK_ALPHA) -> int:
    """The fewest calls that misclassification alone reaches with probability <= ``alpha``: a count at or
    above it is evidence of real cells (the limit of blank plus one)."""
    k = 0
    while poisson_tail(k, expected_false) > alpha:
        k += 1
    return k


@dataclass(frozen=True)
class NrbcDetection:
    """Whether the erythroblast calls of a sample exceed what misclassification explains (see module doc)."""

    calls: int
    expected_false: float  # erythroblast calls expected from the other cells, at the upper false-call rate
    min_calls: int  # the fewest calls that count as NRBC present in a sample of this size

    @property
    def detected(self) -> bool:
        return self.calls >= self.min_calls


def nrbc_detection(counts: dict[str, int], false_rate: float, limit_per_100_wbc: float = 0.0) -> NrbcDetection:
    """Limit of blank for "NRBC present": false erythroblast calls expected from the sample's other cells
    at ``false_rate`` (``false_call_rate``), plus the NRBC a sample exactly at a non-zero laboratory limit
    would show."""
    calls = int(counts.get("erythroblast", 0))
    others = sum(int(v) for c, v in counts.items() if c != "erythroblast")
    wbc = sum(int(counts.get(c, 0)) for c in WBC_CLASSES)
    mean = false_rate * others + limit_per_100_wbc * wbc / 100.0
    return NrbcDetection(calls=calls, expected_false=mean, min_calls=max(1, blank_limit(mean)))


@dataclass(frozen=True)
class Corrected:
    """Corrected white-cell percentages, NRBC per 100 WBC, their 95 % intervals and beyond-limit probabilities."""

    percent: dict[str, float]
    ci95: dict[str, tuple[float, float]]
    nrbc_per_100_wbc: float
    nrbc_ci95: tuple[float, float]
    replicates_percent: np.ndarray  # (N_BOOT, len(WBC_CLASSES)) - for probabilities beyond any limit
    replicates_nrbc: np.ndarray
    wbc_total: int
    counts: dict[str, int]
    nrbc_false_rate: float  # upper bound of the share of other cells called erythroblast (validation)

    def nrbc_detection(self, limit_per_100_wbc: float = 0.0) -> NrbcDetection:
        return nrbc_detection(self.counts, self.nrbc_false_rate, limit_per_100_wbc)

    def prob_above(self, cell: str, limit: float) -> float:
        if cell == "erythroblast":
            # "NRBC present" (limit 0) means at least one NRBC: more than half a cell, not any positive share
            return float((self.replicates_nrbc > max(limit, 50.0 / self.wbc_total)).mean())
        return float((self.replicates_percent[:, WBC_CLASSES.index(cell)] > limit).mean())

    def prob_below(self, cell: str, limit: float) -> float:
        return float((self.replicates_percent[:, WBC_CLASSES.index(cell)] < limit).mean())

    def as_dict(self) -> dict[str, Any]:
        return {
            "percent": {c: round(v, 2) for c, v in self.percent.items()},
            "ci95": {c: [round(a, 2), round(b, 2)] for c, (a, b) in self.ci95.items()},
            "nrbc_per_100_wbc": round(self.nrbc_per_100_wbc, 2),
            "nrbc_ci95": [round(v, 2) for v in self.nrbc_ci95],
        }


def _wbc_view(p: np.ndarray) -> tuple[np.ndarray, float]:
    wbc = p[..., _WBC_IDX]
    total = wbc.sum(-1, keepdims=True)
    pct = 100.0 * wbc / np.maximum(total, 1e-12)
    nrbc = 100.0 * p[..., _NRBC] / np.maximum(total[..., 0], 1e-12)
    return pct, nrbc


def correct(counts: dict[str, int], confusion_counts: Any, *, n_boot: int = N_BOOT, seed: int = 0) -> Corrected | None:
    """The corrected differential of one sample; None when no white cell was called."""
    called = np.array([counts.get(c, 0) for c in CLASSES], dtype=float)
    if called[_WBC_IDX].sum() == 0:
        return None
    cm = np.asarray(confusion_counts, dtype=float)
    if cm.shape != (len(CLASSES), len(CLASSES)):
        raise ValueError(f"confusion matrix has shape {cm.shape}; expected {(len(CLASSES), len(CLASSES))}")
    p = unmix(called, confusion_probabilities(cm))
    pct, nrbc = _wbc_view(p)
    rng = np.random.default_rng(seed)  # fixed: the same sample gives the same report
    n = int(called.sum())
    rows = rng.gamma(np.broadcast_to(cm + PRIOR, (n_boot, *cm.shape)))  # Dirichlet rows, via gamma draws
    cm_b = rows / rows.sum(-1, keepdims=True)
    reps = unmix(rng.multinomial(n, called / n, size=n_boot).astype(float), cm_b, iterations=150, tol=1e-6)
    rep_pct, rep_nrbc = _wbc_view(reps)
    lo, hi = np.percentile(rep_pct, [2.5, 97.5], axis=0)
    return Corrected(
        percent={c: float(pct[i]) for i, c in enumerate(WBC_CLASSES)},
        ci95={c: (float(lo[i]), float(hi[i])) for i, c in enumerate(WBC_CLASSES)},
        nrbc_per_100_wbc=float(nrbc),
        nrbc_ci95=(float(np.percentile(rep_nrbc, 2.5)), float(np.percentile(rep_nrbc, 97.5))),
        replicates_percent=rep_pct,
        replicates_nrbc=rep_nrbc,
        wbc_total=int(called[_WBC_IDX].sum()),
        counts={c: int(v) for c, v in zip(CLASSES, called, strict=True)},
        nrbc_false_rate=false_call_rate(cm),
    )
