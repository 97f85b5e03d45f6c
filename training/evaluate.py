"""Score an ONNX model (through the runtime pipeline, no torch) on labelled class folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.data import Item, gather
from training.metrics import classification_metrics
from wbcproc.classes import CLASSES
from wbcproc.config import load_settings
from wbcproc.discovery import header_checked
from wbcproc.imageio import ImageRejected, read_image
from wbcproc.model import load_classifier
from wbcproc.pipeline import classify_candidates
from wbcproc.preprocess import prepare_image, to_input


def _framed_predictions(
    clf, items: list[Item], rejected: list[dict[str, str]], batch_size: int
) -> tuple[list[str], list[str], list[str]]:
    """Field crops from a FRAMED root: preprocessed as ``wbc process`` preprocesses field crops, classified
    in batches like ``classify_candidates`` does."""
    spec = clf.info.preprocess
    truth, pred, sources, prepared = [], [], [], []
    for it in items:
        try:
            bgr = read_image(it.path).bgr
        except ImageRejected as exc:
            rejected.append({"file": str(it.path), "reason": exc.reason})
            continue
        prepared.append(prepare_image(bgr, spec, framed=True))
        truth.append(it.label)
        sources.append(str(it.path.parent.parent))
    for i in range(0, len(prepared), batch_size):
        probs = clf.probabilities(to_input(np.stack(prepared[i : i + batch_size]), spec))
        pred += [clf.info.classes[int(k)] for k in probs.argmax(1)]
    return truth, pred, sources


def evaluate_items(model: str | Path, items: list[Item]) -> dict[str, Any]:
    settings = load_settings(None)
    clf = load_classifier(model, settings.threads)
    rejected: list[dict[str, str]] = []
    framed_items = [it for it in items if it.framed]
    framed_truth, framed_pred, framed_sources = _framed_predictions(clf, framed_items, rejected, settings.batch_size)
    cells = [it for it in items if not it.framed]
    labels = {str(it.path): it.label for it in cells}
    candidates, bad = header_checked(((it.path, str(it.path)) for it in cells), settings)
    rejected += [{"file": r.file, "reason": r.reason} for r in bad]
    classified = classify_candidates(candidates, clf, settings, thumbnails=False, image_type="cell")
    rejected += [{"file": r.file, "reason": r.reason} for r in classified.rejected]
    truth = [labels[c.file] for c in classified.cells] + framed_truth
    pred = [c.label for c in classified.cells] + framed_pred
    source_of = {str(it.path): str(it.path.parent.parent) for it in items}
    sources = [source_of[c.file] for c in classified.cells] + framed_sources
    y_true = np.array([CLASSES.index(t) for t in truth], dtype=np.int64)
    y_pred = np.array([CLASSES.index(p) for p in pred], dtype=np.int64)
    m = classification_metrics(y_true, y_pred, CLASSES)
    m["per_source"] = {}
    for src in sorted(set(sources)):
        sel = np.array([s == src for s in sources])
        ms = classification_metrics(y_true[sel], y_pred[sel], CLASSES)
        m["per_source"][src] = {"n": int(sel.sum()), "accuracy": ms["accuracy"], "macro_f1": ms["macro_f1"]}
    m["model"] = clf.info.summary()
    m["rejected"] = rejected
    return m


def evaluate_model(model: str | Path, roots: list[str], split: str = "all") -> dict[str, Any]:
    g = gather(roots)
    items = g.items if split == "all" else [it for it in g.items if it.split == split]
    m = evaluate_items(model, items)
    m["split"] = split
    return m
