"""Would a sample from another laboratory get a silently wrong differential?

    python benchmarks/other_lab_samples.py --model models/model.onnx --cells 100 --samples 10 \\
        pbc-test=../shared/data/pbc@test bccd=runs/bccd-crops/holdout tight=runs/abl/tight

Each NAME=ROOT is a folder of class folders (one laboratory or one simulated look).  Random samples of
``--cells`` images (drawn with replacement between samples, not within one) are copied into a sample
folder and run through the product's own pipeline (scan -> classify -> summarise, as ``wbc process``).
For each sample: the domain distance and whether DOMAIN_SHIFT was raised, and the error of the white-cell
differential against the true labels - mean and largest absolute difference in percentage points over
the white-cell classes.  A sample passes when it is flagged or its mean error is within ``--tolerance``
(5 pp: the acceptance rule of the other-labs issue).  ``NAME=ROOT@SPLIT`` draws only from that split of
ROOT (by content hash, as training splits it): use ``@test`` for the training data's own source.
Per set it also prints the cells' accuracy, the share marked for review and the accuracy of the unmarked
ones: does the per-cell review mark still mean something there?
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine
from _sets import classify_as_sample, load_set

from wbcproc.classes import WBC_CLASSES
from wbcproc.config import load_settings
from wbcproc.model import load_classifier
from wbcproc.pipeline import summarise


def true_percent(labels: list[str]) -> dict[str, float]:
    wbc = [label for label in labels if label in WBC_CLASSES]
    return {c: 100.0 * wbc.count(c) / max(1, len(wbc)) for c in WBC_CLASSES}


def report_set(name: str, items, clf, settings, rng, *, cells: int, samples: int, tolerance: float) -> None:
    """Draw ``samples`` samples of ``cells`` of the set's cells through the pipeline and print the figures
    (DOMAIN_SHIFT count and reasons, differential errors, per-cell accuracy and review marks)."""
    rows: list[tuple[float, bool, float, float]] = []
    per_cell: list[tuple[bool, bool]] = []  # (right, marked for review)
    reasons: dict[str, int] = {}
    for _ in range(samples):
        pick = [items[int(i)] for i in rng.choice(len(items), min(cells, len(items)), replace=False)]
        inv, classified, label_of = classify_as_sample(pick, clf, settings)
        result = summarise(inv, classified, clf, settings)
        per_cell += [(c.label == label_of.get(c.file), c.review) for c in classified.cells if c.file in label_of]
        truth = true_percent([it.label for it in pick])
        got = {c: result["percent"][c] or 0.0 for c in WBC_CLASSES}
        err = [abs(got[c] - truth[c]) for c in WBC_CLASSES]
        dom = result.get("domain") or {}
        for r in dom.get("reasons", []):
            reasons[r] = reasons.get(r, 0) + 1
        rows.append((float(dom.get("distance", float("nan"))), bool(dom.get("shifted")), float(np.mean(err)), max(err)))
    flagged = sum(r[1] for r in rows)
    ok = sum(r[1] or r[2] <= tolerance for r in rows)
    why = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
    print(
        f"{name}: n={len(items)} distance median {statistics.median(r[0] for r in rows):.2f} "
        f"(threshold {(clf.info.sidecar.domain or {}).get('threshold', float('nan')):.2f}); "
        f"DOMAIN_SHIFT {flagged}/{len(rows)}{f' ({why})' if why else ''}; differential error mean "
        f"{statistics.mean(r[2] for r in rows):.2f} pp (largest class error, median "
        f"{statistics.median(r[3] for r in rows):.1f} pp); pass {ok}/{len(rows)}"
    )
    unmarked = [right for right, review in per_cell if not review]
    print(
        f"  cells: accuracy {np.mean([r for r, _ in per_cell]):.3f}; marked for review "
        f"{np.mean([m for _, m in per_cell]):.1%}; accuracy of the unmarked "
        f"{np.mean(unmarked) if unmarked else float('nan'):.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+", metavar="NAME=ROOT[@SPLIT]")
    ap.add_argument("--model", type=Path)
    ap.add_argument("--cells", type=int, default=100)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--tolerance", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    clf = load_classifier(args.model)
    settings = load_settings(None)
    rng = np.random.default_rng(args.seed)
    print(f"model {clf.info.name} {clf.info.version}; {args.samples} samples of {args.cells} cells; {machine()}")
    for spec in args.sets:
        name, items = load_set(spec)
        report_set(name, items, clf, settings, rng, cells=args.cells, samples=args.samples, tolerance=args.tolerance)


if __name__ == "__main__":
    main()
