from __future__ import annotations

import cv2
import numpy as np
import pytest
from helpers import cell_bgr

from wbcproc.preprocess import (
    ColourNormalisation,
    PreprocessSpec,
    prepare_image,
    preprocess,
    to_input,
)


def lab_stats(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of an image in CIELAB (L 0..100, a/b about -127..127)."""
    lab = cv2.cvtColor(bgr.astype(np.float32) / 255.0, cv2.COLOR_BGR2LAB)
    flat = lab.reshape(-1, 3)
    return flat.mean(axis=0), flat.std(axis=0)


def test_output_follows_the_spec():
    spec = PreprocessSpec(
        input_size=48, resize="stretch", colour_order="RGB", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
    )
    x = preprocess(cell_bgr(), spec)
    assert x.shape == (1, 3, 48, 48) and x.dtype == np.float32
    prepared = prepare_image(cell_bgr(), spec)
    expected = (prepared.astype(np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), expected, rtol=1e-6)


def test_colour_order():
    img = np.zeros((40, 40, 3), np.uint8)
    img[:, :, 0] = 200  # blue in BGR
    rgb = prepare_image(img, PreprocessSpec(input_size=16, colour_order="RGB"))
    bgr = prepare_image(img, PreprocessSpec(input_size=16, colour_order="BGR"))
    assert rgb[..., 2].min() == 200 and rgb[..., 0].max() == 0
    assert bgr[..., 0].min() == 200


def test_resize_rules_keep_or_crop_aspect():
    img = np.full((100, 200, 3), 50, np.uint8)
    img[:, 90:110] = 250  # a bright stripe in the centre
    stretch = prepare_image(img, PreprocessSpec(input_size=20, resize="stretch", colour_order="BGR"))
    crop = prepare_image(img, PreprocessSpec(input_size=20, resize="shorter_side_crop", colour_order="BGR"))
    box = prepare_image(img, PreprocessSpec(input_size=20, resize="letterbox", colour_order="BGR", pad_value=(0, 0, 0)))
    assert stretch.shape == crop.shape == box.shape == (20, 20, 3)
    assert (crop[:, 8:12] > 200).all()  # stripe is 4 px wide after a 100->20 crop-resize
    assert (box[:5] == 0).all() and (box[-5:] == 0).all()  # padded top and bottom
    assert (stretch[:, 9:11] > 200).all()


def test_batch_to_input_matches_single():
    spec = PreprocessSpec(input_size=24)
    p = prepare_image(cell_bgr(), spec)
    batch = to_input(np.stack([p, p]), spec)
    np.testing.assert_array_equal(batch[0], to_input(p, spec)[0])


def test_reinhard_moves_stats_to_reference():
    ref = ColourNormalisation(mean=(70.0, 10.0, -5.0), std=(12.0, 6.0, 5.0))
    spec = PreprocessSpec(input_size=64, colour_order="BGR", colour_normalisation=ref)
    out = prepare_image(cell_bgr(), spec)
    mu, sd = lab_stats(out)
    np.testing.assert_allclose(mu, ref.mean, atol=2.5)
    np.testing.assert_allclose(sd, ref.std, atol=2.5)


def test_spec_round_trip_and_errors():
    spec = PreprocessSpec(
        input_size=64,
        resize="letterbox",
        colour_normalisation=ColourNormalisation(mean=(1, 2, 3), std=(1, 1, 1)),
    )
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match=r"resize\n.*Input should be 'stretch', 'shorter_side_crop' or 'letterbox'"):
        PreprocessSpec(resize="zoom")  # type: ignore[arg-type]  # built in code: pydantic's own message
    with pytest.raises(ValueError, match="unknown keys"):
        PreprocessSpec.from_dict({"input_size": 32, "gamma": 2})
    with pytest.raises(ValueError, match="expected an 8-bit BGR image"):
        prepare_image(np.zeros((10, 10), np.uint8), spec)
