"""Scale and colour normalisation (wbcproc.framing) on real PBC and BCCD fixture images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from helpers import CELLS, FIXTURES

from wbcproc.framing import Framing, background_colour, frame_cell, locate_cell, white_balance
from wbcproc.preprocess import ColourNormalisation, PreprocessSpec, prepare_image

REFERENCE = (203.0, 229.0, 255.0)  # the PBC training data's slide background (BGR), as in the shipped sidecar


def _cells(cls: str) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in sorted((CELLS / cls).iterdir())]


def test_white_balance_maps_a_tinted_background_onto_the_reference():
    img = _cells("lymphocyte")[0]
    tinted = np.clip(img.astype(np.float32) * np.array([0.75, 0.95, 1.0]), 0, 255).astype(np.uint8)  # yellowish
    assert np.abs(background_colour(tinted) - REFERENCE).max() > 25
    out = white_balance(tinted, REFERENCE)
    assert np.abs(background_colour(out) - REFERENCE).max() < 6
    assert out.shape == tinted.shape and out.dtype == np.uint8


@pytest.mark.parametrize("cls", ["neutrophil", "lymphocyte", "monocyte", "eosinophil"])
def test_pbc_cells_are_framed_by_the_red_cell_ruler(cls):
    rbc = []
    for img in _cells(cls):
        info = locate_cell(img)
        h, w = img.shape[:2]
        assert info.found
        assert info.rbc_px is not None and 40 <= info.rbc_px <= 115, info  # PBC: 1st-99th pct 56-110 px
        rbc.append(info.rbc_px)
        assert abs(info.centre[0] - w / 2) < 0.2 * w and abs(info.centre[1] - h / 2) < 0.2 * h
        assert info.side_px == pytest.approx(5 * info.rbc_px, rel=0.01)
    assert 60 <= np.median(rbc) <= 90  # PBC median 74 px


def test_framing_undoes_a_change_of_magnification():
    """The same cell seen at half the magnification, with more slide around it, is cut to the same square.

    The red-cell ruler is a measurement: on these 12 fixture cells it lands within 20 % in 9 (measured
    when written); the test asks for at least 9 of 12 and the same cell chosen in every case."""
    within = 0
    cells = [c for k in ("lymphocyte", "eosinophil", "monocyte", "basophil") for c in _cells(k)]
    for img in cells:
        h, w = img.shape[:2]
        small = cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        canvas = cv2.copyMakeBorder(small, h // 2, h // 2, w // 2, w // 2, cv2.BORDER_REFLECT)
        a, b = locate_cell(img), locate_cell(canvas)
        within += abs(b.side_px / (a.side_px / 2) - 1) <= 0.2
        back = ((b.centre[0] - w // 2) * 2, (b.centre[1] - h // 2) * 2)
        assert np.hypot(back[0] - a.centre[0], back[1] - a.centre[1]) < 0.2 * a.side_px
    assert within >= 9


def test_a_tight_crop_without_red_cells_is_framed_from_the_nucleus():
    """A crop filled by the cell (another lab's tight crops): no red-cell ruler, so the square is set from
    the nucleus extent and is larger than the crop (the cell shrinks to its canonical size)."""
    for img in _cells("lymphocyte"):
        h, w = img.shape[:2]
        tight = cv2.resize(img[h // 2 - 60 : h // 2 + 60, w // 2 - 60 : w // 2 + 60], (120, 120))
        info = locate_cell(tight)
        assert info.found and info.rbc_px is None
        assert info.side_px > 120
        out, _ = frame_cell(tight)
        assert out.shape[0] == out.shape[1] == round(info.side_px)


def test_a_vignetted_image_is_measured_against_its_illumination():
    """Dark corners (vignetting) put the whole image below the red-cell cut: the pale centre became an
    enclosed hole, the filled mask had no background left, the distance transform returned FLT_MAX and
    2 x FLT_MAX overflowed (a RuntimeWarning, an error under pytest); the ruler was lost on every image, and
    PBC test cells went from 0.98 to 0.95 right.  The cut now follows the fitted illumination there."""
    measured = 0
    files = sorted(CELLS.glob("*/*"))[::2]
    for f in files:
        bgr = cv2.imread(str(f))
        h, w = bgr.shape[:2]
        yy, xx = np.mgrid[:h, :w]
        r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2)) / np.sqrt(2)
        vignetted = np.clip(bgr * (1 - 0.4 * r[..., None] ** 2), 0, 255).astype(np.uint8)
        plain, info = locate_cell(bgr), locate_cell(vignetted)
        assert np.isfinite(info.side_px) and info.side_px > 0, f.name
        if info.rbc_px is not None and plain.rbc_px is not None:
            assert abs(info.rbc_px / plain.rbc_px - 1) < 0.2, (f.name, info.rbc_px, plain.rbc_px)
            measured += 1
    assert measured >= 0.75 * len(files), measured


def test_an_image_without_a_nucleus_is_only_squared():
    blank = np.full((100, 140, 3), (203, 229, 255), np.uint8)
    out, info = frame_cell(blank)
    assert not info.found and out.shape == (100, 100, 3)


def test_spec_with_framing_and_white_balance_round_trips_and_prepares():
    spec = PreprocessSpec(
        input_size=64,
        colour_normalisation=ColourNormalisation("white_balance", reference=REFERENCE),
        framing=Framing(),
    )
    again = PreprocessSpec.from_dict(spec.to_dict())
    assert again == spec
    img = _cells("eosinophil")[0]
    out = prepare_image(img, spec)
    assert out.shape == (64, 64, 3)
    # framed=True (a field crop already at the field's scale) skips the framing step only
    crop = cv2.imread(str(FIXTURES / "fields" / "BloodImage_00003.jpg"))[100:300, 100:300]
    assert prepare_image(crop, spec, framed=True).shape == (64, 64, 3)


def test_bad_framing_and_colour_settings_are_named():
    with pytest.raises(ValueError, match=r"^framing.method is 'magic'; expected 'rbc_ruler'$"):
        PreprocessSpec.from_dict({"framing": {"method": "magic"}})
    with pytest.raises(ValueError, match=r"colour_normalisation.method is 'macenko'; expected 'reinhard_lab' or"):
        PreprocessSpec.from_dict({"colour_normalisation": {"method": "macenko"}})
    with pytest.raises(ValueError, match=r"colour normalisation 'white_balance' lacks \['reference'\]"):
        PreprocessSpec.from_dict({"colour_normalisation": {"method": "white_balance"}})  # no default colour
    with pytest.raises(ValueError, match=r"colour normalisation None lacks \['method'\]"):
        PreprocessSpec.from_dict({"colour_normalisation": {"mean": [1, 2, 3], "std": [1, 1, 1]}})
    with pytest.raises(ValueError, match=r"framing has unknown keys \['zoom'\]"):
        PreprocessSpec.from_dict({"framing": {"zoom": 2}})


def test_sample_ruler_needs_enough_measured_images():
    from wbcproc.framing import sample_ruler

    assert sample_ruler([70.0, 74.0, None, 80.0]) == 74.0
    assert sample_ruler([70.0, None, None]) is None  # fewer than three measured
    assert sample_ruler([70.0, 72.0, 74.0] + [None] * 10) is None  # under 30 % measured


def test_the_sample_ruler_replaces_missing_or_outlying_measurements_only():
    img = _cells("lymphocyte")[0]
    own = locate_cell(img)
    _, info = frame_cell(img, rbc_px=own.rbc_px * 1.1)  # agrees within 25 %: the image's own framing stays
    out_agree, _ = frame_cell(img, rbc_px=own.rbc_px * 1.1)
    assert out_agree.shape[0] == round(own.side_px)
    out_far, _ = frame_cell(img, rbc_px=own.rbc_px * 0.5)  # disagrees: the sample's ruler decides
    assert out_far.shape[0] == round(5 * own.rbc_px * 0.5)
    h, w = img.shape[:2]
    tight = cv2.resize(img[h // 2 - 60 : h // 2 + 60, w // 2 - 60 : w // 2 + 60], (120, 120))
    out_tight, info = frame_cell(tight, rbc_px=40.0)  # nothing measured in a tight crop: the ruler decides
    assert info.rbc_px is None and out_tight.shape[0] == 200


def test_a_sample_report_states_its_ruler(tmp_path):
    from helpers import copy_cells

    from wbcproc.pipeline import process_sample

    sample = tmp_path / "S-9"
    copy_cells(sample)
    report = __import__("json").loads(process_sample(sample, tmp_path / "out")["json"].read_text())
    scale = report["scale"]
    assert 60 <= scale["rbc_px"] <= 90 and scale["measured"] >= 20 and scale["images"] == 24


def test_every_image_is_framed_by_the_ruler_only_where_single_measurements_are_unreliable():
    """The training laboratory (~6 % of images off or unmeasured) keeps per-image framing; a laboratory whose
    red cells cannot be measured image by image (over 20 % off) gets one scale for every cell."""
    from wbcproc.framing import FrameInfo, Framing, ruler_for_every_image

    def infos(n_ok: int, n_off: int, n_missing: int = 0) -> list[FrameInfo]:
        ok = [FrameInfo(True, 74.0 + (i % 5) - 2, 370.0, (180.0, 180.0), 120.0) for i in range(n_ok)]
        off = [FrameInfo(True, 40.0, 200.0, (180.0, 180.0), 120.0) for _ in range(n_off)]
        missing = [FrameInfo(True, None, 340.0, (180.0, 180.0), 120.0) for _ in range(n_missing)]
        return ok + off + missing

    fr = Framing()
    assert not ruler_for_every_image(infos(94, 4, 2), 74.0, fr)  # 6 %: as trained
    assert not ruler_for_every_image(infos(80, 10, 10), 74.0, fr)  # exactly 20 %: not more than the share
    assert ruler_for_every_image(infos(79, 11, 10), 74.0, fr)
    assert ruler_for_every_image(infos(60, 20, 20), 74.0, fr)
    assert not ruler_for_every_image(infos(5, 5, 5), 74.0, fr)  # under 20 images: too few to judge
    assert not ruler_for_every_image(infos(60, 20, 20), None, fr)  # no ruler, nothing to frame by
    # an image whose own measurement agrees is framed by the ruler only when every image is
    img = _cells("lymphocyte")[0]
    own = locate_cell(img)
    assert frame_cell(img, rbc_px=own.rbc_px * 1.1)[0].shape[0] == round(own.side_px)
    assert frame_cell(img, rbc_px=own.rbc_px * 1.1, every=True)[0].shape[0] == round(5 * own.rbc_px * 1.1)
