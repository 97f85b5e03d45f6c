"""Cut BCCD's labelled white cells into class folders ``OUT/train`` and ``OUT/holdout`` (see :mod:`training.bccd`).

python -m training.scripts.bccd_crops ../shared/data/bccd runs/bccd-crops [--holdout 0.4]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.bccd import export_crops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bccd", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--holdout", type=float, default=0.4)
    a = ap.parse_args()
    print(json.dumps(export_crops(a.bccd, a.out, a.holdout)))


if __name__ == "__main__":
    main()
