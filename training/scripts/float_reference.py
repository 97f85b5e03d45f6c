"""Write ``tests/fixtures/float_reference.json``: the fixture cells' logits by the float export and by the
int8 file that ships (see :mod:`training.float_reference`).  Run after every export of a shipped model.

    python -m training.scripts.float_reference --fp32 runs/final/model.fp32.onnx --model models/model.onnx \\
        --out tests/fixtures/float_reference.json

After a change of preprocessing, without the float export: ``--refresh-int8 "WHY"`` keeps the float logits
(marked as made on the earlier inputs) and makes the int8 logits and the inputs' hash again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training.float_reference import build_reference, refresh_int8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fp32", type=Path, help="the float export of the same weights")
    ap.add_argument("--refresh-int8", metavar="WHY", help="no float export: keep the float logits, say why")
    ap.add_argument("--model", required=True, type=Path, help="the int8 model (with sidecar) that ships")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    if (args.fp32 is None) == (args.refresh_int8 is None):
        ap.error("give either --fp32 (a new reference) or --refresh-int8 WHY (the int8 half of the existing one)")
    if args.fp32 is not None:
        ref = build_reference(args.fp32, args.model)
    else:
        ref = refresh_int8(json.loads(args.out.read_text()), args.model, args.refresh_int8)
    args.out.write_text(json.dumps(ref, indent=1) + "\n")
    f = np.array([c["float"] for c in ref["cells"].values()])
    q = np.array([c["int8"] for c in ref["cells"].values()])
    print(
        f"{args.out}: {len(f)} cells; int8 vs float: {(f.argmax(1) != q.argmax(1)).sum()} class changes, "
        f"max |logit diff| {np.abs(f - q).max():.3f}"
    )


if __name__ == "__main__":
    main()
