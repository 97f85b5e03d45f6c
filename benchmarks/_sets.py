"""Labelled sets for the other-laboratory benchmarks: ``NAME=ROOT[@SPLIT]`` and classifying a set's
images as one sample folder through the product's pipeline."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from training.data import Item, gather
from wbcproc.config import Settings
from wbcproc.discovery import SampleInventory, scan_sample
from wbcproc.model import Classifier
from wbcproc.pipeline import Classified, classify_candidates


def load_set(spec: str) -> tuple[str, list[Item]]:
    """``NAME=ROOT`` or ``NAME=ROOT@SPLIT`` (only that split of ROOT, by content hash as training splits)."""
    name, _, root = spec.partition("=")
    root, _, split = root.partition("@")
    return name, [it for it in gather([root]).items if not split or it.split == split]


def classify_as_sample(
    items: list[Item], classifier: Classifier, settings: Settings, *, thumbnails: bool = True
) -> tuple[SampleInventory, Classified, dict[str, str]]:
    """Copy the items into one temporary sample folder (the sample ruler works on them together, as in
    ``wbc process``) and classify it; returns the folder's inventory, the result and each copied file's
    true label by name."""
    labels: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, it in enumerate(items):
            name = f"{k:04d}_{it.path.name}"
            shutil.copy(it.path, Path(tmp) / name)
            labels[name] = it.label
        inv = scan_sample(tmp, settings)
        got = classify_candidates(
            inv.candidates, classifier, settings, thumbnails=thumbnails, image_type=inv.metadata.image_type
        )
    return inv, got, labels
