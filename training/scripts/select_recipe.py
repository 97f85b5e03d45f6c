"""The device scripts' recipe choice (:mod:`training.selection`), run on the GPU machine between phases.

    python -m training.scripts.select_recipe generalise WORK OUT VARIANT...   # prints the chosen variant
    python -m training.scripts.select_recipe twins WORK OUT VARIANT...        # copies the chosen full run to OUT

VARIANT is ``augment:norm`` (e.g. ``basic:bn``).  Both write ``OUT/selection.json``.  Standard library only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from training.selection import select_generalise, select_twins


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("generalise", "twins"))
    ap.add_argument("work", type=Path, help="the folder holding the runs (p1-*, or full-* and unseen-*)")
    ap.add_argument("out", type=Path)
    ap.add_argument("variants", nargs="+")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.mode == "generalise":
        chosen, sel = select_generalise(args.work, args.variants)
        if chosen is not None:
            (args.out / "selection.json").write_text(json.dumps(sel, indent=2) + "\n")
        print(chosen or "none", end="")  # captured by gpu_generalise.sh
        return 0
    chosen, sel = select_twins(args.work, args.variants)
    if chosen is None:
        print("no full run finished; see runs.log")
    else:
        for p in sorted((args.work / f"full-{chosen.replace(':', '-')}").iterdir()):
            shutil.copy(p, args.out / p.name)
    (args.out / "selection.json").write_text(json.dumps(sel, indent=2) + "\n")
    print("chose", chosen)
    for v, r in sel["variants"].items():
        full, unseen = r["full"], r.get("unseen", {})
        print(v, "full val", round(full["best_val_macro_f1"], 4), "test", round(full["test_torch"]["accuracy"], 4),
              {k: round(e["accuracy"], 3) for k, e in full["eval"].items()},
              "| unseen", round(r.get("unseen_proxy_score", -1), 4),
              {k: round(e["accuracy"], 3) for k, e in unseen.get("eval", {}).items()})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
