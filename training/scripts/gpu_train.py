"""Train on a bare GPU machine from a packed cache: needs only torch, torchvision and numpy there.

How a shipped model is made, with the device tool's limits in mind (64 MiB in, 8 files of 16 MiB out);
every default here is the shipped recipe (``training.recipe.SHIPPED``: 160 epochs, patience 40, basic
augmentation, from scratch), cut short by ``--time-budget`` when the device time is short:

  here (CPU):   wbc train --data ../shared/data/pbc --out runs/pack --pack-only
                mkdir -p gpu && cp runs/pack/cache-128.npz gpu/   (~46 MB; the device carries it in)
  device (GPU): python3 -m training.scripts.gpu_train --cache gpu/cache-128.npz --out $OUT --time-budget 430
                -> $OUT/weights-00N.pt (fp16 shards < 16 MiB) + train_info.json (+ test metrics)
  here (CPU):   wbc train --cache runs/pack/cache-128.npz --from-shards <fetched dir> --out runs/final
                -> model.onnx + sidecar (temperature, review threshold, domain reference), parity check,
                   metrics.json, card.md; then `wbc models register/promote` or copy to models/

The cache is read by ``training.dataset.load_cache`` (Pillow where OpenCV is missing); training after that is
the same ``training.loop`` code ``wbc train`` runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from training.dataset import CachedSet, load_cache, named_cache
from training.loop import pick_device, score, train_model
from training.model import NORMS
from training.recipe import AUGMENTATIONS, TrainConfig, augmentation
from training.recipe import SHIPPED as R
from training.shards import save_shards


def _without(part: CachedSet, needle: str) -> CachedSet:
    return part.where(np.array([needle not in str(f) for f in part.files], dtype=bool))


def _config(ap: argparse.ArgumentParser, args: argparse.Namespace) -> TrainConfig:
    """The run's TrainConfig, or a usage error (exit 2) before any data is read."""
    try:
        return TrainConfig(
            **augmentation(args.augment),
            time_budget_s=args.time_budget,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            label_smoothing=args.label_smoothing,
            freeze_stages=args.freeze_stages,
            init=args.init,
            init_head=args.init_head,
            warmup_epochs=args.warmup_epochs,
            device=args.device,
            seed=args.seed,
            patience=args.patience,
            norm=args.norm,
        )
    except ValueError as exc:
        ap.error(str(exc))


def parser() -> argparse.ArgumentParser:
    """The script's options; their defaults are the shipped recipe's (``training.recipe.SHIPPED``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=R["epochs"])
    ap.add_argument("--batch-size", type=int, default=R["batch_size"])
    ap.add_argument("--lr", type=float, default=R["lr"])
    ap.add_argument("--weight-decay", type=float, default=R["weight_decay"])
    ap.add_argument("--label-smoothing", type=float, default=R["label_smoothing"])
    ap.add_argument("--freeze-stages", type=int, default=0)
    ap.add_argument("--init", default=R["init"], help="imagenet | scratch | PATH (a weights file or a shard folder)")
    ap.add_argument(
        "--init-head", action="store_true", help="keep --init PATH's head: a warm start of that model (training.wise)"
    )
    ap.add_argument("--warmup-epochs", type=float, default=TrainConfig.warmup_epochs)
    ap.add_argument("--patience", type=int, default=R["patience"])
    ap.add_argument("--seed", type=int, default=R["seed"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--augment", choices=AUGMENTATIONS, default=R["augment"])
    ap.add_argument("--norm", choices=NORMS, default=R["norm"], help="bn, or ibn (IBN-a: part instance norm)")
    ap.add_argument("--time-budget", type=float, default=0.0, help="seconds of training; fewer epochs if needed")
    ap.add_argument(
        "--exclude-train", default=None, help="leave training and validation images whose path contains this out"
    )
    ap.add_argument(
        "--eval-cache", action="append", default=[], metavar="NAME=PATH", help="also score a packed set (repeatable)"
    )
    ap.add_argument("--no-shards", action="store_true", help="write train_info.json only (ablation runs)")
    return ap


def main() -> None:
    ap = parser()
    args = ap.parse_args()
    cfg = _config(ap, args)
    t0 = time.time()
    data = load_cache(args.cache)
    print(f"cache: {len(data)} images at {data.spec.input_size} px, decoded in {time.time() - t0:.1f} s", flush=True)
    train, val = data.subset("train"), data.subset("val")
    if args.exclude_train:
        # out of validation too: choosing the best epoch must not see the left-out source either
        before = len(train), len(val)
        train, val = _without(train, args.exclude_train), _without(val, args.exclude_train)
        print(
            f"--exclude-train {args.exclude_train!r}: {before[0] - len(train)} training and "
            f"{before[1] - len(val)} validation images left out",
            flush=True,
        )
    model, info = train_model(train, val, cfg, log=lambda m: print(m, flush=True))
    test = data.subset("test")
    dev = pick_device(args.device)
    model = model.to(dev)
    m = score(model, test, dev)
    info["test_torch"] = {
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "per_class_f1": {c: v["f1"] for c, v in m["per_class"].items()},
    }
    info["eval"] = {}
    for spec in args.eval_cache:
        name, ev = named_cache(spec)
        em = score(model, ev, dev)
        info["eval"][name] = {"n": len(ev), "accuracy": em["accuracy"], "macro_f1": em["macro_f1"]}
        print(f"eval {name}: n={len(ev)} accuracy {em['accuracy']:.4f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu")
    paths = [] if args.no_shards else save_shards(model.state_dict(), out)
    (out / "train_info.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    print(
        json.dumps(
            {
                "shards": [p.name for p in paths],
                "test_accuracy": m["accuracy"],
                "test_macro_f1": m["macro_f1"],
                "seconds": round(time.time() - t0, 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
