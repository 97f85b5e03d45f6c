"""WBC localisation on BCCD fields: recall and precision at IoU >= 0.3 against the VOC WBC boxes, and speed.

    python benchmarks/locate_bccd.py ../shared/data/bccd [--show-errors] [--model [PATH]]

Edge cells count as detections here (the annotations include cells cut by the border).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine

from training.bccd import wbc_boxes
from wbcproc.fields import iou, locate
from wbcproc.pipeline import locate_and_classify


def match(pred, gt, thr=0.3):
    used, tp = set(), 0
    for p in pred:
        best, bj = 0.0, -1
        for j, g in enumerate(gt):
            if j not in used and iou(p, g) > best:
                best, bj = iou(p, g), j
        if best >= thr:
            used.add(bj)
            tp += 1
    return tp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bccd", type=Path)
    ap.add_argument("--show-errors", action="store_true")
    ap.add_argument(
        "--model",
        nargs="?",
        const="default",
        help="also classify the crops and drop detections called platelets, as `wbc locate` does "
        "(no value: the model in use)",
    )
    args = ap.parse_args()
    clf = None
    if args.model:
        from wbcproc.model import load_classifier

        clf = load_classifier(None if args.model == "default" else args.model)
    tp = fp = fn = 0
    times = []
    for img_path in sorted((args.bccd / "JPEGImages").glob("*.jpg")):
        gt = wbc_boxes(args.bccd / "Annotations" / (img_path.stem + ".xml"))
        img = cv2.imread(str(img_path))
        t0 = time.perf_counter()
        if clf is None:
            res = locate(img)
            pred = [d.box for d in res.detections]
            rbc = res.rbc_diameter_px
        else:
            out = locate_and_classify(img, clf)
            pred = [tuple(c["box"]) for c in out["cells"]]
            rbc = out["rbc_diameter_px"]
        times.append(time.perf_counter() - t0)
        m = match(pred, gt)
        tp, fp, fn = tp + m, fp + len(pred) - m, fn + len(gt) - m
        if args.show_errors and (m < len(gt) or m < len(pred)):
            print(f"{img_path.name}: gt {gt} pred {pred} rbc {rbc:.0f}")
    print(f"machine: {machine()}")
    if clf is not None:
        print(f"with classifier {clf.info.name} {clf.info.version}: detections called platelets are dropped")
    print(
        f"fields {len(times)}, WBC boxes {tp + fn}: recall {tp / (tp + fn):.3f}, precision {tp / max(1, tp + fp):.3f} "
        f"(tp {tp}, fp {fp}, fn {fn}); median {1000 * statistics.median(times):.1f} ms/field"
    )


if __name__ == "__main__":
    main()
