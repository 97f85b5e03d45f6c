"""wbcproc.imageio: decoding policy - truncated files refused, 16-bit scaled, alpha composited on white,
CMYK converted, grey content saved as colour refused."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from helpers import cell_bgr
from PIL import Image

from wbcproc.imageio import ImageRejected, decode_bytes


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


# --- metadata and names --------------------------------------------------------------------------
