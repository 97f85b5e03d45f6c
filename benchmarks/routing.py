"""A laboratory's adapted model, routed with its parent: its slides and the original laboratory's, slide by slide.

    python benchmarks/routing.py --lab ../shared/data/lisc --n 45 --pbc ../shared/data/pbc [--halves A B]

The laboratory's cells are split in two halves by content hash (as ``adapt_curve.py``).  ``n`` cells of one
half (spread over the classes, seeded) are the reviewed cells given to ``wbc adapt`` (nothing held out
inside); the other half is then classified through the product's pipeline as samples of ``--sample-cells``
cells, and so is the PBC test split (cells no model here trained on) in samples of ``--pbc-cells``: each
sample is routed as ``wbc process`` routes a slide.  Printed: accuracy on each, the share of samples read by
the laboratory's model, the adapted model's original-laboratory check and the seconds ``wbc adapt`` took.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine
from _sets import classify_as_sample, load_set
from adapt_curve import copy_as_lab, halves, pick

from training.adapt import adapt
from training.data import gather
from wbcproc.config import load_settings
from wbcproc.model import Classifier, load_classifier
from wbcproc.resolve import resolve_model_path


def score(items, classifier: Classifier, size: int, seed: int) -> dict:
    """Accuracy over ``items`` classified as samples of ``size`` cells, and the share read by the lab model."""
    settings = load_settings(None)
    order = np.random.default_rng(seed).permutation(len(items))
    right = total = to_lab = samples = 0
    for i in range(0, len(order), size):
        chunk = [items[k] for k in order[i : i + size]]
        _inv, got, labels = classify_as_sample(chunk, classifier, settings, thumbnails=False)
        right += sum(c.label == labels[c.file] for c in got.cells)
        total += len(got.cells)
        to_lab += got.routing is not None and got.routing["model"] == "laboratory"
        samples += 1
    return {"accuracy": round(right / total, 4), "cells": total, "samples": samples, "read_by_lab_model": to_lab}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lab", required=True, type=Path, help="class folders of the new laboratory")
    ap.add_argument("--pbc", required=True, type=Path, help="the original laboratory's data (its test split is used)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=None, help="reviewed cells (default: all of a half)")
    ap.add_argument("--sample-cells", type=int, default=30)
    ap.add_argument("--pbc-cells", type=int, default=100)
    ap.add_argument("--halves", nargs="+", choices=("A", "B"), default=["A"], help="the half (or halves) reviewed")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(machine())
    model = resolve_model_path(args.model)
    parts = halves(args.lab)
    pbc_test = load_set(f"pbc={args.pbc}@test")[1]
    print(f"{args.lab}: halves of {len(parts[0])} and {len(parts[1])} cells; PBC test {len(pbc_test)} cells; {model}")
    print(f"parent, PBC test: {score(pbc_test, load_classifier(model), args.pbc_cells, args.seed)}", flush=True)
    for h in ("AB".index(x) for x in args.halves):
        with tempfile.TemporaryDirectory() as tmp:
            test = gather([str(copy_as_lab(parts[1 - h], Path(tmp) / "test"))]).items
            print(f"half {'AB'[h]} reviewed; parent on the other half: "
                  f"{score(test, load_classifier(model), args.sample_cells, args.seed)}", flush=True)  # fmt: skip
            lab = copy_as_lab(pick(parts[h], args.n, np.random.default_rng(args.seed)), Path(tmp) / "lab")
            t0 = time.time()
            res = adapt([lab], Path(tmp) / "run", model, min_per_class=1, holdout=0.0, log=lambda *_: None)
            secs = time.time() - t0
            m = res["metrics"]
            adapted = load_classifier(Path(tmp) / "run" / "model.onnx")
            print(
                f"adapted in {secs:.0f} s, routed {res['routed']} ({m['routing']}), original check "
                f"{m['original_check']['parent']['accuracy']} -> {m['original_check']['adapted']['accuracy']}\n"
                f"  other half: {score(test, adapted, args.sample_cells, args.seed)}\n"
                f"  PBC test:   {score(pbc_test, adapted, args.pbc_cells, args.seed)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
