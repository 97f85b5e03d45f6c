"""Which unreviewed cells a laboratory should review first (``training.suggest``): one typical cell per group
of look-alikes in the network's embedding, the uncertain ones first - on synthetic network outputs
where the right answer is known, and end to end on real fixture cells through a real ONNX model."""

from __future__ import annotations

import numpy as np
from helpers import CELLS, fixture_images

from training.suggest import Suggestion, rank, suggest


def _outputs(groups: list[tuple[int, int, float]], views: int = 8, dims: int = 16, seed: int = 0):
    """Network outputs for groups of look-alike cells: (predicted class, cells, confidence logit)."""
    rng = np.random.default_rng(seed)
    logits, feats, truth = [], [], []
    for g, (cls, n, strength) in enumerate(groups):
        centre = rng.normal(size=dims) * 5
        for _ in range(n):
            lg = np.zeros(8)
            lg[cls] = strength
            logits.append(lg + rng.normal(scale=0.1, size=(views, 8)))
            feats.append(centre + rng.normal(scale=0.3, size=(views, dims)))
            truth.append(g)
    return np.stack(logits, 1), np.stack(feats, 1), np.array(truth)


def test_every_group_of_look_alikes_gets_a_review_the_uncertain_first():
    # four groups of look-alikes: two the model calls class 0 (40 and 30 cells), one it is unsure of, and
    # 3 cells of a rare look
    logits, feats, group = _outputs([(0, 40, 6.0), (0, 30, 6.0), (1, 20, 1.0), (2, 3, 4.0)])
    chosen = rank(logits, feats, temperature=1.0, n=4)
    assert len(chosen) == len(set(chosen)) == 4
    assert sorted(group[chosen]) == [0, 1, 2, 3]  # one from each group, the rare one too
    assert group[chosen[0]] == 2  # the group the model is unsure of (weak logits) is listed first


def test_more_picks_than_groups_go_to_the_larger_groups_and_all_candidates_when_few():
    logits, feats, group = _outputs([(0, 60, 6.0), (1, 6, 6.0)])
    chosen = rank(logits, feats, temperature=1.0, n=8)
    assert len(set(chosen)) == 8 and sum(group[chosen] == 0) > sum(group[chosen] == 1) >= 1
    assert sorted(rank(logits[:, :5], feats[:, :5], 1.0, n=10)) == [0, 1, 2, 3, 4]


def test_suggest_reads_real_cells_through_the_model(tiny_model):
    files = fixture_images()
    got = suggest(files, tiny_model, 6)
    assert len(got) == 6 and all(isinstance(s, Suggestion) for s in got)
    assert len({s.path for s in got}) == 6 and all(s.path in files for s in got)
    assert all(0.0 <= s.uncertainty <= 1.0 and 0.0 < s.confidence <= 1.0 for s in got)
    assert [s.uncertainty for s in got] == sorted((s.uncertainty for s in got), reverse=True)
    assert suggest([CELLS / "missing.jpg"], tiny_model, 3) == []  # nothing readable, nothing suggested


def test_wbc_adapt_suggest_writes_cells_for_a_person_to_sort(tmp_path, tiny_model):
    """``wbc adapt --suggest N``: the chosen cells are copied into to-sort/ beside empty class folders; only the
    ones a person moves into a class folder become laboratory data (never the model's call)."""
    import csv
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from helpers import copy_cells

    from training.data import gather

    archive = tmp_path / "archive"
    copy_cells(archive / "S-1", 12)
    copy_cells(archive / "S-2")
    shutil.copy(CELLS.parent / "fields" / "BloodImage_00003.jpg", archive / "S-2" / "field.jpg")  # not a cell
    out = tmp_path / "to-review"
    wbc = str(Path(sys.executable).with_name("wbc"))
    r = subprocess.run(
        [wbc, "adapt", "--suggest", "5", "--samples", str(archive), "--out", str(out), "--model", str(tiny_model)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    n_cells = 12 + len(fixture_images())
    assert f"5 of {n_cells} cells suggested" in r.stderr  # the field image is not a candidate
    rows = list(csv.DictReader((out / "suggested.csv").open(encoding="utf-8")))
    assert [int(row["rank"]) for row in rows] == [1, 2, 3, 4, 5]
    copies = sorted((out / "to-sort").iterdir())
    assert len(copies) == 5 and all((out / row["copy"]).is_file() for row in rows)
    assert "wbc adapt --lab-data" in (out / "README.txt").read_text(encoding="utf-8")
    assert gather([out]).items == []  # nothing sorted yet: no laboratory data
    shutil.move(copies[0], out / "lymphocyte" / copies[0].name)  # a person sorts one cell
    assert [(it.path.parent.name, it.path.name) for it in gather([out]).items] == [("lymphocyte", copies[0].name)]
    bad = subprocess.run([wbc, "adapt", "--suggest", "5", "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "--suggest needs --samples" in bad.stderr
    none = subprocess.run([wbc, "adapt", "--out", str(out)], capture_output=True, text=True)
    assert none.returncode == 2 and "give --lab-data DIR" in none.stderr
