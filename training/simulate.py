"""Stand-ins for another laboratory, made from labelled cells: to choose a training recipe (and to report
one) without a second lab's labelled data, which this project does not have beyond BCCD.

- ``camera``: 0.7x magnification in a larger field (the frame grown by mirroring the image), a yellow
  cast - another microscope and camera with a CellaVision-style crop.
- ``tight``: the centre half of the image at 120 px - the cell fills the frame, no whole red cell is left
  to measure - with a yellow cast: the look of rapid-stain crop sets.

Neither changes the stain itself (that is what BCCD is for); both are deterministic.

    python -m training.scripts.simulate_lab --data ../shared/data/pbc --split val --kind tight --out runs/sim/tight-val
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from training.data import gather
from wbcproc.imageio import ImageRejected, read_image

KINDS = ("camera", "tight")


def simulate_camera(bgr: np.ndarray, zoom: float = 0.7) -> np.ndarray:
    h, w = bgr.shape[:2]
    ph, pw = int(h * 0.45), int(w * 0.45)
    big = cv2.copyMakeBorder(bgr, ph, ph, pw, pw, cv2.BORDER_REFLECT_101)
    small = cv2.resize(big, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_AREA)
    return np.clip(small.astype(np.float32) * np.array([0.75, 0.95, 1.0]), 0, 255).astype(np.uint8)


def simulate_tight(bgr: np.ndarray, size: int = 120) -> np.ndarray:
    h, w = bgr.shape[:2]
    tight = cv2.resize(bgr[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4], (size, size), interpolation=cv2.INTER_AREA)
    return np.clip(tight.astype(np.float32) * np.array([0.75, 1.0, 1.05]) + [0, 10, 15], 0, 255).astype(np.uint8)


def write_set(data: list[str], split: str, kind: str, out: str | Path, every: int = 1) -> dict[str, int]:
    """Write ``out/<class>/<name>.png`` for every ``every``-th cell of ``split`` (``all``: every split);
    returns counts per class."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is unknown; expected one of {KINDS}")
    make = simulate_camera if kind == "camera" else simulate_tight
    items = [it for it in gather(data).items if split in ("all", it.split)][::every]
    counts: dict[str, int] = {}
    for it in items:
        try:
            bgr = read_image(it.path).bgr
        except ImageRejected:
            continue
        folder = Path(out) / it.label
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / (it.path.stem + ".png")), make(bgr))
        counts[it.label] = counts.get(it.label, 0) + 1
    return counts
