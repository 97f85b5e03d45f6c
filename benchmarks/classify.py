"""Steady-state cells/s of the classify path and time per stage (decode, preprocess, inference, report).

    python benchmarks/classify.py --model models/model.onnx [--images DIR] [--n 512] [--repeats 5]
    python benchmarks/classify.py --random-resnet50 128 224   # architecture-only timing (needs [train])

Weights do not change the speed of a ResNet50, so a randomly initialised export measures the product's
throughput before a trained model exists.  Figures are medians over ``--repeats`` runs after a warm-up;
the machine is shared and noisy, so compare ratios measured in the same invocation.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine

from wbcproc.config import load_settings
from wbcproc.discovery import scan_sample
from wbcproc.model import load_classifier
from wbcproc.pipeline import classify_candidates, summarise
from wbcproc.report import write_reports
from wbcproc.sidecar import write_sidecar

REPO = Path(__file__).resolve().parents[1]


def sample_folder(src: Path, n: int, dest: Path) -> Path:
    files = sorted(
        p for p in src.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"} and not p.name.startswith(".")
    )
    if not files:
        raise SystemExit(f"no images under {src}")
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shutil.copy(files[i % len(files)], dest / f"c{i:05d}{files[i % len(files)].suffix}")
    return dest


CLASSES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "ig", "erythroblast", "platelet"]


def random_resnet50(size: int, folder: Path, int8: bool, calib_dir: Path) -> list[Path]:
    """A randomly initialised ResNet50 export (and its static-int8 version) with sidecars."""
    import numpy as np

    from training.dataset import CachedSet
    from training.export import export_onnx, quantize_int8
    from training.model import build_model
    from training.run import make_spec
    from wbcproc.imageio import read_image
    from wbcproc.preprocess import prepare_image

    model, _ = build_model("scratch")
    spec = make_spec(size)
    paths = [export_onnx(model, size, folder / f"r50-{size}-fp32.onnx")]
    if int8:
        files = sorted(calib_dir.iterdir())[:64]
        imgs = np.stack([prepare_image(read_image(f).bgr, spec) for f in files])
        n = len(imgs)
        calib = CachedSet(imgs, np.zeros(n, int), np.array(["train"] * n), np.array([""] * n), np.array([""] * n), spec)
        paths.append(quantize_int8(paths[0], calib, folder / f"r50-{size}-int8.onnx", n_calib=64))
    for p in paths:
        write_sidecar(
            p,
            {
                "name": p.stem,
                "version": "bench",
                "classes": CLASSES,
                "input": {"name": "input"},
                "preprocess": spec.to_dict(),
                "parity": {"passed": True},
            },
        )
    return paths


def bench(model: Path, folder: Path, repeats: int, threads: int, batch: int) -> dict:
    settings = load_settings(None)
    from dataclasses import replace

    settings = replace(settings, threads=threads, batch_size=batch)
    clf = load_classifier(model, settings.threads)
    inv = scan_sample(folder, settings)
    classify_candidates(inv.candidates[: batch * 2], clf, settings, thumbnails=False)  # warm-up
    rows = []
    out = Path(tempfile.mkdtemp())
    for _ in range(repeats):
        t0 = time.perf_counter()
        inv = scan_sample(folder, settings)
        t1 = time.perf_counter()
        classified = classify_candidates(inv.candidates, clf, settings)
        t2 = time.perf_counter()
        result = summarise(inv, classified, clf, settings)
        write_reports(result, classified.thumbnails, out)
        t3 = time.perf_counter()
        n = len(classified.cells)
        rows.append({"cells_per_s": n / (t2 - t1), "scan": t1 - t0, "report": t3 - t2, **classified.timings, "n": n})
    shutil.rmtree(out, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return med


def inference_alone(model: Path, n: int, batch: int, repeats: int, threads: int) -> float:
    """Cells/s of the ONNX Runtime session alone on ready inputs (what the pipeline feeds it), same settings."""
    import numpy as np

    clf = load_classifier(model, threads)
    size = clf.info.preprocess.input_size
    x = np.random.default_rng(0).normal(size=(n, 3, size, size)).astype(np.float32)
    clf.probabilities(x[:batch])  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            clf.probabilities(x[i : i + batch])
        runs.append(n / (time.perf_counter() - t0))
    return statistics.median(runs)


def torch_eager_baseline(batch: int, repeats: int, size: int = 224) -> float | None:
    """Images/s of PyTorch eager fp32 torchvision ResNet50 at ``size`` px on this CPU (needs the [train] extra)."""
    try:
        import torch
        import torchvision
    except ImportError:
        print("PyTorch baseline skipped: the [train] extra is not installed")
        return None
    model = torchvision.models.resnet50(weights=None, num_classes=8).eval()
    x = torch.randn(batch, 3, size, size)
    runs = []
    with torch.inference_mode():
        model(x)
        model(x)
        for _ in range(max(repeats, 7)):  # one batch is ~2 s here: more runs than the pipeline's for a stable median
            t0 = time.perf_counter()
            model(x)
            runs.append(batch / (time.perf_counter() - t0))
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--random-resnet50", type=int, nargs="*", metavar="SIZE")
    ap.add_argument("--int8", action="store_true", help="also time a static-int8 version of each random model")
    ap.add_argument("--images", type=Path, default=REPO / "tests" / "fixtures" / "cells")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--baselines",
        action="store_true",
        help="also time each model's inference alone on prepared inputs, and PyTorch eager fp32 ResNet50 at each "
        "model's own input size and at 224 px (the naive baseline)",
    )
    args = ap.parse_args()
    from wbcproc.int8 import int8_kernel

    print(f"machine: {machine()}; int8 path: {int8_kernel().description}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = sample_folder(args.images, args.n, tmp / "bench-sample")
        models: list[Path] = []
        if args.model:
            models.append(args.model)
        for size in args.random_resnet50 or []:
            models += random_resnet50(size, tmp, args.int8, folder)
        if not models:
            raise SystemExit("give --model PATH or --random-resnet50 SIZE...")
        eager: dict[int, float | None] = {}
        if args.baselines:
            from wbcproc.sidecar import read_sidecar

            input_size = {m: read_sidecar(m).preprocess.input_size for m in models}
            for size in sorted({224, *input_size.values()}):
                eager[size] = torch_eager_baseline(args.batch, args.repeats, size)
                if eager[size]:
                    print(f"PyTorch eager fp32 ResNet50 {size} px, batch {args.batch}: {eager[size]:.1f} images/s")
        print(
            f"{args.n} cells per run, median of {args.repeats} runs, batch {args.batch}, threads {args.threads or 'all'}"
        )
        print(
            f"{'model':<34} {'cells/s':>8} {'scale s':>8} {'decode s':>9} {'prep s':>7} {'infer s':>8} {'report s':>9}"
        )
        for m in models:
            r = bench(m, folder, args.repeats, args.threads, args.batch)
            print(
                f"{m.name:<34} {r['cells_per_s']:>8.1f} {r.get('scale', 0.0):>8.2f} {r['decode']:>9.2f} "
                f"{r['preprocess']:>7.2f} "
                f"{r['inference']:>8.2f} {r['report']:>9.2f}"
            )
            if args.baselines:
                alone = inference_alone(m, args.n, args.batch, args.repeats, args.threads)
                ratio = "".join(
                    f"; x{r['cells_per_s'] / e:.1f} PyTorch eager at {px} px"
                    for px, e in eager.items()
                    if e and px in (input_size[m], 224)
                )
                print(
                    f"    inference alone {alone:.1f} cells/s; end to end = {r['cells_per_s'] / alone:.0%} of it{ratio}"
                )


if __name__ == "__main__":
    main()
