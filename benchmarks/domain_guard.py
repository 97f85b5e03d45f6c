"""How often does the domain guard raise DOMAIN_SHIFT, by sample size: in-domain (false alarms) and on
other-laboratory sets (detections)?  Both halves of the guard - colour/framing statistics and model
uncertainty - and the two together, as the report applies them.

    python benchmarks/domain_guard.py --model models/model.onnx pbc-test=../shared/data/pbc@test \\
        camera=runs/abl/othercam tight=runs/abl/tight bccd=runs/bccd-crops/holdout

Each set's images are classified once through the product's pipeline (in sample folders of ``--chunk``
images, so the sample ruler works as in ``wbc process``); then ``--draws`` random samples of each size
are drawn from its cells (without replacement within a sample) and judged with ``wbcproc.domain.assess``
exactly as a report would be.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine
from _sets import classify_as_sample, load_set

from wbcproc.config import load_settings
from wbcproc.domain import assess
from wbcproc.model import load_classifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+", metavar="NAME=ROOT[@SPLIT]")
    ap.add_argument("--model", type=Path)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20, 30, 100])
    ap.add_argument("--draws", type=int, default=4000)
    ap.add_argument("--chunk", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    clf = load_classifier(args.model)
    settings = load_settings(None)
    ref = clf.info.sidecar.domain
    if ref is None:
        raise SystemExit("this model's sidecar has no domain reference")
    print(f"model {clf.info.name} {clf.info.version}; {args.draws} draws per size; {machine()}")
    print(
        f"colour threshold {ref['threshold']:.3f}; uncertainty thresholds {ref.get('uncertainty', {}).get('thresholds')}"
    )
    rng = np.random.default_rng(args.seed)
    for spec in args.sets:
        name, items = load_set(spec)
        feats: list[np.ndarray] = []
        unc: list[float] = []
        for start in range(0, len(items), args.chunk):
            _, got, _ = classify_as_sample(items[start : start + args.chunk], clf, settings, thumbnails=False)
            feats += got.domain_features
            unc += [1.0 - c.confidence for c in got.cells]
        f, u = np.array(feats), np.array(unc)
        parts = []
        for n in args.sizes:
            if n > len(u):
                continue
            colour = uncertain = either = 0
            for _ in range(args.draws):
                idx = rng.choice(len(u), n, replace=False)
                r = assess(f[idx], ref, u[idx])
                colour += "colour/framing" in r["reasons"]
                uncertain += "model uncertainty" in r["reasons"]
                either += r["shifted"]
            parts.append(
                f"n={n}: colour {colour / args.draws:.1%}, uncertainty {uncertain / args.draws:.1%}, "
                f"flagged {either / args.draws:.1%}"
            )
        print(f"{name} ({len(u)} cells, mean uncertainty {u.mean():.4f}): " + "; ".join(parts))


if __name__ == "__main__":
    main()
