"""How the shipped model holds up against how other laboratories acquire and export their images.

    python benchmarks/acquisition.py --data ../shared/data/pbc --cells 300

PBC *test* cells (never trained on; a fixed random draw of ``--cells``) are altered one way at a time -
padding where a crop ran past the camera image, letterboxing, a round field stop, vignetting, a scale bar,
compression, resolution, exposure and gamma, colour saturation and hue, rotation, an off-centre cell -
saved as PNG, and decoded and prepared as ``wbc process`` does (``wbcproc.imageio`` then
``wbcproc.preprocess``).  Printed per alteration: accuracy, and the share of images the decoder noted
something about (the padding fill).  What remains after the product's own corrections is what the
network itself is sensitive to: colour above all, which is what another laboratory's stain changes.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine
from _sets import load_set
from black_border import past_the_edge

from wbcproc.imageio import ImageRejected, decode_bytes, read_image
from wbcproc.model import load_classifier
from wbcproc.preprocess import prepare_image, to_input


def _radius(b: np.ndarray) -> np.ndarray:
    h, w = b.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    return np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2)) / np.sqrt(2)


def _vignette(b: np.ndarray, k: float) -> np.ndarray:
    return np.clip(b * (1 - k * _radius(b)[..., None] ** 2), 0, 255).astype(np.uint8)


def _field_stop(b: np.ndarray) -> np.ndarray:
    return (b * (_radius(b) * np.sqrt(2) <= 1.2)[..., None]).astype(np.uint8)


def _letterbox(b: np.ndarray) -> np.ndarray:
    h = b.shape[0]
    out = np.zeros_like(b)
    out[h // 6 : h - h // 6] = b[h // 6 : h - h // 6]
    return out


def _scale_bar(b: np.ndarray) -> np.ndarray:
    out = b.copy()
    h, w = out.shape[:2]
    out[h - 12 : h - 6, w - 70 : w - 10] = 0
    cv2.putText(out, "10um", (w - 70, h - 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    return out


def _hsv(b: np.ndarray, hue: int = 0, sat: float = 1.0) -> np.ndarray:
    hsv = cv2.cvtColor(b, cv2.COLOR_BGR2HSV).astype(np.int32)
    hsv[..., 0] = (hsv[..., 0] + hue) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)


def _off_centre(b: np.ndarray, f: float) -> np.ndarray:
    h, w = b.shape[:2]
    big = cv2.copyMakeBorder(b, h, h, w, w, cv2.BORDER_REFLECT_101)
    return big[h : 2 * h, w + int(f * w) : 2 * w + int(f * w)]


ALTERATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "as they are": lambda b: b,
    "black padding, 15 % of the width": lambda b: past_the_edge(b, "left", 0.15, 0),
    "black padding, 30 % corner": lambda b: past_the_edge(b, "corner", 0.3, 0),
    "white padding, 15 %": lambda b: past_the_edge(b, "left", 0.15, 255),
    "grey padding, 15 %": lambda b: past_the_edge(b, "left", 0.15, 128),
    "letterboxed (black)": _letterbox,
    "round field stop (black corners)": _field_stop,
    "vignetting, corners x0.6": lambda b: _vignette(b, 0.4),
    "vignetting, corners x0.3": lambda b: _vignette(b, 0.7),
    "scale bar and text": _scale_bar,
    "JPEG quality 30": lambda b: cv2.imdecode(cv2.imencode(".jpg", b, [cv2.IMWRITE_JPEG_QUALITY, 30])[1], 1),
    "64 px, scaled back up": lambda b: cv2.resize(
        cv2.resize(b, (64, 64), interpolation=cv2.INTER_AREA), b.shape[1::-1]
    ),
    "100 px image": lambda b: cv2.resize(b, (100, 100), interpolation=cv2.INTER_AREA),
    "2x larger image": lambda b: cv2.resize(b, None, fx=2, fy=2),
    "exposure x0.6": lambda b: (b * 0.6).astype(np.uint8),
    "gamma 0.7": lambda b: np.clip(255 * (b / 255.0) ** 0.7, 0, 255).astype(np.uint8),
    "gamma 1.4": lambda b: np.clip(255 * (b / 255.0) ** 1.4, 0, 255).astype(np.uint8),
    "Gaussian blur 5 px": lambda b: cv2.GaussianBlur(b, (5, 5), 0),
    "saturation x0.7": lambda b: _hsv(b, sat=0.7),
    "saturation x1.4": lambda b: _hsv(b, sat=1.4),
    "hue +8 (of 180)": lambda b: _hsv(b, hue=8),
    "hue -8": lambda b: _hsv(b, hue=172),
    "rotated 90 degrees": lambda b: np.ascontiguousarray(np.rot90(b)),
    "cell 25 % off centre": lambda b: _off_centre(b, 0.25),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="PBC root (its test split is used)")
    ap.add_argument("--cells", type=int, default=300)
    ap.add_argument("--model", type=Path)
    args = ap.parse_args()
    clf = load_classifier(args.model)
    spec = clf.info.preprocess
    print(f"model {clf.info.name} {clf.info.version}; {machine()}")
    _, items = load_set(f"pbc={args.data}@test")
    random.Random(0).shuffle(items)
    right = dict.fromkeys(ALTERATIONS, 0)
    noted = dict.fromkeys(ALTERATIONS, 0)
    n = 0
    for it in items[: args.cells]:
        try:
            bgr = read_image(it.path).bgr
        except ImageRejected:
            continue
        n += 1
        prepared = []
        for name, alter in ALTERATIONS.items():
            decoded = decode_bytes(cv2.imencode(".png", alter(bgr))[1].tobytes())
            noted[name] += bool(decoded.notes)
            prepared.append(prepare_image(decoded.bgr, spec))
        called = clf.probabilities(to_input(np.stack(prepared), spec)).argmax(1)
        for name, c in zip(ALTERATIONS, called, strict=True):
            right[name] += clf.info.classes[int(c)] == it.label
    print(f"PBC test cells: {n}\n\n| alteration | accuracy | noted by the decoder |\n|---|---|---|")
    for name in ALTERATIONS:
        print(f"| {name} | {right[name] / n:.3f} | {noted[name] / n:.0%} |")


if __name__ == "__main__":
    main()
