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


def _partly_shrunk_cells():
    """The fixture cells, 10 of 24 shrunk to 60 %: a laboratory whose single-image red-cell measurements
    disagree with its ruler in over 20 % of images."""
    import cv2

    for i, f in enumerate(p for p in fixture_images() if p.parent.name != "broken"):
        img = cv2.imread(str(f))
        yield f, cv2.resize(img, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA) if i % 12 < 5 else img


def test_a_sample_with_unreliable_single_measurements_is_framed_by_its_ruler_throughout(tmp_path, monkeypatch):
    """Ten of 24 cells shrunk to 60 %: their own red-cell measurements disagree with the sample's, so every
    cell is framed by the ruler (the report says so); the pre-pass keeps none of the cells its own
    measurement framed, and the result is the same whatever the cache holds."""
    import cv2

    from wbcproc.framing import ruler_for_every_image

    folder = tmp_path / "S2"
    for f, img in _partly_shrunk_cells():
        folder.mkdir(exist_ok=True)
        cv2.imwrite(str(folder / f"{f.parent.name}-{f.stem}.png"), img)
    spec = load_classifier(None).info.preprocess
    infos = [measure_normalised(read_image(f).bgr, spec)[0] for f in sorted(folder.iterdir())]
    kept, kept_calls = _classify(folder, monkeypatch, 96 * 1024 * 1024)
    assert kept.scale is not None and kept.scale.get("every_image_by_ruler") is True
    assert ruler_for_every_image(infos, kept.scale["rbc_px"], spec.framing)
    none, _ = _classify(folder, monkeypatch, 0)
    assert [c.as_dict() for c in kept.cells] == [c.as_dict() for c in none.cells]
    found = sum(i.found for i in infos)
    assert kept_calls.count(False) == found  # every cell with a nucleus prepared again, by the ruler
    # the training laboratory's cells as they are: per-image framing, and the report keeps its form
    plain = tmp_path / "S3"
    plain.mkdir()
    for f in fixture_images():
        shutil.copy(f, plain / f"{f.parent.name}-{f.name}")
    result, _ = _classify(plain, monkeypatch, 96 * 1024 * 1024)
    assert result.scale is not None and "every_image_by_ruler" not in result.scale


def test_adaptation_prepares_a_laboratorys_cells_as_the_pipeline_frames_its_samples(tmp_path, monkeypatch):
    """``wbc adapt`` takes each data root as one sample: where its single-image measurements are unreliable
    (10 of 24 cells shrunk), every cell is framed by the ruler - the same inputs ``wbc process`` gives the
    network for that folder, so the laboratory's cells are learnt as its samples will show them."""
    import cv2

    from training.adapt import prepare_items
    from training.data import gather
    from wbcproc.domain import cell_features

    lab = tmp_path / "lab"
    flat = tmp_path / "S4"
    flat.mkdir()
    for f, img in _partly_shrunk_cells():
        (lab / f.parent.name).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(lab / f.parent.name / f"{f.stem}.png"), img)
        cv2.imwrite(str(flat / f"{f.parent.name}-{f.stem}.png"), img)
    spec = load_classifier(None).info.preprocess
    g = gather([lab], val_fraction=0.0, test_fraction=0.0)
    imgs, kept, _ = prepare_items(g.items, spec)
    by_file = {
        f"{it.path.parent.name}-{it.path.name}": cell_features(x, spec.colour_order)
        for it, x in zip(kept, imgs, strict=True)
    }
    result, _ = _classify(flat, monkeypatch, 96 * 1024 * 1024)
    assert result.scale.get("every_image_by_ruler") is True
    for cell, feats in zip(result.cells, result.domain_features, strict=True):
        assert np.array_equal(by_file[cell.file.split("/")[-1]], feats), cell.file
