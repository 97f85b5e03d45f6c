"""Smear field images: find the white cells with OpenCV, estimate the scale, cut crops for the classifier.

Method (all steps in this module, tested on synthetic and real fields):

1. Work on a copy scaled to ~``work_px`` on its longer side (speed; boxes are mapped back).
2. Nucleus score = blue - green.  Romanowsky-stained nuclei (and platelets) are purple: high blue, low
   green.  Red cells are pink (blue ~ green) and the background is grey-white (blue ~ green), so the score
   separates nuclei from everything else almost independently of brightness.  Threshold: Otsu on the
   score, floored at ``min_score`` so that a field without any nucleus does not produce one.
3. Scale: the red-cell diameter in pixels, from the distance transform of the red-cell mask (pixels
   darker than the background in green, not nucleus); a red cell is ~7.5 µm across.
4. Lobes of one cell are grouped by closing the nucleus mask with a disc of ~0.35 red-cell diameters,
   so a segmented neutrophil's lobes become one cell; groups still apart but close (``merge_gap_rbc``) and
   together no longer than one nucleus can be (``merge_max_rbc``) are merged too (band neutrophils).
5. Filters, relative to the red-cell area: a group smaller than ``min_nucleus_rbc_area`` red-cell areas is
   a platelet or stain speck; a group with too little stained area is rejected too.
6. Whole-cell box: the nucleus group's box grown by ``cytoplasm_margin`` red-cell diameters (the
   cytoplasm ring), at least ``min_cell_rbc`` red-cell diameters wide; clipped to the image.  A box that
   whose nucleus comes within ``edge_rbc`` red-cell diameters of the border is marked ``edge`` (cut by
   the border; not counted by default).  Overlapping boxes count once.
7. Crops for the classifier are squares of ``crop_rbc`` red-cell diameters around the cell centre, the
   framing of the single-cell training images (PBC: 360 px crops, red cells ~72 px across: 5 diameters).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from wbcproc.resize import resize


@dataclass(frozen=True)
class FieldParams:
    work_px: int = 640
    min_score: float = 25.0
    min_nucleus_rbc_area: float = 0.3
    group_rbc: float = 0.35
    merge_gap_rbc: float = 0.6  # lobes further apart than this are not merged
    merge_max_rbc: float = 2.3  # a merged nucleus is never longer than this (a neutrophil is ~1.6-2 RBC wide)
    lobe_min_rbc_area: float = 0.1  # only pieces at least this big are merged as lobes (not platelets)
    cytoplasm_margin: float = 0.22
    min_cell_rbc: float = 1.25
    crop_rbc: float = 5.0
    default_rbc_fraction: float = 0.2  # red-cell diameter / shorter side, when it cannot be measured
    rbc_range: tuple[float, float] = (0.01, 0.3)  # plausible red-cell diameter / shorter side
    edge_px: int = 2
    edge_rbc: float = 0.1  # a nucleus this close to the border (in red-cell diameters) belongs to a cut cell


@dataclass(frozen=True)
class Detection:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the original image (x1/y1 exclusive)
    score: float
    edge: bool
    nucleus_area: int

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True)
class FieldResult:
    detections: list[Detection]
    rbc_diameter_px: float  # in the original image
    scale_measured: bool


def nucleus_score(bgr: np.ndarray) -> np.ndarray:
    b, g, _ = cv2.split(bgr)
    return cv2.subtract(b, g)  # saturates at 0: pink and grey are ~0


# OpenCV's 5x5 DIST_L2 chamfer mask (1, 1.4, 2.1969 px per step), in whole units of 1e-4 px
CHAMFER_UNIT = 10_000
_CHAMFER_A, _CHAMFER_B, _CHAMFER_C = 10_000, 14_000, 21_969
_CHAMFER_FAR = 1 << 40


def chamfer_distance(mask: np.ndarray) -> np.ndarray:
    """Distance of every non-zero pixel of ``mask`` to the nearest zero one, in units of 1e-4 px (int64):
    ``cv2.distanceTransform(mask, cv2.DIST_L2, 5)`` in integer arithmetic.

    Why not OpenCV's own: it adds its steps in float32 on x86 and in 16-bit fixed point on ARM (1.4 becomes
    1.3999939), so distances that are equal on one compare unequal on the other, a distance-transform peak
    moves, and with it the red-cell ruler and the crop around the cell (see :mod:`wbcproc.resize`).  Whole
    numbers compare the same everywhere.  The same two passes as OpenCV's; each row's left-to-right
    (right-to-left) steps are one running minimum, so the loop is over rows only.  Pixels outside the image
    are not zero.
    """
    h, w = mask.shape
    d = np.full((h + 4, w + 4), _CHAMFER_FAR, np.int64)
    d[2:-2, 2:-2] = np.where(mask > 0, _CHAMFER_FAR, 0)
    a, b, c = _CHAMFER_A, _CHAMFER_B, _CHAMFER_C
    steps = np.arange(w, dtype=np.int64) * a

    def from_rows(y: int, near: int, far: int) -> np.ndarray:
        p1, p2 = d[near], d[far]
        return np.minimum.reduce(
            [d[y, 2:-2], p1[1:-3] + b, p1[2:-2] + a, p1[3:-1] + b, p1[:-4] + c, p1[4:] + c, p2[1:-3] + c, p2[3:-1] + c]
        )

    for y in range(2, h + 2):  # forward: the two rows above, then left to right
        d[y, 2:-2] = np.minimum.accumulate(from_rows(y, y - 1, y - 2) - steps) + steps
    back = steps[::-1]
    for y in range(h + 1, 1, -1):  # backward: the two rows below, then right to left
        d[y, 2:-2] = np.minimum.accumulate((from_rows(y, y + 1, y + 2) - back)[::-1])[::-1] + back
    return d[2:-2, 2:-2]


@lru_cache(maxsize=4)
def _lattice(limit_px: int) -> np.ndarray:
    """Every distance the chamfer mask can produce up to ``limit_px``, sorted, in units of 1e-4 px."""
    top = limit_px * CHAMFER_UNIT
    parts = []
    for k in range(top // _CHAMFER_C + 1):
        for j in range((top - k * _CHAMFER_C) // _CHAMFER_B + 1):
            base = k * _CHAMFER_C + j * _CHAMFER_B
            parts.append(base + _CHAMFER_A * np.arange((top - base) // _CHAMFER_A + 1, dtype=np.int64))
    return np.unique(np.concatenate(parts))


# Below 120 px, two different chamfer distances are at least 31 units (0.0031 px) apart (the lattice of
# i*1 + j*1.4 + k*2.1969; tested).  OpenCV's distances are within a few units of the exact ones there (x86
# float32: under 1 unit measured; ARM fixed point: 0.061 units per diagonal step, so under 6), so its values
# can be snapped to the exact ones and its ties recognised; where a value is not clearly one or the other,
# the exact integer transform decides.
_FAST_LIMIT_PX = 120
_SURE_UNITS = 7


def _above(x: float) -> float:
    """The smallest float32 above ``x`` (``cv2.inRange`` includes its bounds)."""
    return float(np.nextafter(np.float32(x), np.float32(np.inf)))


def _below(x: float) -> float:
    return float(np.nextafter(np.float32(x), np.float32(-np.inf)))


def chamfer_peaks(mask: np.ndarray, k: int) -> np.ndarray:
    """Exact distances (int64, 1e-4 px) of the distance-transform peaks of ``mask`` above 4 px: the pixels
    that equal the maximum of their ``k`` x ``k`` elliptical neighbourhood in :func:`chamfer_distance`.

    Computed from OpenCV's fast transform snapped to the chamfer lattice, and by :func:`chamfer_distance`
    itself whenever the snapping is not certain; both give the same numbers on every CPU (tested).
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    approx = cv2.distanceTransform(mask, cv2.DIST_L2, 5)  # px, float32; OpenCV calls only: they leave the GIL
    if cv2.minMaxLoc(approx)[1] < _FAST_LIMIT_PX:
        below = cv2.subtract(cv2.dilate(approx, kernel), approx)  # 0 at a peak; float32 is exact to 0.1 unit here
        unit = 1.0 / CHAMFER_UNIT
        tie, apart = 2 * _SURE_UNITS * unit, (31 - 2 * _SURE_UNITS) * unit
        over4, next4 = 4 + _SURE_UNITS * unit, 4 + (31 - _SURE_UNITS) * unit  # the next distance above 4 is 4.1969
        unsure = cv2.countNonZero(cv2.inRange(below, _above(tie), _below(apart)))
        unsure += cv2.countNonZero(cv2.inRange(approx, _above(over4), _below(next4)))
        if unsure == 0:
            peaks = cv2.bitwise_and(cv2.compare(below, tie, cv2.CMP_LE), cv2.compare(approx, over4, cv2.CMP_GT))
            v = approx[peaks > 0].astype(np.float64) * CHAMFER_UNIT
            lattice = _lattice(_FAST_LIMIT_PX + 1)
            i = np.clip(np.searchsorted(lattice, v), 1, len(lattice) - 1)
            snapped = np.where(v - lattice[i - 1] < lattice[i] - v, lattice[i - 1], lattice[i])
            if len(v) == 0 or float(np.abs(snapped - v).max()) <= _SURE_UNITS:
                return snapped
    exact = chamfer_distance(mask).astype(np.float64)  # whole numbers: comparisons are exact
    return exact[(exact == cv2.dilate(exact, kernel)) & (exact > 4 * CHAMFER_UNIT)].astype(np.int64)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes (a red cell's pale centre) by flooding the background from the border."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    holes = (flood == 0).astype(np.uint8)[1:-1, 1:-1]
    return mask | holes


def _red_cells(g: np.ndarray, bg: float | np.ndarray, nuclei: np.ndarray) -> np.ndarray | None:
    """Hole-filled mask of what is darker than ``bg`` by 18 levels and not a nucleus; None if under 3 %."""
    mask = ((g < bg - 18) & (nuclei == 0)).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    if mask.mean() < 0.03:
        return None
    return _fill_holes(mask)


def _illumination(g: np.ndarray, rounds: int = 3) -> np.ndarray:
    """The background's brightness at each pixel, as a quadratic surface (vignetting is a smooth fall-off
    towards the corners): fitted to the brightest fifth of the pixels, then to the pixels within 10 levels
    of the fit or above it (the background between the cells), ``rounds`` times."""
    h, w = g.shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    xx, yy = xx / w - 0.5, yy / h - 0.5
    basis = np.stack([np.ones_like(xx), xx, yy, xx * xx, yy * yy, xx * yy], axis=-1).reshape(-1, 6)
    v = g.reshape(-1).astype(np.float32)
    sel = v >= np.percentile(v, 80)
    fit = np.full_like(v, float(v.max()))
    for _ in range(rounds):
        if sel.sum() < 6:
            break
        coef, *_ = np.linalg.lstsq(basis[sel], v[sel], rcond=None)
        fit = basis @ coef
        sel = v >= fit - 10
    return fit.reshape(h, w)


def rbc_diameter(bgr: np.ndarray, nuclei: np.ndarray) -> float | None:
    """Median red-cell diameter: distance-transform peaks of the hole-filled red-cell mask.

    Red cells are what is darker than the background by a margin; the background is the image's 95th
    percentile - or, where that leaves no background at all (vignetting: the dark corners fall below the
    cut and the pale centre becomes an enclosed "hole"), the illumination across the image
    (:func:`_illumination`).
    """
    g = cv2.GaussianBlur(bgr[:, :, 1], (5, 5), 0)
    mask = _red_cells(g, float(np.percentile(g, 95)), nuclei)
    if mask is None:
        return None
    if mask.all():
        mask = _red_cells(g, _illumination(g), nuclei)
        if mask is None or mask.all():
            return None  # no background to measure from; the distance transform would be FLT_MAX everywhere
    radii = chamfer_peaks(mask, max(9, (min(mask.shape) // 20) | 1)) / CHAMFER_UNIT
    if len(radii) < 3:
        return None
    # clumps give larger peaks, touching cells and fragments smaller ones: the 85th percentile matched annotated red-cell boxes on BCCD (median ratio 0.95)
    return float(2 * np.percentile(radii, 85))


def nuclei_and_ruler(
    img: np.ndarray, min_score: float, rbc_range: tuple[float, float]
) -> tuple[np.ndarray, float, np.ndarray, float | None]:
    """Steps 2-3 of the method, shared with single-cell framing (``wbcproc.framing``): the smoothed nucleus
    score, its threshold, the nucleus mask, and the red-cell diameter in pixels (None when not measurable or
    implausible - clumped red cells, an almost empty image - relative to the shorter side)."""
    score = cv2.GaussianBlur(nucleus_score(img), (5, 5), 0)
    otsu, _ = cv2.threshold(score, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thr = max(min_score, float(otsu))
    nuclei = (score > thr).astype(np.uint8)
    nuclei = cv2.morphologyEx(nuclei, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    rbc = rbc_diameter(img, nuclei)
    short = min(img.shape[:2])
    if rbc is not None and not rbc_range[0] * short <= rbc <= rbc_range[1] * short:
        rbc = None
    return score, thr, nuclei, rbc


def locate(bgr: np.ndarray, params: FieldParams = FieldParams()) -> FieldResult:
    """Find white cells in a field image (8-bit BGR)."""
    h0, w0 = bgr.shape[:2]
    f = min(1.0, params.work_px / max(h0, w0))
    img = resize(bgr, round(w0 * f), round(h0 * f)) if f < 1 else bgr
    h, w = img.shape[:2]
    score, thr, nuclei, rbc = nuclei_and_ruler(img, params.min_score, params.rbc_range)
    measured = rbc is not None
    if rbc is None:
        rbc = params.default_rbc_fraction * min(h, w)
    rbc_area = np.pi * (rbc / 2) ** 2
    k = max(3, round(params.group_rbc * rbc) | 1)
    grouped = cv2.morphologyEx(nuclei, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(grouped, connectivity=8)
    groups = []
    for i in range(1, n):
        x, y, bw, bh, _area = stats[i]
        sel = labels[y : y + bh, x : x + bw] == i
        stained = nuclei[y : y + bh, x : x + bw][sel]
        groups.append(
            [x, y, x + bw, y + bh, int(stained.sum()), float(score[y : y + bh, x : x + bw][sel].sum()), int(sel.sum())]
        )
    big = [g for g in groups if g[4] >= params.lobe_min_rbc_area * rbc_area]
    small = [g for g in groups if g[4] < params.lobe_min_rbc_area * rbc_area]
    groups = merge_lobes(big, params.merge_gap_rbc * rbc, params.merge_max_rbc * rbc) + small
    dets: list[Detection] = []
    for gx0, gy0, gx1, gy1, stained, score_sum, n_px in groups:
        if stained < params.min_nucleus_rbc_area * rbc_area:
            continue
        bw, bh = gx1 - gx0, gy1 - gy0
        margin = params.cytoplasm_margin * rbc
        cx, cy = gx0 + bw / 2, gy0 + bh / 2
        half_w = max(bw / 2 + margin, params.min_cell_rbc * rbc / 2)
        half_h = max(bh / 2 + margin, params.min_cell_rbc * rbc / 2)
        x0, y0 = max(0, int(cx - half_w)), max(0, int(cy - half_h))
        x1, y1 = min(w, int(np.ceil(cx + half_w))), min(h, int(np.ceil(cy + half_h)))
        e = max(params.edge_px, params.edge_rbc * rbc)
        edge = gx0 < e or gy0 < e or gx1 > w - e or gy1 > h - e
        conf = float(np.clip((score_sum / max(1, n_px) - thr) / 60.0 + 0.5, 0, 1))
        box = (int(x0 / f), int(y0 / f), min(w0, int(np.ceil(x1 / f))), min(h0, int(np.ceil(y1 / f))))
        dets.append(Detection(box, round(conf, 3), bool(edge), int(stained / (f * f))))
    return FieldResult(_dedupe(dets), rbc / f, measured)


def merge_lobes(groups: list[list], max_gap: float, max_extent: float) -> list[list]:
    """Merge nucleus groups that are lobes of one cell: close to each other (gap <= ``max_gap``) and
    together no larger than one nucleus can be (longer side <= ``max_extent``)."""
    merged = True
    while merged:
        merged = False
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                a, b = groups[i], groups[j]
                gap = max(0, max(a[0], b[0]) - min(a[2], b[2]), max(a[1], b[1]) - min(a[3], b[3]))
                ux0, uy0, ux1, uy1 = min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])
                if gap <= max_gap and max(ux1 - ux0, uy1 - uy0) <= max_extent:
                    groups[i] = [ux0, uy0, ux1, uy1, a[4] + b[4], a[5] + b[5], a[6] + b[6]]
                    del groups[j]
                    merged = True
                    break
            if merged:
                break
    return groups


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _dedupe(dets: list[Detection], thr: float = 0.5) -> list[Detection]:
    """Overlapping detections of one cell count once (keep the one with the larger nucleus)."""
    kept: list[Detection] = []
    for d in sorted(dets, key=lambda d: -d.nucleus_area):
        if all(iou(d.box, k.box) < thr for k in kept):
            kept.append(d)
    return sorted(kept, key=lambda d: (d.box[1], d.box[0]))


def crop_cell(bgr: np.ndarray, det: Detection, rbc_diameter_px: float, crop_rbc: float = 5.0) -> np.ndarray:
    """A square crop of ``crop_rbc`` red-cell diameters around the cell, padded with the border colour."""
    side = round(crop_rbc * rbc_diameter_px)
    cx, cy = det.centre
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    h, w = bgr.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    if pad:
        bgr = cv2.copyMakeBorder(bgr, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    return np.ascontiguousarray(bgr[y0 : y0 + side, x0 : x0 + side])
