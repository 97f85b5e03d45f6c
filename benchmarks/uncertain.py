"""How low-confidence cells should count in the preliminary differential.

    python benchmarks/uncertain.py --data ../shared/data/pbc --split test --patients 2000 --sizes 100 200

Two policies a digital-morphology system can take with the cells it is unsure of:
- **count and mark** (wbc's choice): every cell counts with the model's class; cells below the review
  threshold are marked REVIEW, and the final report cannot be signed until each has a verified class;
- **set aside** (CellaVision's *unidentified* bin): marked cells are shown but not counted until verified.

Every cell of the split (PBC test: never trained on) is classified once through the product's pipeline;
synthetic patients (the normal adult mix of ``benchmarks/flags.py`` plus each abnormality) are drawn from
the cells by their true class.  Printed: the share of cells marked, the accuracy of marked and unmarked
cells, the accuracy of marked cells by true class, and the mean absolute error of the preliminary
percentages (vs the drawn truth) under each policy, overall and per class.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine
from _sets import classify_as_sample, load_set
from flags import SEVERITIES, profile

from wbcproc.classes import WBC_CLASSES
from wbcproc.config import load_settings
from wbcproc.model import load_classifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(machine())
    settings = load_settings()
    clf = load_classifier(args.model, settings.threads)
    _, items = load_set(f"pbc={args.data}@{args.split}")
    _, got, labels = classify_as_sample(items, clf, settings, thumbnails=False)
    pools: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    for cell in got.cells:
        pools[labels[cell.file]].append((cell.label, cell.review))
    cells = [(t, c, r) for t, v in pools.items() for c, r in v]
    marked = [x for x in cells if x[2]]
    print(
        f"model {clf.info.name} {clf.info.version}, review threshold {clf.info.review_threshold:.3f}: {len(cells)} cells"
    )
    print(
        f"marked for review {len(marked)} ({100 * len(marked) / len(cells):.1f} %); accuracy of marked "
        f"{np.mean([t == c for t, c, _ in marked]):.3f}, of unmarked {np.mean([t == c for t, c, r in cells if not r]):.3f}"
    )
    by = {k: [x for x in marked if x[0] == k] for k in pools}
    print(
        "share marked by true class: "
        + ", ".join(f"{k} {len(by[k]) / len(pools[k]):.3f}" for k in sorted(pools) if pools[k])
    )
    rng = np.random.default_rng(args.seed)
    targets = [None] * args.patients + [(c, v) for c, d, vals in SEVERITIES if c in WBC_CLASSES for v in vals] * 20
    for n in args.sizes:
        err = {"count and mark": defaultdict(list), "set aside": defaultdict(list)}
        for target in targets:
            pct = profile(rng, target)
            counts = rng.multinomial(n, [pct[c] / 100 for c in WBC_CLASSES])
            drawn = []
            for c, k in zip(WBC_CLASSES, counts, strict=True):
                drawn += [pools[c][i] for i in rng.integers(0, len(pools[c]), k)]
            true_pct = {c: 100 * k / n for c, k in zip(WBC_CLASSES, counts, strict=True)}
            for policy, kept in (("count and mark", drawn), ("set aside", [x for x in drawn if not x[1]])):
                wbc = [c for c, _ in kept if c in WBC_CLASSES]
                for c in WBC_CLASSES:
                    got_pct = 100 * wbc.count(c) / max(len(wbc), 1)
                    err[policy][c].append(abs(got_pct - true_pct[c]))
        print(f"\n{n} WBC per sample, {len(targets)} patients: mean absolute error of the percentages (pp)")
        print("| policy | all | " + " | ".join(WBC_CLASSES) + " |")
        print("|---|---|" + "---|" * len(WBC_CLASSES))
        for policy, e in err.items():
            allv = np.mean([v for c in WBC_CLASSES for v in e[c]])
            print(f"| {policy} | {allv:.2f} | " + " | ".join(f"{np.mean(e[c]):.2f}" for c in WBC_CLASSES) + " |")


if __name__ == "__main__":
    main()
