"""Does the domain guard let an adapted laboratory's samples through - and only once it is validated?

    python benchmarks/adapted_guard.py --lab ../shared/data/lisc --holdout 0.2 0.35 --samples 30 \\
        pbc-test=../shared/data/pbc@test stand-in=DIR

The laboratory's cells are split in two halves by content hash (as ``benchmarks/adapt_curve.py``).  For each
``--holdout``: ``wbc adapt`` (``training.adapt.adapt``) on one half, with that share of it held out inside -
which decides whether the laboratory is *validated* (at least ``LAB_GUARD_MIN_CELLS`` held-out cells scored
at ``LAB_GUARD_MIN_ACCURACY`` or better) - then samples of ``--cells`` drawn from the *other* half (cells
the adapted model never saw) and from each extra NAME=ROOT[@SPLIT] set go through the product's pipeline
(``benchmarks/other_lab_samples.py``): how many carry DOMAIN_SHIFT and why, how far their white-cell
differential is from the truth, the cells' accuracy.  The parent model on the other half comes first, for
comparison.  Expected: the samples of a validated laboratory pass, an unvalidated one's keep the flag
("laboratory not validated"), the original laboratory's samples stay unflagged, and a look the model was
not adapted to stays flagged.
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
from _sets import load_set
from adapt_curve import copy_as_lab, halves
from other_lab_samples import report_set

from training.adapt import LAB_GUARD_MIN_ACCURACY, LAB_GUARD_MIN_CELLS, adapt
from wbcproc.config import load_settings
from wbcproc.model import load_classifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="*", metavar="NAME=ROOT[@SPLIT]", help="more sets to sample with each model")
    ap.add_argument("--lab", type=Path, required=True, help="class folders of the new laboratory")
    ap.add_argument("--model", type=Path, default=None, help="the parent (default: the model in use)")
    ap.add_argument("--holdout", type=float, nargs="+", default=[0.2], help="wbc adapt --holdout values to try")
    ap.add_argument("--half", type=int, choices=(0, 1), default=0, help="the half adapted on")
    ap.add_argument("--cells", type=int, default=100)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--tolerance", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    settings = load_settings(None)
    print(machine())
    print(f"validated: >= {LAB_GUARD_MIN_CELLS} held-out cells scored >= {LAB_GUARD_MIN_ACCURACY}")
    parts = halves(args.lab)
    with tempfile.TemporaryDirectory(prefix="wbc-adapted-guard-") as tmp:
        fit_root = copy_as_lab(parts[args.half], Path(tmp) / f"{args.lab.name}-half{args.half}")
        other_root = copy_as_lab(parts[1 - args.half], Path(tmp) / f"{args.lab.name}-other-half")
        sets = [load_set(f"other-half={other_root}"), *(load_set(s) for s in args.sets)]
        parent = load_classifier(args.model)
        print(f"\n== parent {parent.info.version}: halves of {len(parts[0])} and {len(parts[1])} cells ==")
        report_set(*sets[0], parent, settings, np.random.default_rng(args.seed), cells=args.cells,
                   samples=args.samples, tolerance=args.tolerance)  # fmt: skip
        for h in args.holdout:
            t0 = time.time()
            res = adapt([fit_root], Path(tmp) / f"adapted-{h}", args.model, holdout=h, log=lambda *_: None)
            m = res["metrics"]
            hold = m.get("lab_holdout", {}).get("adapted", {})
            print(
                f"\n== adapted with --holdout {h} ({time.time() - t0:.0f} s): {m['held_out_cells']} held out, "
                f"accuracy {hold.get('accuracy', float('nan')):.3f}; lab_guard {m.get('lab_guard')} =="
            )
            clf = load_classifier(Path(res["run_dir"]) / "model.onnx")
            rng = np.random.default_rng(args.seed)
            for name, items in sets:
                report_set(name, items, clf, settings, rng, cells=args.cells, samples=args.samples,
                           tolerance=args.tolerance)  # fmt: skip


if __name__ == "__main__":
    main()
