"""Peak RSS of `wbc process` on a large folder (default 2,000 cells) with a ResNet50 export.

    python benchmarks/memory.py [--cells 2000] [--size 128] [--model M.onnx]

Memory is bounded by one batch of decoded cells plus the small thumbnails kept for the workbook, so it
should stay flat as folders grow; the target is <= 1 GiB for 2,000 cells.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, run_wbc_peak_rss

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--images", type=Path, default=REPO / "tests" / "fixtures" / "cells")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wbc-mem-"))
    model = args.model
    if model is None:
        from classify import random_resnet50

        model = random_resnet50(args.size, tmp, False, args.images)[0]
    files = sorted(args.images.rglob("*.jpg"))
    print(f"machine: {machine()}\nmodel: {model.name}")
    for n in args.cells:
        folder = tmp / f"MEM-{n}"
        folder.mkdir()
        for i in range(n):
            shutil.copy(files[i % len(files)], folder / f"c{i:05d}.jpg")
        t0 = time.perf_counter()
        code, kib, _ = run_wbc_peak_rss(["process", str(folder), "--out", str(tmp / "out"), "--model", str(model)])
        dt = time.perf_counter() - t0
        print(
            f"{n} cells: exit {code}, peak RSS {kib / 1024:.0f} MiB, "
            f"{dt:.1f} s wall ({n / dt:.1f} cells/s end to end, reports included)"
        )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
