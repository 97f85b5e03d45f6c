"""Which band neutrophils do models call IG, and do different models agree (docs/flags.md)?

    python benchmarks/band_leak.py --model 1.2.0=runs/gpu/basic-full@runs/pack/cache-128.npz \
        --model stain=runs/gpu/stain-full@runs/pack/cache-128.npz \
        --model ft192=runs/ft192@runs/pack192/cache-192.npz

Each ``NAME=WEIGHTS@CACHE`` is a float model (a shard folder or ``.pt`` with its 8-class head) and the
packed training cache at its input size (``wbc train --pack-only``; caches packed from the same data hold
the same cells in the same order).  PBC's file names give the neutrophil and IG sub-types (``BNE_`` band,
``SNE_`` segmented; IG: ``MMY_``, ``MY_``, ``PMY_``, ``IG_``).  Printed for the validation + test cells (never
trained on): per model, the band cells called IG and the IG cells called neutrophil; how many models call
each leaked band cell IG; and the same counts for the models' averaged probabilities.  The left-shift false
positives of ``benchmarks/flags.py`` come from these band cells: if independently trained models leak the
same cells, the leak is in the data's band / metamyelocyte grey zone rather than in one model.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine


def main(argv: list[str] | None = None) -> None:
    import torch

    from training.dataset import load_cache
    from training.loop import predict_logits
    from training.model import build_model
    from wbcproc.classes import CLASSES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="NAME=WEIGHTS@CACHE (repeatable)")
    args = ap.parse_args(argv)
    ig, ne = CLASSES.index("ig"), CLASSES.index("neutrophil")
    caches, probs, ref = {}, {}, None
    for spec in args.model:
        name, _, rest = spec.partition("=")
        weights, _, cache = rest.partition("@")
        if not (name and weights and cache):
            raise SystemExit(f"--model {spec!r}: expected NAME=WEIGHTS@CACHE")
        if cache not in caches:
            caches[cache] = load_cache(cache)
        data = caches[cache]
        data = data.where(np.isin(data.splits, ["val", "test"]))
        if ref is None:
            ref = data
        elif not np.array_equal(ref.sha256, data.sha256):
            raise SystemExit(f"{cache}: not the same cells in the same order as the first model's cache")
        model, _ = build_model(weights, keep_head=True)
        logits = predict_logits(model, data, torch.device("cpu"))
        probs[name] = torch.softmax(torch.from_numpy(logits), 1).numpy()
    assert ref is not None
    prefix = np.array([str(f).rsplit("/", 1)[-1].split("_")[0] for f in ref.files])
    band, is_ig = prefix == "BNE", ref.labels == ig
    print(f"# band -> IG by model ({machine()}); PBC validation + test: {band.sum()} band, {is_ig.sum()} IG cells")
    leaked: dict[str, set[int]] = {}
    for name, p in probs.items():
        pred = p.argmax(1)
        leaked[name] = set(np.flatnonzero(band & (pred == ig)).tolist())
        print(
            f"{name}: band -> IG {len(leaked[name])}/{band.sum()}, IG recall {(pred[is_ig] == ig).mean():.3f}, "
            f"IG -> neutrophil {int((is_ig & (pred == ne)).sum())}; cells: "
            + ", ".join(ref.files[i].rsplit("/", 1)[-1] for i in sorted(leaked[name]))
        )
    votes = Counter(i for cells in leaked.values() for i in cells)
    k = len(probs)
    print(
        "cells called IG by n of the models: "
        + ", ".join(f"{n}: {sum(v == n for v in votes.values())}" for n in range(1, k + 1))
    )
    names = list(probs)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            print(f"shared by {names[a]} and {names[b]}: {len(leaked[names[a]] & leaked[names[b]])}")
    if k > 1:
        pred = np.mean(list(probs.values()), 0).argmax(1)
        print(
            f"averaged probabilities: band -> IG {int((band & (pred == ig)).sum())}/{band.sum()}, "
            f"IG recall {(pred[is_ig] == ig).mean():.3f}, accuracy {(pred == ref.labels).mean():.4f}"
        )


if __name__ == "__main__":
    main()
