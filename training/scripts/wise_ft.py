"""Score the straight line between a model and its robustness fine-tune, keep the mixing weight that the
training laboratory's validation cells allow (``training.wise``), and write it as shards that
``wbc train --cache CACHE --from-shards OUT --out RUN`` turns into a complete model (calibration, int8,
sidecar, card) like any GPU run's.

    # 1. the fine-tune (a GPU, or this CPU: 3 epochs of the 9,032 training cells in ~17 min on 2 cores)
    python -m training.scripts.gpu_train --cache runs/pack/cache-128.npz --out runs/mixed-ft \\
        --init runs/gpu/basic-full --init-head --augment mixed --epochs 3 --lr 3e-4 --warmup-epochs 0.2 \\
        --batch-size 64 --patience 100
    # 2. the line between them
    python -m training.scripts.wise_ft --parent runs/gpu/basic-full --child runs/mixed-ft \\
        --cache runs/pack/cache-128.npz --eval-cache lisc=runs/evalpack/lisc.npz --out runs/wise

``--eval-cache`` sets (other laboratories, stand-ins) and the test split are *reported*, never used to choose.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from training.dataset import load_cache, named_cache
from training.loop import pick_device, score
from training.model import build_model
from training.shards import load_shards, save_shards
from training.wise import Scored, choose_alpha, interpolate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parent", required=True, help="shard folder of the model fine-tuned from")
    ap.add_argument("--child", required=True, help="shard folder of the fine-tune")
    ap.add_argument("--cache", required=True, help="the packed training cache (its val split chooses)")
    ap.add_argument("--alphas", default="0.25,0.35,0.5,0.75,1", help="mixing weights to try (0 is the parent)")
    ap.add_argument("--tolerance", type=float, default=0.0, help="validation macro-F1 the choice may lose")
    ap.add_argument(
        "--eval-cache", action="append", default=[], metavar="NAME=PATH", help="also report a packed set (repeatable)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    t0 = time.time()
    alphas = sorted({float(a) for a in args.alphas.split(",")})
    parent, child = load_shards(args.parent), load_shards(args.child)
    data = load_cache(args.cache)
    sets = [("val", data.subset("val")), ("test", data.subset("test"))]
    sets += [named_cache(spec) for spec in args.eval_cache]
    dev = pick_device(args.device)
    rows: dict[float, dict[str, float]] = {}
    for a in [0.0, *[a for a in alphas if a > 0]]:
        net, _ = build_model("scratch")
        net.load_state_dict(interpolate(parent, child, a))
        net = net.to(dev).eval()
        row = {}
        for name, ds in sets:
            m = score(net, ds, dev)
            row[name if name != "val" else "val_macro_f1"] = round(m["macro_f1"] if name == "val" else m["accuracy"], 4)
        rows[a] = row
        print(f"alpha {a:.2f}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
    chosen = choose_alpha(
        rows[0.0]["val_macro_f1"], [Scored(a, r["val_macro_f1"]) for a, r in rows.items()], args.tolerance
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "parent": str(args.parent),
        "child": str(args.child),
        "tolerance": args.tolerance,
        "rows": {f"{a:.2f}": r for a, r in rows.items()},
        "chosen_alpha": chosen,
        "seconds": round(time.time() - t0, 1),
    }
    (out / "wise.json").write_text(json.dumps(record, indent=2) + "\n")
    if chosen is None:
        best = max((a for a in rows if a > 0), key=lambda a: rows[a]["val_macro_f1"], default=None)
        print(
            f"no mixing weight keeps validation macro-F1 within {args.tolerance} of the parent's "
            f"{rows[0.0]['val_macro_f1']:.4f} (best: alpha {best} at "
            f"{rows[best]['val_macro_f1'] if best is not None else float('nan'):.4f}); no shards written",
            file=sys.stderr,
        )
        return 1
    save_shards(interpolate(parent, child, chosen), out)
    print(json.dumps({"chosen_alpha": chosen, **rows[chosen]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
