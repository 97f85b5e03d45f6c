"""The recipe-selection rule of the device scripts (``training/scripts/gpu_generalise.sh`` and
``gpu_twins.sh``, through ``python -m training.scripts.select_recipe``), in one place:
among runs whose best validation macro-F1 is within ``VAL_MARGIN`` of the best, the one with the highest
mean accuracy over the packed other-laboratory sets ``PROXIES`` (BCCD, never trained on, and the
``training.simulate`` stand-ins made from validation cells).  Standard library only (runs on the device).
"""

from __future__ import annotations

import json
from pathlib import Path
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


def run_info(work: Path, prefix: str, variant: str) -> dict[str, Any] | None:
    """``train_info.json`` of the run ``<work>/<prefix>-<augment>-<norm>`` (variant ``augment:norm``), if it finished."""
    p = work / f"{prefix}-{variant.replace(':', '-')}" / "train_info.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "best_val_macro_f1": r["best_val_macro_f1"],
        "best_epoch": r["best_epoch"],
        "epochs_run": len(r["history"]),
        "test_torch": r["test_torch"],
        "eval": r.get("eval", {}),
    }


def select_generalise(work: Path, variants: list[str]) -> tuple[str | None, dict[str, Any]]:
    """``gpu_generalise.sh`` phase 1: runs ``p1-*`` (other lab left out) judged by validation, then proxies."""
    runs = {v: r for v in variants if (r := run_info(work, "p1", v)) is not None}
    if not runs:
        return None, {"chosen": None, "phase1": {}}
    val_f1 = {v: r["best_val_macro_f1"] for v, r in runs.items()}
    ok = eligible(val_f1)
    rows = {
        v: {**_brief(r), "eligible": v in ok, "proxy_score": proxy_score(r.get("eval", {})), "init": r["init"]}
        for v, r in runs.items()
    }
    chosen = choose(val_f1, {v: row["proxy_score"] for v, row in rows.items()})
    return chosen, {
        "rule": f"validation macro-F1 within {VAL_MARGIN} of the best, then highest mean accuracy over "
        + ", ".join(PROXIES),
        "phase1_training": "PBC only (BCCD left out)",
        "chosen": chosen,
        "phase1": rows,
    }


def select_twins(work: Path, variants: list[str]) -> tuple[str | None, dict[str, Any]]:
    """``gpu_twins.sh``: the ``full-*`` run (all data) chosen by validation, then by its ``unseen-*`` twin's
    proxy score (the same recipe with the other lab left out)."""
    rows: dict[str, dict[str, Any]] = {}
    for v in variants:
        full, unseen = run_info(work, "full", v), run_info(work, "unseen", v)
        if full is None:
            continue
        rows[v] = {"full": _brief(full) | {"images_per_s_last": full["history"][-1]["images_per_s"]}}
        if unseen is not None:
            rows[v] |= {
                "unseen": _brief(unseen) | {"images_per_s_last": unseen["history"][-1]["images_per_s"]},
                "unseen_proxy_score": proxy_score(unseen.get("eval", {})),
            }
    chosen = None
    if rows:
        chosen = choose(
            {v: r["full"]["best_val_macro_f1"] for v, r in rows.items()},
            {v: r["unseen_proxy_score"] for v, r in rows.items() if "unseen_proxy_score" in r},
        )
    return chosen, {
        "rule": f"full runs with validation macro-F1 within {VAL_MARGIN} of the best; then the highest mean accuracy "
        "of the unseen (PBC-only) twin over " + ", ".join(PROXIES),
        "chosen": chosen,
        "variants": rows,
    }
