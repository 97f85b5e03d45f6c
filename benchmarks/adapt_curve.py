"""Accuracy on a new laboratory's held-out cells against the number of its cells reviewed (``wbc adapt``).

    python benchmarks/adapt_curve.py --lab ../shared/data/lisc --model models/model.onnx --sizes 0 25 50 100 all
    python benchmarks/adapt_curve.py --lab ../shared/data/lisc --sizes 25 50 --choose suggested --seed 1

The laboratory's cells are split in two halves by content hash.  For each half in turn, ``n`` cells of
it (stratified by class, seeded) are the "reviewed" cells given to ``training.adapt.adapt`` (nothing held
out inside: the other half is the test); the adapted model is then scored on the other half through the
product's pipeline (``wbc evaluate``'s code).  Printed per size: accuracy and macro-F1 on the other half
(mean of the two directions), seconds taken, and the original-laboratory check (accuracy on the replay
check cells before -> after).  ``0`` is the model as shipped.  Where ``adapt`` refuses (a guard rail: more
than 1 point lost on the original laboratory's check cells), the parent model is scored for that half, as
the laboratory would keep it, and the refusal is printed.  A laboratory root marked FRAMED (field crops)
stays so in both halves.  A model trained without a laboratory (a twin) needs its own replay file:
``python -m training.scripts.make_replay --model TWIN --cache CACHE --exclude SOURCE``.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine

import training.adapt as adapt_module
from training.adapt import AdaptError, adapt
from training.evaluate import evaluate_model
from wbcproc.resolve import resolve_model_path
from wbcproc.reviewed import FRAMED_MARKER, mark_framed


def halves(lab: Path) -> list[list[Path]]:
    out: list[list[Path]] = [[], []]
    for f in sorted(p for p in lab.glob("*/*") if p.is_file()):
        out[int(hashlib.sha256(f.read_bytes()).hexdigest()[:8], 16) % 2].append(f)
    return out


def pick(files: list[Path], n: int | None, rng: np.random.Generator) -> list[Path]:
    """``n`` files spread over the classes as evenly as the classes allow (all when ``n`` is None)."""
    if n is None or n >= len(files):
        return files
    by: dict[str, list[Path]] = {}
    for f in files:
        by.setdefault(f.parent.name, []).append(f)
    for v in by.values():
        rng.shuffle(v)
    chosen: list[Path] = []
    while len(chosen) < n:
        for v in by.values():
            if v and len(chosen) < n:
                chosen.append(v.pop())
    return chosen


def choose(how: str, files: list[Path], n: int | None, model: Path, seed: int) -> list[Path]:
    """The cells of a half that the laboratory reviews (their class folder stands for the reviewer's class)."""
    rng = np.random.default_rng(seed)
    if n is None or n >= len(files):
        return files
    if how == "stratified":
        return pick(files, n, rng)
    if how == "uniform":
        return [files[i] for i in rng.choice(len(files), n, replace=False)]
    from training.suggest import suggest

    framed = (files[0].parent.parent / FRAMED_MARKER).exists()
    return [s.path for s in suggest(files, model, n, seed=seed, framed=framed)]


def copy_as_lab(files: list[Path], root: Path) -> Path:
    """The files as class folders under ``root``, marked FRAMED when they are field crops (as in the lab)."""
    for f in files:
        (root / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / f.parent.name / f.name)
    if files and (files[0].parent.parent / FRAMED_MARKER).exists():
        mark_framed(root)
    return root


def pseudo_note(record: dict) -> str:
    """How many unreviewed cells were taken, how many with their true class (the benchmark knows it from the
    folder; adapt never reads it), and whether the draft with them was kept."""
    cells = record.get("cells", [])
    right = sum(Path(c["file"]).parent.name == c["class"] for c in cells)
    return f"{len(cells)} of {record.get('candidates', 0)} taken, {right} right; kept: {record.get('kept')} ({record.get('why')})"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lab", required=True, type=Path, help="class folders of the new laboratory")
    ap.add_argument("--model", default=None)
    ap.add_argument("--sizes", nargs="+", default=["0", "25", "50", "100", "all"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--head-only", action="store_true", help="refit the head alone (wbc adapt --head-only)")
    ap.add_argument(
        "--choose",
        choices=("stratified", "uniform", "suggested"),
        default="stratified",
        help="which cells are reviewed: random, spread over the true classes (a laboratory cannot do this before "
        "reviewing); random; or training.suggest's pick from the unlabelled half",
    )
    ap.add_argument(
        "--unreviewed",
        action="store_true",
        help="the rest of the reviewed half joins as unreviewed cells (wbc adapt --samples): pseudo-labelled by a "
        "first draft, used where that does not lose; prints how many were taken, how many of them right, kept or not",
    )
    ap.add_argument(
        "--frozen-blocks",
        type=int,
        default=None,
        help="the last stage's first blocks kept as the parent's (training.adapt_stage.FROZEN_BLOCKS)",
    )
    ap.add_argument(
        "--augmented-views",
        type=int,
        default=None,
        help="augmented copies of few reviewed cells up to about this many views (training.adapt.AUGMENTED_VIEWS; "
        "0: none, the cells' 8 rotations/flips only)",
    )
    return ap


def _half(args, parts: list[list[Path]], h: int, n: int | None, model: Path) -> dict:
    """Adapt on ``n`` cells of half ``h`` and score the other half; what the row shows of it."""
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        test = copy_as_lab(parts[1 - h], Path(tmp) / "test")
        if n == 0:
            return {"m": evaluate_model(model, [str(test)])}
        chosen = choose(args.choose, parts[h], n, model, args.seed)
        lab = copy_as_lab(chosen, Path(tmp) / "lab")
        rest = [f for f in parts[h] if f not in set(chosen)] if args.unreviewed else None
        t0 = time.time()
        try:
            res = adapt(
                [lab], Path(tmp) / "run", model, min_per_class=1, holdout=0.0,
                stage=not args.head_only, unreviewed=rest, log=lambda *_: None,
            )  # fmt: skip
        except AdaptError as exc:  # a guard rail held: the laboratory keeps the parent model
            out["refused"] = f"{'AB'[h]}: {exc}"
            out["m"] = evaluate_model(model, [str(test)])
            return out
        out["seconds"] = time.time() - t0
        out["kept"] = res["metrics"].get("stage_learning_rate")
        chk = res["metrics"].get("original_check")
        if chk:
            out["check"] = (chk["parent"]["accuracy"], chk["adapted"]["accuracy"])
        out["m"] = evaluate_model(Path(tmp) / "run" / "model.onnx", [str(test)])
        if args.unreviewed:
            out["note"] = f"{'AB'[h]}: {pseudo_note(res['metrics'].get('unreviewed', {}))}"
    return out


def main() -> None:
    args = _parser().parse_args()
    if args.frozen_blocks is not None:
        import training.adapt_stage

        training.adapt_stage.FROZEN_BLOCKS = args.frozen_blocks
    if args.augmented_views is not None:
        adapt_module.AUGMENTED_VIEWS = args.augmented_views
    print(machine())
    model = resolve_model_path(args.model)
    parts = halves(args.lab)
    how = "head alone" if args.head_only else "last stage + head"
    print(
        f"{args.lab}: halves of {len(parts[0])} and {len(parts[1])} cells; model {model}; adapted: {how}; "
        f"reviewed cells chosen: {args.choose}, seed {args.seed}"
        + ("" if args.frozen_blocks is None else f"; stage blocks kept as the parent's: {args.frozen_blocks}")
        + f"; augmented copies of few cells up to {adapt_module.AUGMENTED_VIEWS} views"
    )
    print(
        "| reviewed cells | accuracy on the other half | macro-F1 | seconds (adapt) | original check before -> after "
        "| kept (per half: stage learning rate, or head alone) |"
    )
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        n = None if size == "all" else int(size)
        rows = [_half(args, parts, h, n, model) for h in (0, 1)]
        accs = [r["m"]["accuracy"] for r in rows]
        secs = [r["seconds"] for r in rows if "seconds" in r]
        checks = [r["check"] for r in rows if "check" in r]
        kept = [r["kept"] for r in rows if "seconds" in r]
        shown = "all" if n is None else n
        sec = f"{np.mean(secs):.1f}" if secs else "-"
        chk = f"{np.mean([c[0] for c in checks]):.3f} -> {np.mean([c[1] for c in checks]):.3f}" if checks else "-"
        how = " / ".join("head" if k is None else f"stage {k:g}" for k in kept) if kept else "-"
        f1 = np.mean([r["m"]["macro_f1"] for r in rows])
        print(
            f"| {shown} | {np.mean(accs):.3f} ({accs[0]:.3f} / {accs[1]:.3f}) | {f1:.3f} | {sec} | {chk} | {how} |",
            flush=True,
        )
        for r in rows:
            if "refused" in r:
                print(f"|   | refused, parent kept ({r['refused']}) | | | | |", flush=True)
            if "note" in r:
                print(f"|   | unreviewed cells, {r['note']} | | | | |", flush=True)


if __name__ == "__main__":
    main()
