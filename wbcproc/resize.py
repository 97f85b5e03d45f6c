"""Image resizing that gives the same pixels on every CPU.

Why this module exists: OpenCV's ``INTER_AREA`` shrinks an 8-bit image in float arithmetic whose rounding
depends on the machine (its SIMD path; whether the compiler fused a multiply and an add).  On an emulated ARM
CPU (Neoverse N1, ``qemu-aarch64``) it gave other pixels than on this x86 machine for 20-28 of 28 fixture
images at four of five scales - one level apart, here and there.  That alone would be harmless, but the
red-cell ruler thresholds a shrunken copy, a flipped pixel moves a distance-transform peak, and the crop
around the cell follows the ruler: 3 of the 24 fixture cells were cut 0.3-1.1 % larger or smaller on ARM
and the logits moved by up to 0.10 - while the int8 network itself gave bit-identical logits on both
(the same answer on every CPU).  ``wbcproc.fields.chamfer_peaks`` does the same for the distance
transform.

Here the result is defined exactly - shrinking averages the pixels by the area each covers (what
``INTER_AREA`` computes), an axis that grows interpolates between the two nearest pixels with pixel centres
aligned (what ``INTER_LINEAR`` computes), rounded half up once, at the end - so it is the same on any
machine; it differs from OpenCV's by at most one level on a few pixels.  Shrinking takes OpenCV's float32
result where it is clearly not near a rounding tie (every machine rounds those alike) and whole-number
arithmetic where it is (:func:`exact_resize`, which also does the rest): the same pixels, for about 10 % more
time than OpenCV's 8-bit shrink.  Enlarging both axes stays with OpenCV's ``INTER_LINEAR``: its 8-bit path
is fixed-point and gave identical pixels on ARM (28 images, 3 scales).
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np


@lru_cache(maxsize=256)
def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Source indices and integer weights (``n_out`` x taps) of one axis, and their common denominator."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"cannot resize an axis of {n_in} pixels to {n_out}: both must be at least 1")
    if n_out == n_in:
        return np.arange(n_in)[:, None], np.ones((n_in, 1), np.int64), 1
    if n_out < n_in:
        # Area: in units of 1/n_out, output i covers [i*n_in, (i+1)*n_in) and input j covers [j*n_out,
        # (j+1)*n_out); the overlaps are whole numbers and add up to n_in.
        lo = np.arange(n_out, dtype=np.int64)[:, None] * n_in
        idx = lo // n_out + np.arange(-(-n_in // n_out) + 1, dtype=np.int64)[None, :]
        w = np.minimum(lo + n_in, (idx + 1) * n_out) - np.maximum(lo, idx * n_out)
        w = np.where((w > 0) & (idx < n_in), w, 0)
        return np.minimum(idx, n_in - 1), w, n_in
    # Linear, pixel centres aligned: output i samples the input at ((2i+1)*n_in - n_out) / (2*n_out),
    # clamped to the first and last pixel.
    den = 2 * n_out
    num = (2 * np.arange(n_out, dtype=np.int64) + 1) * n_in - n_out
    j0 = np.clip(np.floor_divide(num, den), 0, n_in - 1)
    frac = np.where((num < 0) | (j0 >= n_in - 1), 0, num - j0 * den)
    idx = np.stack([j0, np.minimum(j0 + 1, n_in - 1)], axis=1)
    w = np.stack([den - frac, frac], axis=1)
    return idx, w, den


def resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """An 8-bit image (H x W or H x W x C) resized to ``height`` x ``width``, identically on every CPU.

    Enlarging both axes goes to OpenCV's ``INTER_LINEAR``, whose 8-bit path is fixed-point: its output was
    bit-identical on the emulated ARM CPU (28 images, 3 scales), so those images keep the pixels they always
    had.  Everything else - shrinking either axis - is computed here, exactly.
    """
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"expected an 8-bit image H x W or H x W x C, got dtype {img.dtype} shape {img.shape}")
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img.copy()
    if width >= w and height >= h:
        return cv2.resize(img, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
    if width <= w and height <= h:
        return _shrink(img, int(width), int(height))
    return exact_resize(img, width, height)


# OpenCV's float32 INTER_AREA is within 7.5e-5 of the exact average (measured on the fixture cells and fields at
# 7 sizes each, up to 6 x 6 source pixels per output pixel); averages this close to a rounding tie are computed
# exactly: 2e-3 (27x that) for up to 3 x 3 taps, widened in proportion to the taps (its rounding error grows at
# most so), and beyond 10 x 10 taps - a 10x shrink - the whole image is computed exactly.
_TIE_BAND = 2e-3
_MAX_TAPS = 100


def _shrink(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area averaging, exact: OpenCV's float32 ``INTER_AREA`` (fast), rounded where it is clearly not near
    a tie - there every machine rounds the same way, whatever its last bits - and the exact average
    (:func:`exact_resize`'s arithmetic, pixel by pixel) where it is."""
    h, w = img.shape[:2]
    ix, wx, dx = _taps(w, width)
    iy, wy, dy = _taps(h, height)
    taps = ix.shape[1] * iy.shape[1]
    if taps > _MAX_TAPS:
        return exact_resize(img, width, height)
    band = np.float32(_TIE_BAND * max(1.0, taps / 9))
    src = img if img.ndim == 3 else img[..., None]
    approx = cv2.resize(src.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    approx = approx.reshape(height, width, src.shape[2]) + np.float32(0.5)  # OpenCV drops a single channel
    out = np.floor(approx)
    approx -= out + np.float32(0.5)  # where the average sits between two levels: -0.5 or 0.5 is a tie
    near = np.flatnonzero(np.abs(approx) > np.float32(0.5) - band)
    if near.size:
        ys, xs, c = np.unravel_index(near, out.shape)
        pix = src[iy[ys][:, :, None], ix[xs][:, None, :], c[:, None, None]].astype(np.int64)
        total = (pix * wy[ys][:, :, None] * wx[xs][:, None, :]).sum(axis=(1, 2))
        d = dx * dy
        out.reshape(-1)[near] = (2 * total + d) // (2 * d)
    out = out.astype(np.uint8)
    return out if img.ndim == 3 else out[..., 0]


def exact_resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """:func:`resize` in exact arithmetic on every axis (area when shrinking, linear when enlarging).

    The weights are whole numbers and so is every partial sum: the rows pass runs in float32 while its sums
    stay below 2**24 (255 x the rows' denominator), the columns pass in float64 (below 2**53) - exact in any
    order, fused multiply-add or not, and several times faster than int64.
    """
    h, w = img.shape[:2]
    ix, wx, dx = _taps(w, int(width))
    iy, wy, dy = _taps(h, int(height))
    extra = (None,) * (img.ndim - 2)
    first = np.float32 if 255 * dy < 2**24 else np.float64
    src = img.astype(first)
    wyf = wy.astype(first)[(slice(None), slice(None), None, *extra)]
    rows = src[iy[:, 0]] * wyf[:, 0]
    for k in range(1, iy.shape[1]):
        rows += src[iy[:, k]] * wyf[:, k]
    cols = np.ascontiguousarray(np.swapaxes(rows, 0, 1), dtype=np.float64)  # columns pass as a rows pass
    wxf = wx.astype(np.float64)[(slice(None), slice(None), None, *extra)]
    out = cols[ix[:, 0]] * wxf[:, 0]
    for k in range(1, ix.shape[1]):
        out += cols[ix[:, k]] * wxf[:, k]
    d = float(dx * dy)
    out *= 2.0
    out += d
    out /= 2.0 * d  # the correctly rounded quotient of two whole numbers: its floor is the exact one
    return np.ascontiguousarray(np.swapaxes(np.floor(out), 0, 1)).astype(np.uint8)
