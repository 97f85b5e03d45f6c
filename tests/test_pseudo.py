"""The laboratory's unreviewed cells in `wbc adapt`: which are taken (pure rule) and the whole path with a real
model, real fixture cells and the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import CELLS

from training.adapt import adapt
from training.pseudo import MIN_CONFIDENCE, PER_REVIEWED, choose
from wbcproc.classes import CLASSES
from wbcproc.sidecar import read_sidecar

WBC = str(Path(sys.executable).parent / "wbc")


def _views(calls: list[int], strength: float, views: int = 8) -> np.ndarray:
    """Logits of ``views`` x cells: each cell's class ``calls[i]`` ahead by ``strength``."""
    out = np.zeros((views, len(calls), len(CLASSES)), np.float32)
    for i, c in enumerate(calls):
        out[:, i, c] = strength
    return out


def test_only_confident_agreeing_cells_of_reviewed_classes_are_taken_within_a_quota():
    n_cls = {"neutrophil": 1, "lymphocyte": 2}  # reviewed cells per class; the rest were not reviewed
    neut, lymph, mono = CLASSES.index("neutrophil"), CLASSES.index("lymphocyte"), CLASSES.index("monocyte")
    calls = [neut] * 6 + [lymph] * 3 + [mono] * 3
    logits = _views(calls, 12.0)
    logits[:, 5, neut] = 1.0  # an unsure neutrophil: below the confidence bar
    logits[3, 8, lymph], logits[3, 8, mono] = 0.0, 12.0  # one view of a lymphocyte disagrees
    idx, got, conf = choose(logits, 1.0, n_cls)
    taken = dict(zip(idx.tolist(), got.tolist(), strict=True))
    # neutrophils: quota PER_REVIEWED x 1 of the 5 confident ones; lymphocytes: the 2 whose views agree;
    # monocytes were not reviewed: never taken however confident
    assert sum(c == neut for c in taken.values()) == PER_REVIEWED and 5 not in taken
    assert [i for i, c in taken.items() if c == lymph] == [6, 7]
    assert mono not in taken.values() and (conf >= MIN_CONFIDENCE).all()


def test_the_most_confident_cells_fill_a_class_quota_first():
    neut = CLASSES.index("neutrophil")
    logits = _views([neut] * 6, 0.0)
    for i, s in enumerate([8.0, 12.0, 9.0, 14.0, 10.0, 11.0]):
        logits[:, i, neut] = s
    idx, _, _ = choose(logits, 1.0, {"neutrophil": 1})
    assert sorted(idx.tolist()) == [1, 3, 4, 5]  # the four most confident


def test_adapt_with_unreviewed_cells_end_to_end(tmp_path, tiny_model):
    """Half the fixture cells reviewed, all of them given as unreviewed sample cells through `wbc adapt
    --samples`: the reviewed ones are recognised by content and skipped, the rest read by the first draft; the
    sidecar records what was taken, with which class and confidence, and why it was or was not kept."""
    lab, samples = tmp_path / "lab", tmp_path / "archive" / "S-1"
    samples.mkdir(parents=True)
    reviewed = 0
    for cls_dir in sorted(CELLS.iterdir()):
        files = sorted(cls_dir.glob("*.jpg"))
        for f in files[: len(files) // 2 + 1]:
            (lab / cls_dir.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, lab / cls_dir.name / f.name)
            reviewed += 1
        for f in files:
            shutil.copy(f, samples / f"{cls_dir.name}-{f.name}")
    out = tmp_path / "run"
    r = subprocess.run(
        [WBC, "adapt", "--lab-data", str(lab), "--samples", str(samples.parent), "--out", str(out),
         "--model", str(tiny_model), "--min-per-class", "1", "--holdout", "0", "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "unreviewed cells with the adapted draft" in r.stderr
    rec = read_sidecar(out / "model.onnx").sidecar.adaptation["metrics"]["unreviewed"]
    total = sum(1 for _ in CELLS.glob("*/*.jpg"))
    assert rec["candidates"] == total and rec["same_as_a_reviewed_cell"] == reviewed
    assert rec["taken"] == len(rec["cells"]) == sum(rec["per_class"].values())
    assert all(c["confidence"] >= MIN_CONFIDENCE and c["class"] in CLASSES for c in rec["cells"])
    assert isinstance(rec["kept"], bool) and rec["why"]
    assert json.loads(r.stdout.strip().splitlines()[-1])["version"]


def test_unreviewed_cells_the_draft_calls_confidently_join_a_second_draft(tmp_path, tiny_model):
    """With a bar every cell clears, the unreviewed cells are taken and a second draft is made; the model
    written is that draft only where it held every guard rail, and the method says so."""
    import training.pseudo as pseudo

    lab = tmp_path / "lab"
    rest: list[Path] = []
    for cls_dir in sorted(CELLS.iterdir()):
        files = sorted(cls_dir.glob("*.jpg"))
        (lab / cls_dir.name).mkdir(parents=True)
        for f in files[:2]:
            shutil.copy(f, lab / cls_dir.name / f.name)
        rest += files[2:]
    old = pseudo.MIN_CONFIDENCE
    pseudo.MIN_CONFIDENCE = 0.0  # the tiny test model is never confident: take every agreeing cell
    try:
        said: list[str] = []
        res = adapt([lab], tmp_path / "run", tiny_model, min_per_class=1, holdout=0.0, unreviewed=rest, log=said.append)
    finally:
        pseudo.MIN_CONFIDENCE = old
    rec = res["metrics"]["unreviewed"]
    method = read_sidecar(tmp_path / "run" / "model.onnx").sidecar.adaptation["method"]
    assert rec["taken"] > 0 and any("adapting again" in s for s in said)
    assert rec["kept"] is ("pseudo-labelled by a first draft" in method)
