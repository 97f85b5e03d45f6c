"""The laboratory's unreviewed cells as extra training cells for ``wbc adapt``: confident pseudo-labels.

A laboratory reviews tens of cells by hand but has thousands from the slides it has run.  After a first
adapted draft has learnt the laboratory from its reviewed cells, that draft reads the unreviewed cells in
their 8 rotations/flips; a cell whose 8 views all get the same class, with a mean calibrated probability of
at least ``MIN_CONFIDENCE``, is taken with that class.  Only classes the laboratory reviewed are taken (a
class it did not review keeps the parent's behaviour, kept by the replay cells), at most ``PER_REVIEWED``
times as many as it reviewed of each class (the most confident first), so the reviewed cells keep a fair
weight and the commonest class does not swamp the rest.  Cells identical to a reviewed one (the same
sha256: the reviewed cells come from the same samples) are skipped.

What it buys is measured, not assumed: ``training.adapt`` fine-tunes a second draft from the parent on the
reviewed + pseudo-labelled cells and keeps it only where every guard rail holds and the held-out laboratory
cells score at least as well as without them (``benchmarks/adapt_curve.py --unreviewed``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.data import Item
from wbcproc.classes import CLASSES
from wbcproc.sidecar import sha256_file
from wbcproc.stats import softmax

MIN_CONFIDENCE = 0.9  # mean calibrated probability over the 8 views, all 8 views agreeing
PER_REVIEWED = 4  # pseudo-labelled cells of a class: at most this many times its reviewed cells


@dataclass
class Pseudo:
    """The pseudo-labelled cells (prepared images and class indices) and what was done, for the sidecar."""

    imgs: np.ndarray
    labels: np.ndarray
    record: dict[str, Any] = field(default_factory=dict)


def choose(
    view_logits: np.ndarray, temperature: float, reviewed: dict[str, int], *, min_confidence: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the cells to take, their classes and confidences, from ``view_logits`` (views, cells, classes).

    ``reviewed``: reviewed cells per class; a class with none is never taken, and a class takes at most
    ``PER_REVIEWED`` x its reviewed cells, the most confident first."""
    min_confidence = MIN_CONFIDENCE if min_confidence is None else min_confidence
    v, n, k = view_logits.shape
    probs = softmax(view_logits.reshape(v * n, k) / temperature).reshape(v, n, k)
    mean = probs.mean(0)
    call = mean.argmax(1)
    conf = mean.max(1)
    agree = (probs.argmax(2) == call[None, :]).all(0)
    take: list[int] = []
    for c, cls in enumerate(CLASSES):
        quota = PER_REVIEWED * reviewed.get(cls, 0)
        cand = np.flatnonzero(agree & (conf >= min_confidence) & (call == c))
        take.extend(cand[np.argsort(-conf[cand], kind="stable")][:quota].tolist())
    idx = np.array(sorted(take), dtype=int)
    return idx, call[idx], conf[idx]


def pseudo_label(
    files: Sequence[Path],
    prepare: Callable[[list[Item]], tuple[np.ndarray, list[Item], list[tuple[str, str]]]],
    read_views: Callable[[np.ndarray], np.ndarray],
    temperature: float,
    reviewed: dict[str, int],
    reviewed_sha256: set[str],
) -> Pseudo:
    """The confident cells among ``files`` (single-cell images), by :func:`choose`.

    ``prepare``: images as inference prepares them (``training.adapt.prepare_items``); ``read_views``: the
    adapted draft's logits for each of the 8 rotations/flips of prepared images, (views, cells, classes)."""
    items, duplicates = [], 0
    for p in files:
        digest = sha256_file(Path(p))  # as training.data hashes the reviewed cells
        if digest in reviewed_sha256:
            duplicates += 1
            continue
        items.append(Item(Path(p), CLASSES[0], digest, "train", False))  # the label is not read
    imgs, kept, rejected = prepare(items)
    record: dict[str, Any] = {
        "candidates": len(files),
        "same_as_a_reviewed_cell": duplicates,
        "rejected": len(rejected),
        "min_confidence": MIN_CONFIDENCE,  # read at call time: a test may lower it
        "per_reviewed": PER_REVIEWED,
        "rule": "all 8 rotations/flips called the same class by the first adapted draft, mean calibrated "
        "probability at least min_confidence; only reviewed classes, at most per_reviewed x a class's reviewed "
        "cells, the most confident first",
    }
    if not kept:
        return Pseudo(imgs, np.zeros(0, np.int64), {**record, "taken": 0, "per_class": {}, "cells": []})
    idx, calls, conf = choose(read_views(imgs), temperature, reviewed)
    record.update(
        taken=len(idx),
        per_class={cls: int((calls == c).sum()) for c, cls in enumerate(CLASSES) if (calls == c).any()},
        cells=[
            {"file": str(kept[i].path), "sha256": kept[i].sha256, "class": CLASSES[c], "confidence": round(float(p), 4)}
            for i, c, p in zip(idx, calls, conf, strict=True)
        ],
    )
    return Pseudo(imgs[idx], calls.astype(np.int64), record)
