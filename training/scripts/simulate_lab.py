"""Write a stand-in for another laboratory from labelled cells (see :mod:`training.simulate`).

python -m training.scripts.simulate_lab --data ../shared/data/pbc --split val --kind tight --out runs/sim/tight-val
python -m training.scripts.simulate_lab --data ../shared/data/lisc --split all --kind tight --out runs/sim/lisc-tight
"""

from __future__ import annotations

import argparse

from training.simulate import KINDS, write_set


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--split", default="val", choices=("train", "val", "test", "all"))
    ap.add_argument("--kind", required=True, choices=KINDS)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    print(write_set(args.data, args.split, args.kind, args.out, args.every))


if __name__ == "__main__":
    main()
