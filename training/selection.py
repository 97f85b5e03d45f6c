"""The recipe-selection rule of the device scripts (``gpu_generalise.sh``, ``gpu_twins.sh``), in one place:
among runs whose best validation macro-F1 is within ``VAL_MARGIN`` of the best, the one with the highest
mean accuracy over the packed other-laboratory sets ``PROXIES`` (BCCD, never trained on, and the
``training.simulate`` stand-ins made from validation cells).  Standard library only (runs on the device).
"""

from __future__ import annotations

from typing import Any

PROXIES = ("bccd_all", "camera_val", "tight_val")
VAL_MARGIN = 0.015


def proxy_score(evals: dict[str, Any]) -> float:
    """Mean accuracy over the proxy sets present in a run's ``eval`` block (0 when none is)."""
    have = [evals[k]["accuracy"] for k in PROXIES if k in evals]
    return sum(have) / max(1, len(have))


def eligible(val_f1: dict[str, float]) -> list[str]:
    """Runs within ``VAL_MARGIN`` of the best validation macro-F1, in the given order."""
    best = max(val_f1.values())
    return [v for v, f1 in val_f1.items() if f1 >= best - VAL_MARGIN]


def choose(val_f1: dict[str, float], score: dict[str, float]) -> str:
    """The eligible run with the highest score (a run without a score ranks last; ties: the first given)."""
    return max(eligible(val_f1), key=lambda v: score.get(v, -1.0))
