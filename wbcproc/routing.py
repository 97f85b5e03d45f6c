"""Which model reads a slide when a laboratory's model travels with its parent (``wbc adapt``, routed).

A laboratory whose cells look unlike the original training data's can need a model that moves further than
one set of weights allows while staying within a point on the original laboratory's cells.  ``wbc adapt``
then writes a *routed* model: the laboratory's model (``model.onnx``) with its parent beside it
(``parent.onnx`` + ``parent.json``, named in the sidecar's ``adaptation.routing``).  Each slide is read by
the one whose look it matches, by the domain guard's own colour/framing statistic (the median per-cell
Mahalanobis distance, :func:`wbcproc.domain.distances`) divided by that reference's calibrated threshold:

- the laboratory's model when the slide is within the laboratory's threshold and beyond the original
  laboratory's (the parent's own guard would flag it DOMAIN_SHIFT);
- the parent where the slide is within the original laboratory's threshold: a slide that looks like the
  original laboratory's is always read by the parent and keeps the parent's accuracy there;
- a slide that matches neither is read by the model whose look it is nearer to, in units of each threshold,
  and carries DOMAIN_SHIFT from that model's guard either way.  Why: a laboratory's look is calibrated on
  the few cells it reviewed, so its next slides can fall just beyond it (a rapid-stain stand-in adapted on
  25 cells: its other cells at 1.10 of the laboratory's threshold and 2.58 of the original's) - the parent
  read such a slide at 0.35, the laboratory's model is what the laboratory adapted for.

The decision uses only the prepared images (the preprocessing is the parent's, shared by both models), so it
is the same whichever model classified first; the report says which model read the slide and why.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wbcproc.domain import distances

LAB, PARENT = "laboratory", "parent"


def routed_lab(sidecar_domain: dict[str, Any] | None, routing: dict[str, Any]) -> dict[str, Any] | None:
    """The laboratory's colour reference that ``routing`` names, from the model's domain guard."""
    for lab in (sidecar_domain or {}).get("labs", []):
        if lab.get("name") == routing.get("lab"):
            return lab
    return None


def choose(features: np.ndarray, sidecar_domain: dict[str, Any] | None, routing: dict[str, Any]) -> dict[str, Any]:
    """The model for one slide: ``{"model": "laboratory" | "parent", "why": str, ...}`` with the two
    distances in units of their thresholds (``lab_ratio``, ``original_ratio``; None where not measurable)."""
    lab = routed_lab(sidecar_domain, routing)
    feats = np.atleast_2d(np.asarray(features, dtype=np.float64))
    if lab is None or sidecar_domain is None or not len(features):
        why = "no cells to compare" if not len(features) else "the model carries no laboratory reference"
        return {"model": PARENT, "why": why, "lab_ratio": None, "original_ratio": None}
    lab_ratio = float(np.median(distances(feats, lab))) / float(lab["threshold"])
    orig_ratio = float(np.median(distances(feats, sidecar_domain))) / float(sidecar_domain["threshold"])
    return decide(lab_ratio, orig_ratio, lab.get("name"))


def decide(lab_ratio: float, orig_ratio: float, name: str | None) -> dict[str, Any]:
    """The rule itself, on a slide's median distances in units of each reference's threshold."""
    out = {"lab_ratio": round(lab_ratio, 3), "original_ratio": round(orig_ratio, 3)}
    if lab_ratio <= 1.0 < orig_ratio:
        return {
            "model": LAB,
            "why": f"the slide matches laboratory {name}'s look ({lab_ratio:.2f} of its threshold; "
            f"original laboratory {orig_ratio:.2f})",
            **out,
        }
    if orig_ratio <= 1.0:
        why = (
            f"the slide matches the original laboratory's look ({orig_ratio:.2f} of its threshold; "
            f"laboratory {name} {lab_ratio:.2f})"
        )
        return {"model": PARENT, "why": why, **out}
    nearer = LAB if lab_ratio < orig_ratio else PARENT
    why = (
        f"the slide matches neither laboratory {name} ({lab_ratio:.2f} of its threshold) nor the original "
        f"laboratory ({orig_ratio:.2f}); read by the "
        + (f"laboratory {name}'s model" if nearer == LAB else "original laboratory's model")
        + ", whose look is nearer"
    )
    return {"model": nearer, "why": why, **out}
