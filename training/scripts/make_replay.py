"""Write ``<model>.replay.npz`` beside a model from its training cache: the replay sample and the
original-laboratory check of ``wbc adapt`` (see :func:`training.adapt.make_replay`).

    python -m training.scripts.make_replay --model models/model.onnx --cache runs/pack/cache-128.npz
"""

from __future__ import annotations

import argparse

from training.adapt import make_replay
from wbcproc.sidecar import ModelError


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument(
        "--exclude", default=None, help="leave out cache files whose path contains this (a twin's left-out source)"
    )
    args = ap.parse_args()
    try:
        print(make_replay(args.model, args.cache, exclude=args.exclude))
    except ModelError as exc:
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    main()
