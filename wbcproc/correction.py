"""Differential corrected for the classifier's own, measured confusion - and how sure a flag is.

Why: a flag compares a percentage with a narrow interval (immature granulocytes 0-1 %).  The model calls
about 1.4 % of neutrophils IG (band vs metamyelocyte), so a normal 100-cell sample with 60 neutrophils
shows one or two "IG" cells about half the time and the raw count crosses 1 % - a false left shift on
every other slide (issue: flags a physician can trust).  The leak is measured: the model's confusion
matrix on its validation cells, P(called j | truly i), is in the sidecar (``confusion_val``).

Method (adjusted classify-and-count by maximum likelihood): the called counts are a multinomial draw
from q = C^T p, where p is the sample's true composition over the eight classes and C the confusion
matrix; p is estimated by expectation-maximisation (Saerens et al. 2002; in physics "Richardson-Lucy"
unfolding), which stays on the simplex.  Uncertainty - of the count *and* of the correction - by a
bootstrap: each replicate resamples the cells and draws every row of C from its Dirichlet posterior
(validation counts + 1/8, Perks), and re-estimates p.  From the replicates: a 95 % interval for every corrected
percentage, and the probability that the true value lies beyond each reference limit, which grades a
flag: *definite* at >= 0.95, *possible* at >= 0.5 (the corrected value itself is beyond the limit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from wbcproc.classes import CLASSES, WBC_CLASSES

DEFINITE = 0.95  # probability beyond the limit for a definite flag
POSSIBLE = 0.5  # ... for a possible one: the corrected value itself is beyond the limit
N_BOOT = 400
_WBC_IDX = np.array([CLASSES.index(c) for c in WBC_CLASSES])
_NRBC = CLASSES.index("erythroblast")


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
    )


def grade(probability: float) -> str | None:
    """``definite`` / ``possible`` / None (not flagged) from the probability beyond the limit."""
    if probability >= DEFINITE:
        return "definite"
    if probability >= POSSIBLE:
        return "possible"
    return None
