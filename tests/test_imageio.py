"""wbcproc.imageio: decoding policy - truncated files refused, 16-bit scaled, alpha composited on white,
CMYK converted, grey content saved as colour refused, black outside the camera image filled."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from helpers import CELLS, cell_bgr
from PIL import Image

from wbcproc.imageio import ImageRejected, decode_bytes, read_image
from wbcproc.model import load_classifier
from wbcproc.preprocess import prepare_image, to_input


def _jpeg(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr)
    assert ok
    return buf.tobytes()


def test_truncated_jpeg_is_rejected():
    data = _jpeg(cell_bgr())
    with pytest.raises(ImageRejected, match="truncated JPEG") as ei:
        decode_bytes(data[: len(data) // 2])
    assert ei.value.code == "truncated"
    assert decode_bytes(data).bgr.shape == cell_bgr().shape


def test_truncated_png_and_bmp_are_rejected():
    png = cv2.imencode(".png", cell_bgr())[1].tobytes()
    with pytest.raises(ImageRejected, match="truncated PNG"):
        decode_bytes(png[: len(png) - 30])
    bmp = cv2.imencode(".bmp", cell_bgr())[1].tobytes()
    with pytest.raises(ImageRejected) as ei:
        decode_bytes(bmp[: len(bmp) // 2])
    assert ei.value.code == "truncated"


def test_sixteen_bit_colour_is_scaled_to_8_bit():
    img16 = cell_bgr().astype(np.uint16) * 257
    png = cv2.imencode(".png", img16)[1].tobytes()
    out = decode_bytes(png)
    assert out.bgr.dtype == np.uint8
    assert np.array_equal(out.bgr, cell_bgr())
    assert "converted from 16-bit to 8-bit" in out.notes


def test_alpha_composited_on_white():
    bgra = cv2.cvtColor(cell_bgr(), cv2.COLOR_BGR2BGRA)
    bgra[:10, :10, 3] = 0
    out = decode_bytes(cv2.imencode(".png", bgra)[1].tobytes())
    assert out.bgr.shape[2] == 3
    assert (out.bgr[:10, :10] == 255).all()
    assert "transparent pixels composited onto white" in out.notes


def test_cmyk_jpeg_is_converted():
    rgb = Image.fromarray(cv2.cvtColor(cell_bgr(), cv2.COLOR_BGR2RGB))
    buf = io.BytesIO()
    rgb.convert("CMYK").save(buf, "JPEG", quality=95)
    out = decode_bytes(buf.getvalue())
    assert out.bgr.shape == cell_bgr().shape
    assert "converted from CMYK" in out.notes
    # colours survive the round trip roughly (CMYK conversion is not exact)
    assert abs(float(out.bgr.mean()) - float(cell_bgr().mean())) < 20


def test_grey_content_saved_as_colour_is_rejected():
    grey = cv2.cvtColor(cv2.cvtColor(cell_bgr(), cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    with pytest.raises(ImageRejected, match="greyscale"):
        decode_bytes(cv2.imencode(".png", grey)[1].tobytes())


def _past_the_edge(bgr: np.ndarray, left: float, top: float = 0.0, value: int = 0) -> np.ndarray:
    """The crop an export tool makes when the cell sits near the camera image's left (and top) edge: the
    image shifted, the part beyond the edge one flat colour (pure black unless ``value`` says otherwise)."""
    h, w = bgr.shape[:2]
    k, kh = int(left * w), int(top * h)
    out = np.full_like(bgr, value)
    out[kh:, k:] = bgr[: h - kh, : w - k]
    return out


@pytest.mark.parametrize(
    ("left", "top", "codec", "value", "kind"),
    [
        (0.15, 0.0, ".png", 0, "black"),
        (0.3, 0.2, ".jpg", 0, "black"),
        (0.15, 0.0, ".jpg", 255, "uniform"),  # white: also what white balance would take for the background
        (0.2, 0.1, ".png", 128, "uniform"),
    ],
)
def test_padding_outside_the_camera_image_is_filled_with_the_background_and_noted(left, top, codec, value, kind):
    real = read_image(sorted((CELLS / "neutrophil").iterdir())[0]).bgr  # a PBC cell
    data = cv2.imencode(codec, _past_the_edge(real, left, top, value))[1].tobytes()
    out = decode_bytes(data)
    h, w = real.shape[:2]
    k, kh = int(left * w), int(top * h)
    band = out.bgr[:, : k - 2].reshape(-1, 3)
    assert np.ptp(band, axis=0).max() <= 1, "one colour, not a copy of the image"
    # the background of the real part, as the slide shows it (light, PBC's lilac-pink), not the padding's
    assert np.abs(band[0].astype(int) - np.median(real[:8, -8:].reshape(-1, 3), axis=0)).max() < 25
    as_saved = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    inside = out.bgr[kh + 3 :, k + 3 :].astype(int) - as_saved[kh + 3 :, k + 3 :]
    assert np.abs(inside).max() == 0, "the camera's pixels are untouched"
    share = 100 * (1 - (h - kh) * (w - k) / (h * w))
    note = next(n for n in out.notes if "outside the camera image" in n)
    assert note.startswith(f"{kind} border")
    assert f"({share:.0f} % of the image)" in note and "filled with the background colour" in note


def test_real_images_and_dark_content_at_the_edge_are_left_alone():
    real_images = [*sorted(CELLS.glob("*/*")), *sorted((CELLS.parent / "fields").glob("*.jpg"))]
    for f in real_images:  # 24 PBC cells and 4 BCCD smear fields (another camera): none has padding
        data = f.read_bytes()
        out = decode_bytes(data)
        assert not any("outside the camera image" in n for n in out.notes), f.name
        assert np.array_equal(out.bgr, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)), f.name
    real = cell_bgr()
    nucleus = real.copy()
    cv2.circle(nucleus, (0, nucleus.shape[0] // 2), nucleus.shape[0] // 4, (70, 20, 55), -1)  # darkest stain
    speck = real.copy()
    speck[:2, :3] = 0  # black, but a few pixels: dust or a dead pixel, not padding
    pbc = read_image(sorted((CELLS / "lymphocyte").iterdir())[0]).bgr
    smooth = pbc.copy()  # a flat stretch of the slide's own background along a side (300 PBC images have one)
    smooth[:, :50] = np.median(pbc[:8, -8:].reshape(-1, 3), axis=0).astype(np.uint8)
    solid = np.full_like(real, (180, 150, 230))  # one colour edge to edge: nothing to call padding
    for img in (nucleus, speck, smooth, solid):
        out = decode_bytes(cv2.imencode(".png", img)[1].tobytes())
        assert np.array_equal(out.bgr, img) and not out.notes


@pytest.mark.parametrize("value", [0, 255])
def test_a_cell_cropped_past_the_camera_edge_keeps_its_class_with_the_shipped_model(value):
    """The reason for the fill: the shipped model reads a padded band as cell content.  On 400 PBC test cells
    (benchmarks/black_border.py) a 15 % band took accuracy from 0.98 to 0.17 (black) / 0.58 (white); filled,
    0.99."""
    clf = load_classifier(None)
    spec = clf.info.preprocess

    def called(bgr: np.ndarray) -> str:
        return clf.info.classes[int(clf.probabilities(to_input(prepare_image(bgr, spec)[None], spec))[0].argmax())]

    files = sorted(CELLS.glob("*/*"))
    right_before = right_padded = right_filled = 0
    for f in files:
        real = read_image(f).bgr
        padded = _past_the_edge(real, 0.15, value=value)
        right_before += called(real) == f.parent.name
        right_padded += called(padded) == f.parent.name
        right_filled += called(decode_bytes(cv2.imencode(".png", padded)[1].tobytes()).bgr) == f.parent.name
    assert right_filled >= right_before - 1, (right_before, right_filled)
    assert right_padded < right_filled - 4, (right_padded, right_filled)


# --- metadata and names --------------------------------------------------------------------------
