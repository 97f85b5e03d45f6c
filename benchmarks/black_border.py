"""Cells cropped past the edge of the camera image: does the padding change their class?

    python benchmarks/black_border.py --data ../shared/data/pbc --lab lisc=../shared/data/lisc

Export tools that cut a fixed-size square around each cell pad where the square leaves the camera image
- LISC with pure black (about a fifth of its cells); others letterbox or pad with white or grey.
``wbcproc.imageio`` fills such padding with the slide's background colour and notes it.  Two measurements,
each with the fill (as shipped) and without it (``fill_outside`` replaced by the identity, as before):

1. ``--data``: PBC *test* cells (never trained on; ``--cells`` of them, a fixed random draw) as they are,
   and shifted so that 15 % / 30 % of the width (``left``), or of width and height (``corner``), lies past
   the camera edge - black, white (255) or grey (128), saved as JPEG (quality 90) and decoded again.
   Accuracy per variant, and the share of shifted cells the decoder noted.
2. ``--lab NAME=ROOT``: a laboratory's labelled cells through the product's pipeline as one sample
   (``wbc process``'s path: sample ruler, white balance, framing): accuracy of all cells and of those with
   a black border, with and without the fill.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine
from _sets import classify_as_sample, load_set

import wbcproc.imageio as imageio
from wbcproc.config import load_settings
from wbcproc.imageio import ImageRejected, decode_bytes, read_image
from wbcproc.model import load_classifier
from wbcproc.preprocess import prepare_image, to_input

VARIANTS = (
    ("left", 0.15, 0),
    ("left", 0.3, 0),
    ("corner", 0.15, 0),
    ("corner", 0.3, 0),
    ("left", 0.15, 255),
    ("corner", 0.3, 255),
    ("left", 0.15, 128),
)


def past_the_edge(bgr: np.ndarray, side: str, frac: float, value: int = 0) -> np.ndarray:
    """The square an export tool cuts when the cell lies near the camera's left (and top) edge."""
    h, w = bgr.shape[:2]
    k, kh = int(frac * w), int(frac * h) if side == "corner" else 0
    out = np.full_like(bgr, value)
    out[kh:, k:] = bgr[: h - kh, : w - k]
    return out


NOTE = "border outside the camera image"
COLOUR = {0: "black", 255: "white", 128: "grey"}


class NoFill:
    """``with NoFill():`` decodes as before the fill (the padding stays)."""

    def __enter__(self) -> None:
        self.saved = imageio.fill_outside
        imageio.fill_outside = lambda img, notes: img

    def __exit__(self, *exc: object) -> None:
        imageio.fill_outside = self.saved


def shifted_cells(pbc: str, n: int, clf) -> None:
    spec = clf.info.preprocess
    _, items = load_set(f"pbc={pbc}@test")
    random.Random(0).shuffle(items)
    right: dict[str, int] = {}
    noted: dict[str, int] = {}
    done = 0
    for it in items[:n]:
        try:
            bgr = read_image(it.path).bgr
        except ImageRejected:
            continue
        done += 1
        imgs = {"as they are": bgr}
        for side, frac, value in VARIANTS:
            padded = past_the_edge(bgr, side, frac, value)
            jpg = cv2.imencode(".jpg", padded, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            key = f"{side} {frac:.0%} {COLOUR[value]}"
            with NoFill():
                imgs[key + ", padding kept"] = decode_bytes(jpg).bgr
            dec = decode_bytes(jpg)
            imgs[key + ", filled"] = dec.bgr
            noted[key] = noted.get(key, 0) + any(NOTE in t for t in dec.notes)
        x = to_input(np.stack([prepare_image(b, spec) for b in imgs.values()]), spec)
        called = clf.probabilities(x).argmax(1)
        for key, c in zip(imgs, called, strict=True):
            right[key] = right.get(key, 0) + (clf.info.classes[int(c)] == it.label)
    print(f"PBC test cells: {done}")
    for key, r in right.items():
        base = key.split(",")[0]
        extra = f"; noted {noted[base] / done:.0%}" if key.endswith("filled") else ""
        print(f"  {key:36s} accuracy {r / done:.3f}{extra}")


def lab_cells(spec: str, clf, settings) -> None:
    name, items = load_set(spec)
    with NoFill():
        _inv, before, truth = classify_as_sample(items, clf, settings, thumbnails=False)
    _inv, after, truth = classify_as_sample(items, clf, settings, thumbnails=False)
    bordered = {c.file for c in after.cells if any(NOTE in t for t in c.notes)}
    print(f"{name}: {len(after.cells)} cells, {len(bordered)} with a border outside the camera image")
    for label, got in (("padding kept", before), ("filled", after)):
        right = {c.file: c.label == truth[c.file] for c in got.cells if c.file in truth}
        with_border = [r for f, r in right.items() if f in bordered]
        without = [r for f, r in right.items() if f not in bordered]
        print(
            f"  {label:12s} accuracy all {np.mean(list(right.values())):.3f}; with a border "
            f"{np.mean(with_border) if with_border else float('nan'):.3f}; without {np.mean(without):.3f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="PBC root (its test split is used)")
    ap.add_argument("--cells", type=int, default=400)
    ap.add_argument("--lab", action="append", default=[], metavar="NAME=ROOT")
    ap.add_argument("--model", type=Path)
    args = ap.parse_args()
    clf = load_classifier(args.model)
    print(f"model {clf.info.name} {clf.info.version}; {machine()}")
    if args.data:
        shifted_cells(args.data, args.cells, clf)
    settings = load_settings(None)
    for spec in args.lab:
        lab_cells(spec, clf, settings)


if __name__ == "__main__":
    main()
