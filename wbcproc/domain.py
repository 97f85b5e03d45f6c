"""Domain-shift guard: is this sample's imaging (stain, camera, framing) like the training data's?

A model trained on one laboratory's images can be confidently wrong on another's; without a guard that
failure is silent.  Each prepared cell image (the model's input, so framing and resize are included) is
reduced to eight numbers: CIELAB mean and standard deviation (stain and camera colour), the background
brightness (90th percentile of L*) and the fraction of nucleus-coloured pixels (blue - green > 25; how
the cell fills the frame).  The training run stores the mean and inverse covariance of these over its
training split, and a threshold calibrated on held-out in-domain images: the 99.5th percentile of the
sample statistic over many random in-domain samples of ``calib_n`` cells, times a safety factor.

The sample statistic is the *median* per-cell Mahalanobis distance, so a few odd images do not trip it,
while a sample from another lab (all cells shifted) does.  Beyond the threshold the report gets the
sample-level flag DOMAIN_SHIFT, and the FHIR report is marked preliminary.

Colour and framing statistics cannot see every shift: another laboratory's cells can look alike to them
and still puzzle the model.  So a second, model-side statistic joins them where the sidecar carries it
(``uncertainty``): the sample's mean of (1 - calibrated top probability) over its cells, against
thresholds calibrated the same way on held-out in-domain cells, one per sample size (a mean over fewer
cells varies more; below the smallest calibrated size this part stays silent).  Either one beyond its
threshold raises the flag; the report says which.

A model adapted to a laboratory (``wbc adapt``) carries that laboratory in ``labs``: its colour reference
and, where the adapted model proved itself on the laboratory's held-out cells (``validated``), its own
uncertainty thresholds.  A sample that matches a validated laboratory's look is judged against what is
usual *there* (the adapted model is less sure on another laboratory's cells than on its own training data,
and would otherwise flag every sample of the laboratory that adapted it); an unvalidated laboratory's
samples keep the flag ("laboratory not validated"); a sample that matches no known look is flagged by the
colour half.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from wbcproc.stats import softmax

FEATURES = ("L_mean", "a_mean", "b_mean", "L_std", "a_std", "b_std", "L_p90", "nucleus_fraction")


def cell_features(prepared: np.ndarray, colour_order: str = "RGB") -> np.ndarray:
    """The eight features of one prepared (model-input-sized, uint8) image."""
    bgr = cv2.cvtColor(prepared, cv2.COLOR_RGB2BGR) if colour_order == "RGB" else prepared
    # OpenCV's own shrink (not wbcproc.resize): from the 128 px model input this is 2:1, which OpenCV does in
    # integer arithmetic - the same pixels as wbcproc.resize (all eight features equal on 200 PBC cells)
    small = cv2.resize(bgr, (64, 64), interpolation=cv2.INTER_AREA) if max(bgr.shape[:2]) > 64 else bgr
    lab = cv2.cvtColor(small.astype(np.float32) / 255.0, cv2.COLOR_BGR2LAB).reshape(-1, 3)
    b, g = small[:, :, 0].astype(np.int16), small[:, :, 1].astype(np.int16)
    nucleus = float(((b - g) > 25).mean())
    return np.array([*lab.mean(0), *lab.std(0), np.percentile(lab[:, 0], 90), nucleus], np.float64)


def _reference(train: np.ndarray) -> dict[str, Any]:
    mean = train.mean(0)
    cov = np.cov(train, rowvar=False)
    cov += np.eye(len(mean)) * (1e-3 * np.trace(cov) / len(mean) + 1e-9)  # ridge: never singular
    return {"features": list(FEATURES), "mean": mean.tolist(), "cov_inv": np.linalg.inv(cov).tolist()}


def _calibrated(
    ref: dict[str, Any], d: np.ndarray, *, calib_n: int, draws: int, safety: float, seed: int, how: str
) -> dict[str, Any]:
    """``ref`` with its threshold: the 99.5th percentile of the median distance of random samples of
    ``calib_n`` in-domain cells (drawn with replacement where fewer than twice that many are at hand: drawing
    all of them without replacement would give the same median every time), times ``safety``."""
    rng = np.random.default_rng(seed)
    n = min(calib_n, len(d))
    replace = len(d) < 2 * calib_n
    stats = [float(np.median(rng.choice(d, n, replace=replace))) for _ in range(draws)] if n else [0.0]
    return {
        **ref,
        "threshold": float(np.percentile(stats, 99.5) * safety),
        "calibration": {
            "held_out_cells": len(d),
            "distances": how,
            "sample_size": n,
            "with_replacement": replace,
            "draws": draws,
            "quantile": 0.995,
            "safety": safety,
            "median_in_domain": float(np.median(d)) if len(d) else None,
        },
    }


def fit_reference(
    train: np.ndarray,
    held_out: np.ndarray,
    *,
    calib_n: int = 30,
    draws: int = 2000,
    safety: float = 1.25,
    seed: int = 0,
) -> dict[str, Any]:
    """Reference statistics from training features and a threshold calibrated on held-out features."""
    ref = _reference(train)
    d = distances(held_out, ref)
    return _calibrated(ref, d, calib_n=calib_n, draws=draws, safety=safety, seed=seed, how="held-out cells")


def leave_one_out_distances(feats: np.ndarray) -> np.ndarray:
    """Each cell's distance to the reference fitted on all the other cells: how far an unseen cell of the
    same look lands (a cell's distance to a reference fitted with it is shorter, the more so the fewer cells)."""
    keep = np.ones(len(feats), bool)
    out = np.empty(len(feats))
    for i in range(len(feats)):
        keep[i] = False
        out[i] = distances(feats[i], _reference(feats[keep]))[0]
        keep[i] = True
    return out


def fit_reference_loo(
    feats: np.ndarray, *, calib_n: int = 30, draws: int = 2000, safety: float = 1.25, seed: int = 0
) -> dict[str, Any]:
    """Reference statistics from all of ``feats``, the threshold calibrated on their leave-one-out distances:
    for a look known from a few dozen cells (a laboratory's reviewed cells), where holding some out would
    leave too few to fit or to calibrate."""
    ref = _reference(feats)
    d = leave_one_out_distances(feats)
    return _calibrated(ref, d, calib_n=calib_n, draws=draws, safety=safety, seed=seed, how="leave-one-out")


UNCERTAINTY_SIZES = (10, 20, 30, 50, 100, 200)


def cell_uncertainty(logits: np.ndarray, temperature: float) -> np.ndarray:
    """The uncertainty half's per-cell statistic: 1 - calibrated top probability."""
    return 1.0 - softmax(np.asarray(logits) / temperature).max(1)


def fit_uncertainty(
    held_out_uncertainty: np.ndarray,
    *,
    sizes: tuple[int, ...] = UNCERTAINTY_SIZES,
    draws: int = 2000,
    quantile: float = 0.995,
    safety: float = 1.25,
    seed: int = 0,
    source: str = "",
    bootstrap: bool = False,
) -> dict[str, Any]:
    """Per-sample-size thresholds for the mean per-cell uncertainty (1 - calibrated top probability) of
    in-domain samples, from held-out cells drawn without replacement - or, with ``bootstrap``, with
    replacement: for a few hundred cells or fewer, where a sample of 100-200 drawn without replacement would
    be most of them and its mean would vary far less than a real sample's."""
    u = np.asarray(held_out_uncertainty, dtype=np.float64)
    rng = np.random.default_rng(seed)
    thresholds: dict[str, float] = {}
    for n in sizes:
        if not len(u) or (n > len(u) and not bootstrap):
            break
        stats = [float(u[rng.choice(len(u), n, replace=bootstrap)].mean()) for _ in range(draws)]
        thresholds[str(n)] = float(np.percentile(stats, quantile * 100) * safety)
    return {
        "statistic": "mean over the sample's cells of 1 - calibrated top probability",
        "thresholds": thresholds,
        "calibration": {
            "held_out_cells": len(u),
            "draws": draws,
            "with_replacement": bootstrap,
            "quantile": quantile,
            "safety": safety,
            "mean_in_domain": float(u.mean()) if len(u) else None,
            "source": source,
        },
    }


def uncertainty_threshold(ref: dict[str, Any], n: int) -> float | None:
    """The threshold for a sample of ``n`` cells: that of the largest calibrated size <= n (the strictest
    that still holds); None below the smallest."""
    fits = [int(k) for k in ref.get("thresholds", {}) if int(k) <= n]
    return None if not fits else float(ref["thresholds"][str(max(fits))])


def distances(features: np.ndarray, ref: dict[str, Any]) -> np.ndarray:
    x = np.atleast_2d(features) - np.asarray(ref["mean"])
    return np.sqrt(np.einsum("ij,jk,ik->i", x, np.asarray(ref["cov_inv"]), x).clip(min=0))


def assess(
    features: np.ndarray, ref: dict[str, Any] | None, uncertainty: np.ndarray | None = None
) -> dict[str, Any] | None:
    """Sample statistics vs thresholds; None when the model carries no reference (guard unavailable).

    ``uncertainty``: the cells' 1 - calibrated top probability, used when ``ref`` has an ``uncertainty``
    part and the sample has at least its smallest calibrated size."""
    if ref is None or len(features) == 0:
        return None
    d = distances(features, ref)
    stat = float(np.median(d))
    out: dict[str, Any] = {
        "distance": round(stat, 3),
        "threshold": round(float(ref["threshold"]), 3),
        "shifted": False,
        "cells": len(d),
        "reasons": ["colour/framing"] if stat > ref["threshold"] else [],
    }
    unc_ref, unc_lab = ref.get("uncertainty"), None
    # a model adapted to a laboratory (`wbc adapt`) also knows that laboratory's look - and, where it proved
    # itself there, how sure it usually is on that laboratory's cells
    if "colour/framing" in out["reasons"]:
        matches = []
        for lab in ref.get("labs", []):
            lab_stat = float(np.median(distances(features, lab)))
            if lab_stat <= lab["threshold"]:
                matches.append((not lab.get("validated", True), lab_stat, lab))  # validated ones first
        if matches:
            unvalidated, lab_stat, lab = min(matches, key=lambda m: (m[0], m[1]))
            out["matched_lab"] = {"name": lab.get("name"), "distance": round(lab_stat, 3),
                                  "threshold": round(float(lab["threshold"]), 3)}  # fmt: skip
            out["reasons"] = ["laboratory not validated"] if unvalidated else []
            if not unvalidated and lab.get("uncertainty") is not None:  # sidecars before `validated`: look alone
                unc_ref, unc_lab = lab["uncertainty"], lab.get("name")
    if unc_ref is not None and uncertainty is not None and len(uncertainty):
        mean_u = float(np.mean(uncertainty))
        limit = uncertainty_threshold(unc_ref, len(uncertainty))
        out["uncertainty"] = round(mean_u, 4)
        out["uncertainty_threshold"] = None if limit is None else round(limit, 4)
        out["uncertainty_reference"] = unc_lab
        if limit is not None and mean_u > limit:
            out["reasons"].append("model uncertainty")
    out["shifted"] = bool(out["reasons"])
    return out
