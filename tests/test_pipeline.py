"""wbcproc.pipeline's single-cell path: the ruler pre-pass prepares each cell by its own measurement, keeps
it, and the main pass prepares again only the cells the sample's ruler frames otherwise - the same result as
preparing every cell after the ruler is known, whatever the cache holds."""

from __future__ import annotations

import shutil

import numpy as np
from helpers import fixture_images

import wbcproc.pipeline as pipeline
from wbcproc.config import load_settings
from wbcproc.discovery import scan_sample
from wbcproc.framing import uses_sample_ruler
from wbcproc.imageio import read_image
from wbcproc.model import load_classifier
from wbcproc.preprocess import measure_normalised, prepare_image


def _classify(folder, monkeypatch, budget: int):
    monkeypatch.setattr(pipeline, "PREPARED_CACHE_BYTES", budget)
    calls = []

    def counting(bgr, spec, **kw):
        calls.append(kw.get("normalised", False))
        return prepare_image(bgr, spec, **kw)

    monkeypatch.setattr(pipeline, "prepare_image", counting)
    settings = load_settings()
    inv = scan_sample(folder, settings)
    return pipeline.classify_candidates(inv.candidates, load_classifier(None), settings), calls


def test_kept_cells_are_the_cells_the_ruler_would_prepare(tmp_path, monkeypatch):
    folder = tmp_path / "S1"
    folder.mkdir()
    for f in fixture_images():
        shutil.copy(f, folder / f"{f.parent.name}-{f.name}")
    kept, kept_calls = _classify(folder, monkeypatch, 96 * 1024 * 1024)
    none, none_calls = _classify(folder, monkeypatch, 0)  # nothing kept: every cell prepared after the ruler
    assert kept.scale == none.scale and kept.scale is not None
    assert [c.as_dict() for c in kept.cells] == [c.as_dict() for c in none.cells]
    assert all(np.array_equal(a, b) for a, b in zip(kept.domain_features, none.domain_features, strict=True))
    assert kept.thumbnails == none.thumbnails
    # the pre-pass prepared every cell once; the main pass only those the ruler frames otherwise
    spec = load_classifier(None).info.preprocess
    reframed = sum(
        uses_sample_ruler(measure_normalised(read_image(f).bgr, spec)[0], kept.scale["rbc_px"], spec.framing)
        for f in sorted(folder.iterdir())
    )
    assert reframed >= 1  # the fixture has one: this test exercises the drop
    assert kept_calls.count(True) == len(kept.cells) and kept_calls.count(False) == reframed
    assert none_calls.count(True) == 0 and none_calls.count(False) == len(none.cells)
