"""Subtype agreement of classified BCCD field crops with labels.csv (another lab, stain and camera).

    python benchmarks/bccd_subtypes.py ../shared/data/bccd --model models/model.onnx

Uses fields with exactly one labelled WBC and exactly one counted (non-edge) detection, crops it the way
`wbc process` does, classifies it, and compares with the label (BCCD has no IG/NRBC/platelet labels).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine

from training.bccd import holdout_of
from wbcproc.fields import crop_cell, locate
from wbcproc.model import load_classifier
from wbcproc.preprocess import prepare_image, to_input


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bccd", type=Path)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--holdout", type=float, default=0.4, help="the holdout fraction given to training.bccd")
    args = ap.parse_args()
    clf = load_classifier(args.model)
    spec = clf.info.preprocess
    with open(args.bccd / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    n = agree = 0
    held = held_agree = 0
    confusion: Counter = Counter()
    for row in rows:
        labels = [x.strip().strip('"').lower() for x in row["wbc_categories"].split(",") if x.strip()]
        if len(labels) != 1:
            continue
        img = cv2.imread(str(args.bccd / "JPEGImages" / row["image"]))
        if img is None:
            continue
        res = locate(img)
        counted = [d for d in res.detections if not d.edge]
        if len(counted) != 1:
            continue
        crop = crop_cell(img, counted[0], res.rbc_diameter_px)
        probs = clf.probabilities(to_input(np.stack([prepare_image(crop, spec, framed=True)]), spec))[0]
        pred = clf.info.classes[int(probs.argmax())]
        n += 1
        agree += pred == labels[0]
        if holdout_of(Path(row["image"]).stem, args.holdout):
            held += 1
            held_agree += pred == labels[0]
        confusion[(labels[0], pred)] += 1
    print(f"machine: {machine()}\nmodel: {clf.info.name} {clf.info.version}")
    print(f"single-WBC fields with one counted detection: {n}; agreement {agree / max(1, n):.3f}")
    print(
        f"  of which held out of training (training.bccd split, {args.holdout:.0%} by name hash): {held}; "
        f"agreement {held_agree / max(1, held):.3f}"
    )
    for (truth, pred), k in sorted(confusion.items()):
        print(f"  {truth:<11} -> {pred:<12} {k}")


if __name__ == "__main__":
    main()
