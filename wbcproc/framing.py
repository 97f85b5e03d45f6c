"""Scale and colour normalisation of a single-cell image, before it is resized for the model.

Why: a classifier trained on one laboratory's crops sees another laboratory's cells at another
magnification, crop size and stain/camera colour.  Two steps make the input look alike wherever it came from
(both run in ``wbcproc.preprocess.prepare_image``, so training applies them too, with parameters from the
model's sidecar):

``white_balance``  the slide background (the brightest pixels) is mapped onto the training data's background
                   colour by a per-channel gain.  This removes camera white balance and illumination tint
                   (a yellowish or bluish background), and does not depend on how much of the frame the cell
                   fills, unlike whole-image colour transfer.
``frame_cell``     the white cell nearest the centre is found (Romanowsky nuclei are purple: blue - green is
                   high), and a square is cut around it whose side is ``crop_rbc`` red-cell diameters - the red
                   cell (~7.5 µm) is the ruler of a smear, so the cell keeps its physical size in the input
                   whatever the magnification.  Where no red cells can be measured (a tight crop filled by the
                   cell), the side is set from the nucleus group's extent instead, with a ratio calibrated on
                   the training data.  The square is padded with the background colour where it leaves the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import cv2
import numpy as np
from pydantic import Field
from pydantic.dataclasses import dataclass as record

from wbcproc.contract import RECORD, Record
from wbcproc.fields import merge_lobes, nuclei_and_ruler
from wbcproc.resize import resize


@record(frozen=True, config=RECORD)
class Framing(Record):
    """How ``frame_cell`` cuts the square around a cell; part of a model's preprocessing recipe."""

    method: Literal["rbc_ruler"] = "rbc_ruler"
    # side of the square in red-cell diameters (PBC crops: 360 px, red cells ~72 px)
    crop_rbc: Annotated[float, Field(ge=1.0, le=20.0)] = 5.0
    # fallback: nucleus group's longer side / square side (PBC median 0.349)
    nucleus_extent: Annotated[float, Field(ge=0.05, le=1.0)] = 0.35
    extent_per_rbc: tuple[float, float] = (0.5, 3.2)  # nucleus extent / red-cell diameter (PBC 0.5-99th pct)
    work_px: Annotated[int, Field(ge=16)] = 192  # measurements run on a copy this large (longer side)
    min_score: float = 20.0  # blue - green floor for nucleus pixels
    rbc_range: tuple[float, float] = (0.06, 0.34)  # plausible red-cell diameter / shorter image side
    side_range: tuple[float, float] = (0.1, 2.0)  # the square's side / shorter image side
    # an image's own red-cell measurement within this of the sample's is kept
    ruler_tolerance: Annotated[float, Field(ge=0.0)] = 0.25


@dataclass(frozen=True)
class FrameInfo:
    found: bool  # a nucleus was found (else the image is only squared around its centre)
    rbc_px: float | None  # measured red-cell diameter in the original image, or None
    side_px: float  # side of the cut square in the original image
    centre: tuple[float, float]  # x, y in the original image
    extent_px: float  # longer side of the nucleus group in the original image (0 when none found)


def background_colour(bgr: np.ndarray) -> np.ndarray:
    """BGR float of the slide background: per-channel median of the brightest 8 % of pixels."""
    return brightest_median(_small(bgr, 128).reshape(-1, 3))


def brightest_median(pixels: np.ndarray) -> np.ndarray:
    """Per-channel median of the brightest 8 % of ``pixels`` (N x 3, 8-bit): the slide background's colour
    (white when there are none)."""
    # = pixels.astype(np.float32).sum(axis=1), exactly (sums of three 8-bit values), at a fifth of the cost
    grey = pixels[:, 0].astype(np.float32) + pixels[:, 1] + pixels[:, 2]
    sel = pixels[grey >= np.percentile(grey, 92)] if len(pixels) else pixels
    return np.median(sel, axis=0).astype(np.float64) if len(sel) else np.full(3, 255.0)


def white_balance_gain(bgr: np.ndarray, reference: tuple[float, float, float], max_gain: float = 1.8) -> np.ndarray:
    """Per-channel gain (BGR) mapping the image's background colour onto ``reference``."""
    bg = np.maximum(background_colour(bgr), 1.0)
    return np.clip(np.asarray(reference, np.float64) / bg, 1.0 / max_gain, max_gain)


def white_balance(
    bgr: np.ndarray, reference: tuple[float, float, float], max_gain: float = 1.8, gain: np.ndarray | None = None
) -> np.ndarray:
    """Per-channel gain mapping the image's background colour onto ``reference`` (BGR).  ``gain``: this
    image's :func:`white_balance_gain`, when already measured (the sample's pre-pass measures it once)."""
    if gain is None:
        gain = white_balance_gain(bgr, reference, max_gain)
    lut = np.clip(np.arange(256)[:, None] * gain[None, :] + 0.5, 0, 255).astype(np.uint8)  # 256 x 3
    return cv2.LUT(bgr, lut.reshape(256, 1, 3))  # one table per channel, in one pass


def _small(bgr: np.ndarray, px: int) -> np.ndarray:
    h, w = bgr.shape[:2]
    f = min(1.0, px / max(h, w))
    return resize(bgr, max(1, round(w * f)), max(1, round(h * f))) if f < 1 else bgr


def locate_cell(bgr: np.ndarray, framing: Framing = Framing()) -> FrameInfo:
    """Where the centre cell is and how large the square around it should be (original pixels).

    Measured on a ``work_px`` copy.  An image more than twice that size (a larger crop, or a lower
    magnification) is measured on a copy up to three times finer instead, because the red-cell
    measurement needs a few pixels of radius; if no red cell is found there, the coarse copy decides.
    """
    h0, w0 = bgr.shape[:2]
    if max(h0, w0) > 2 * framing.work_px:
        finer = _locate(bgr, framing, min(max(h0, w0), 3 * framing.work_px))
        if finer.rbc_px is not None:
            return finer
    return _locate(bgr, framing, framing.work_px)


def _locate(bgr: np.ndarray, framing: Framing, work_px: int) -> FrameInfo:
    h0, w0 = bgr.shape[:2]
    img = _small(bgr, work_px)
    f = img.shape[1] / w0
    h, w = img.shape[:2]
    short = min(h, w)
    _score, _thr, nuclei, rbc = nuclei_and_ruler(img, framing.min_score, framing.rbc_range)
    scale = rbc if rbc is not None else 0.2 * short  # grouping distances in red-cell units (or a guess)
    k = max(3, round(0.35 * scale) | 1)
    grouped = cv2.morphologyEx(nuclei, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, _, stats, _ = cv2.connectedComponentsWithStats(grouped, connectivity=8)
    min_area = 0.002 * h * w
    groups = []
    for i in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[i])
        if area >= min_area:
            groups.append([x, y, x + bw, y + bh, area, 0.0, area])
    side_lo, side_hi = framing.side_range[0] * min(h0, w0), framing.side_range[1] * min(h0, w0)
    if not groups:
        side = float(np.clip(min(h0, w0), side_lo, side_hi))
        return FrameInfo(False, None if rbc is None else rbc / f, side, (w0 / 2, h0 / 2), 0.0)

    def weight(g: list) -> float:
        d = np.hypot((g[0] + g[2]) / 2 - w / 2, (g[1] + g[3]) / 2 - h / 2)
        return g[4] * float(np.exp(-((d / (0.3 * short)) ** 2)))

    main = max(groups, key=weight)
    # lobes of the same cell: merge only pieces close to the chosen one, never beyond one nucleus' size
    rest = [g for g in groups if g is not main]
    merged = merge_lobes([main, *rest], 0.6 * scale, 2.3 * scale if rbc is not None else 0.9 * short)
    main = next(g for g in merged if g[0] <= main[0] and g[1] <= main[1] and g[2] >= main[2] and g[3] >= main[3])
    extent = max(main[2] - main[0], main[3] - main[1])
    cx, cy = (main[0] + main[2]) / 2, (main[1] + main[3]) / 2
    if rbc is not None and not framing.extent_per_rbc[0] <= extent / rbc <= framing.extent_per_rbc[1]:
        rbc = None  # a "red cell" that size next to this nucleus is something else (cytoplasm, a clump)
    side = framing.crop_rbc * rbc if rbc is not None else extent / framing.nucleus_extent
    side = float(np.clip(side / f, side_lo, side_hi))
    return FrameInfo(True, None if rbc is None else rbc / f, side, (cx / f, cy / f), extent / f)


def cut_square(bgr: np.ndarray, centre: tuple[float, float], side: float, fill: np.ndarray | None = None) -> np.ndarray:
    """The square of ``side`` px around ``centre``; parts outside the image are ``fill`` (BGR), by default
    the image's background colour - measured only when the square does leave the image (~1.6 ms)."""
    s = max(2, round(side))
    x0, y0 = round(centre[0] - s / 2), round(centre[1] - s / 2)
    h, w = bgr.shape[:2]
    pad = max(0, -x0, -y0, x0 + s - w, y0 + s - h)
    if pad:
        colour = tuple(int(v + 0.5) for v in (background_colour(bgr) if fill is None else fill))
        bgr = cv2.copyMakeBorder(bgr, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=colour)
        x0, y0 = x0 + pad, y0 + pad
    return np.ascontiguousarray(bgr[y0 : y0 + s, x0 : x0 + s])


def frame_cell(
    bgr: np.ndarray,
    framing: Framing = Framing(),
    *,
    rbc_px: float | None = None,
    located: FrameInfo | None = None,
    every: bool = False,
) -> tuple[np.ndarray, FrameInfo]:
    """The canonical square around the centre cell (see the module docstring).

    ``rbc_px``: the sample's ruler (:func:`sample_ruler`): one slide has one magnification, and the median
    over its images is far less noisy than one image's measurement.  It replaces this image's own
    measurement when that is missing or off by more than ``ruler_tolerance`` (a clump, a tight crop);
    measurements that agree are kept, as in training, where each image was framed by its own.
    ``located``: this image's :func:`locate_cell` result, when already measured (saves the measurement).
    ``every``: the ruler sizes this image's square whatever its own measurement (:func:`ruler_for_every_image`).
    """
    info = located if located is not None else locate_cell(bgr, framing)
    side = info.side_px
    if uses_sample_ruler(info, rbc_px, framing, every=every):
        h, w = bgr.shape[:2]
        side = float(
            np.clip(framing.crop_rbc * rbc_px, framing.side_range[0] * min(h, w), framing.side_range[1] * min(h, w))
        )
    return cut_square(bgr, info.centre, side), info


def uses_sample_ruler(info: FrameInfo, rbc_px: float | None, framing: Framing, *, every: bool = False) -> bool:
    """Whether :func:`frame_cell` sizes this image's square by the sample's ruler ``rbc_px`` instead of the
    image's own measurement: a nucleus was found and its own red-cell measurement is missing or off by more
    than ``ruler_tolerance`` - or ``every`` image is framed by the ruler (:func:`ruler_for_every_image`).
    Every other image is framed the same with or without the sample's ruler."""
    if rbc_px is None or not info.found:
        return False
    own = info.rbc_px
    return every or own is None or abs(own / rbc_px - 1) > framing.ruler_tolerance


RULER_FOR_EVERY_IMAGE = 0.2  # share of a sample's images whose own measurement is missing or off (PBC: ~6 %)
RULER_MIN_IMAGES = 20


def ruler_for_every_image(infos: list[FrameInfo], rbc_px: float | None, framing: Framing) -> bool:
    """Whether a sample's images should all be framed by its ruler, not only those whose own measurement is
    missing or off.  One slide has one magnification; where more than ``RULER_FOR_EVERY_IMAGE`` of its
    images (with a nucleus, at least ``RULER_MIN_IMAGES``) cannot be measured or disagree with the ruler,
    the single-image measurement is unreliable in this laboratory's images (a stain that colours red cells
    lilac, so they pass for nuclei; crowded or tight crops), and the measurements that happen to agree are
    no better than the rest: the same scale for every cell is then worth more.  In the training laboratory
    this never happens (PBC: ~6 % of images use the ruler, 2.4 points of spread at 100 cells), so its
    samples are framed as the model was trained.  Measured on LISC (another laboratory, 38 % of its images
    off or unmeasured): model 1.2.0 through the pipeline 0.513 -> 0.533, and after ``wbc adapt`` on half
    the cells 0.808 -> 0.842 on the other half (``benchmarks/adapt_curve.py``)."""
    found = [i for i in infos if i.found]
    if rbc_px is None or len(found) < RULER_MIN_IMAGES:
        return False
    off = sum(uses_sample_ruler(i, rbc_px, framing) for i in found)
    return off > RULER_FOR_EVERY_IMAGE * len(found)


def sample_framing(infos: list[FrameInfo], framing: Framing) -> tuple[float | None, bool]:
    """How a sample's single-cell images are framed, from their own measurements: its ruler (rounded to
    0.01 px, as the report states it; None: per-image framing) and whether every image is framed by it
    (:func:`ruler_for_every_image`).  ``wbc process`` and ``wbc adapt`` both decide it here."""
    ruler = sample_ruler([i.rbc_px for i in infos])
    if ruler is None:
        return None, False
    ruler = round(ruler, 2)
    return ruler, ruler_for_every_image(infos, ruler, framing)


def sample_ruler(rbc_px: list[float | None], *, min_measured: int = 3, min_share: float = 0.3) -> float | None:
    """The sample's red-cell diameter: the median of its images' measurements, when at least
    ``min_measured`` images (and ``min_share`` of them) could be measured; else None (per-image framing)."""
    measured = [v for v in rbc_px if v is not None]
    if len(measured) < min_measured or len(measured) < min_share * len(rbc_px):
        return None
    return float(np.median(measured))
