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
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

FEATURES = ("L_mean", "a_mean", "b_mean", "L_std", "a_std", "b_std", "L_p90", "nucleus_fraction")


def cell_features(prepared: np.ndarray, colour_order: str = "RGB") -> np.ndarray:
    """The eight features of one prepared (model-input-sized, uint8) image."""
    bgr = cv2.cvtColor(prepared, cv2.COLOR_RGB2BGR) if colour_order == "RGB" else prepared
    small = cv2.resize(bgr, (64, 64), interpolation=cv2.INTER_AREA) if max(bgr.shape[:2]) > 64 else bgr
    lab = cv2.cvtColor(small.astype(np.float32) / 255.0, cv2.COLOR_BGR2LAB).reshape(-1, 3)
    b, g = small[:, :, 0].astype(np.int16), small[:, :, 1].astype(np.int16)
    nucleus = float(((b - g) > 25).mean())
    return np.array([*lab.mean(0), *lab.std(0), np.percentile(lab[:, 0], 90), nucleus], np.float64)


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
    mean = train.mean(0)
    cov = np.cov(train, rowvar=False)
    cov += np.eye(len(mean)) * (1e-3 * np.trace(cov) / len(mean) + 1e-9)  # ridge: never singular
    cov_inv = np.linalg.inv(cov)
    ref = {"features": list(FEATURES), "mean": mean.tolist(), "cov_inv": cov_inv.tolist()}
    d = distances(held_out, ref)
    rng = np.random.default_rng(seed)
    n = min(calib_n, len(d))
    stats = [float(np.median(rng.choice(d, n, replace=False))) for _ in range(draws)] if n else [0.0]
    ref.update(
        threshold=float(np.percentile(stats, 99.5) * safety),
        calibration={
            "held_out_cells": len(d),
            "sample_size": n,
            "draws": draws,
            "quantile": 0.995,
            "safety": safety,
            "median_in_domain": float(np.median(d)) if len(d) else None,
        },
    )
    return ref


def distances(features: np.ndarray, ref: dict[str, Any]) -> np.ndarray:
    x = np.atleast_2d(features) - np.asarray(ref["mean"])
    return np.sqrt(np.einsum("ij,jk,ik->i", x, np.asarray(ref["cov_inv"]), x).clip(min=0))


def assess(features: np.ndarray, ref: dict[str, Any] | None) -> dict[str, Any] | None:
    """Sample statistic vs threshold; None when the model carries no reference (guard unavailable)."""
    if ref is None or len(features) == 0:
        return None
    d = distances(features, ref)
    stat = float(np.median(d))
    return {
        "distance": round(stat, 3),
        "threshold": round(float(ref["threshold"]), 3),
        "shifted": bool(stat > ref["threshold"]),
        "cells": len(d),
    }
