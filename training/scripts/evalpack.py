"""Pack a labelled set for scoring on a GPU machine: every image preprocessed with a model's sidecar spec
(the same ``prepare_image`` inference runs) into one small ``.npz`` that ``training.scripts.gpu_train
--eval-cache`` reads.  Splits do not matter here: all of it is scored.

    python -m training.scripts.evalpack --model models/model.onnx --out runs/evalpack/bccd_all.npz \\
        runs/bccd-crops/train runs/bccd-crops/holdout
"""

from __future__ import annotations

import argparse

from training.cache import build_cache
from training.data import gather
from wbcproc.sidecar import read_sidecar


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model.onnx whose sidecar spec preprocesses the images")
    ap.add_argument("--out", required=True)
    ap.add_argument("roots", nargs="+")
    args = ap.parse_args()
    spec = read_sidecar(args.model, verify_sha256=False).preprocess
    path, failed = build_cache(gather(args.roots), spec, args.out)
    print(f"{path}: failed {len(failed)} {failed[:3]}")


if __name__ == "__main__":
    main()
