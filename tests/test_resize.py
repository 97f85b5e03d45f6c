"""Resizing and the distance transform give the same numbers on every CPU.

OpenCV's ``INTER_AREA`` and its 5x5 distance transform round differently on ARM and x86 (measured under
``qemu-aarch64``; see ``wbcproc.resize``).  These tests pin the replacements to their definitions - integer
arithmetic written out here independently - so any machine that passes them computes the same pixels and the
same red-cell ruler; ``tests/test_int8.py`` checks the whole preprocessing bit for bit against the exporting
machine's and, under emulation, on ARM.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from helpers import CELLS, FIXTURES

from wbcproc.fields import CHAMFER_UNIT, _red_cells, chamfer_distance, chamfer_peaks
from wbcproc.imageio import read_image
from wbcproc.resize import exact_resize, resize


def _weights(n_in: int, n_out: int) -> tuple[np.ndarray, int]:
    """Dense integer weights of one axis from the definition: area overlaps (shrinking) or the two nearest
    pixels with centres aligned (enlarging)."""
    m = np.zeros((n_out, n_in), np.int64)
    if n_out == n_in:
        return np.eye(n_in, dtype=np.int64), 1
    if n_out < n_in:
        for i in range(n_out):
            for j in range(n_in):
                m[i, j] = max(0, min((i + 1) * n_in, (j + 1) * n_out) - max(i * n_in, j * n_out))
        return m, n_in
    den = 2 * n_out
    for i in range(n_out):
        num = (2 * i + 1) * n_in - n_out
        j = min(max(num // den, 0), n_in - 1)
        frac = 0 if num < 0 or j == n_in - 1 else num - j * den
        m[i, j] += den - frac
        if frac:
            m[i, j + 1] += frac
    return m, den


def _reference(img: np.ndarray, width: int, height: int) -> np.ndarray:
    my, dy = _weights(img.shape[0], height)
    mx, dx = _weights(img.shape[1], width)
    x = img.astype(np.int64).reshape(*img.shape[:2], -1)
    s = np.einsum("lk,ikc->ilc", mx, np.einsum("ij,jkc->ikc", my, x))  # rows, then columns
    d = dy * dx
    out = ((2 * s + d) // (2 * d)).astype(np.uint8)  # rounded half up, once
    return out.reshape(height, width, *img.shape[2:])


def _cells(n: int = 8) -> list[np.ndarray]:
    return [read_image(p).bgr for p in sorted(CELLS.glob("*/*.jpg"))[:n]]


@pytest.mark.parametrize("size", [(50, 50), (61, 37), (119, 120), (7, 5), (120, 40), (240, 60), (50, 300)])
def test_exact_resize_is_the_definition(size):
    """Shrinking both axes, one axis, mixed (one shrinks, one grows) and colour/grey images."""
    rng = np.random.default_rng(sum(size))
    img = rng.integers(0, 256, (121, 120, 3), dtype=np.uint8)
    assert np.array_equal(exact_resize(img, *size), _reference(img, *size))
    grey = np.ascontiguousarray(img[:, :, 1])
    assert np.array_equal(exact_resize(grey, *size), _reference(grey, *size))


def test_shrinking_is_exact_at_rounding_ties():
    """Halving averages four pixels: a sum of 2 mod 4 is an exact tie (x.5), which OpenCV rounds by its last
    float bits.  resize() must give the definition's answer (half up) at every one of them."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (200, 180, 3), dtype=np.uint8)
    blocks = img.reshape(100, 2, 90, 2, 3).astype(int).sum(axis=(1, 3))
    assert (blocks % 4 == 2).mean() > 0.2  # many ties
    for size in [(90, 100), (60, 50), (120, 130), (64, 64)]:  # 2:1, 3:1 and non-integer ratios
        assert np.array_equal(resize(img, *size), _reference(img, *size)), size


def test_large_shrinks_are_exact():
    """Many source pixels per output pixel: the tie band widens (5x5 to 10x10 taps), and beyond 10x10 the
    whole image is computed in whole numbers."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (401, 397, 3), dtype=np.uint8)
    for size in [(80, 81), (57, 50), (30, 31), (9, 8)]:
        assert np.array_equal(resize(img, *size), _reference(img, *size)), size


@pytest.mark.slow  # over 10 s on a 2-core CPU
def test_resize_on_cells_is_exact_and_close_to_opencv():
    for img in _cells():
        h, w = img.shape[:2]
        for size in [(192, 192), (128, 128), (64, 64), (round(w * 0.53), round(h * 0.53)), (w - 3, h - 1)]:
            ours = resize(img, *size)
            assert np.array_equal(ours, _reference(img, *size)), size
            opencv = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            assert int(np.abs(ours.astype(int) - opencv).max()) <= 1, size


def test_enlarging_both_axes_is_opencv_bilinear():
    """OpenCV's 8-bit bilinear path is fixed-point (the same pixels on ARM, measured), so it is kept."""
    img = _cells(1)[0]
    assert np.array_equal(resize(img, 500, 480), cv2.resize(img, (500, 480), interpolation=cv2.INTER_LINEAR))
    assert np.array_equal(resize(img, *img.shape[1::-1]), img)


def test_resize_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="8-bit image"):
        resize(np.zeros((10, 10), np.float32), 5, 5)
    with pytest.raises(ValueError, match="at least 1"):
        exact_resize(np.zeros((10, 10), np.uint8), 0, 5)


def _masks() -> list[np.ndarray]:
    """Red-cell masks of the fixture cells and fields (as the ruler makes them), plus shapes with ties."""
    out = []
    for p in sorted(CELLS.glob("*/*.jpg"))[:12] + sorted((FIXTURES / "fields").glob("*.jpg")):
        g = cv2.GaussianBlur(read_image(p).bgr[:, :, 1], (5, 5), 0)
        m = _red_cells(g, float(np.percentile(g, 95)), np.zeros_like(g))
        if m is not None and not m.all():
            out.append(m)
    rect = np.zeros((60, 90), np.uint8)
    rect[10:50, 10:80] = 1  # a ridge: a plateau of equal distances
    disc = np.zeros((81, 81), np.uint8)
    cv2.circle(disc, (40, 40), 30, 1, -1)
    out += [rect, disc]
    return out


def test_chamfer_distance_is_opencvs_5x5_transform():
    for m in _masks():
        ours = chamfer_distance(m) / CHAMFER_UNIT
        assert float(np.abs(ours - cv2.distanceTransform(m, cv2.DIST_L2, 5)).max()) < 1e-3


def _exact_peaks(m: np.ndarray, k: int) -> np.ndarray:
    d = chamfer_distance(m).astype(np.float64)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    return d[(d == cv2.dilate(d, kernel)) & (d > 4 * CHAMFER_UNIT)].astype(np.int64)


def test_chamfer_peaks_are_the_exact_ones():
    """The fast path (OpenCV's transform snapped to the chamfer lattice) gives exactly the integer
    transform's peaks - ties on ridges included - and so does the fallback beyond 120 px."""
    for m in _masks():
        k = max(9, (min(m.shape) // 20) | 1)
        assert np.array_equal(chamfer_peaks(m, k), _exact_peaks(m, k))
    big = np.zeros((330, 330), np.uint8)
    big[2:-2, 2:-2] = 1  # distances up to 163 px: beyond the fast path's range
    got = chamfer_peaks(big, 17)
    assert np.array_equal(got, _exact_peaks(big, 17)) and got.max() > 120 * CHAMFER_UNIT
