"""Which of a laboratory's unreviewed cells to review first, so that ``wbc adapt`` learns most from few.

A laboratory that adapts the model reviews cells by hand; which cells it reviews decides how much each
review is worth.  Random cells repeat the common look of the commonest class; the cells chosen here cover
the laboratory's cells as the network sees them:

1. every candidate is prepared as inference prepares it and read by the deployed int8 network in its 8
   rotations/flips: the mean calibrated probabilities give the model's call, their entropy the uncertainty,
   the mean pooled features (L2-normalised) the cell's place in the network's embedding;
2. k-means on the embedding splits the candidates into as many groups of look-alikes as there are cells to
   review, so every kind of cell the laboratory has gets a review in proportion to how common it is;
3. each group gives its most *typical* cell (densest among its neighbours), nudged towards an uncertain
   one: typical cells teach the look of a group, outliers (debris, cut cells) teach little from a handful
   of reviews.  The picks are listed most uncertain first.

Sharing the picks across the model's *calls* instead (a quota per predicted class) was measured and
dropped: on a far laboratory the calls are wrong often enough that a whole true class can go unreviewed
(LISC, one half: no eosinophil among 25 picks; docs/adapting.md).

Pure NumPy on the network's outputs (``rank``), plus the reading of image files (``suggest``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wbcproc.classes import CLASSES
from wbcproc.stats import softmax

UNCERTAINTY_WEIGHT = 0.25  # how far uncertainty moves the pick within a group (0: the most typical cell)
NEIGHBOURS = 10  # typicality: inverse mean distance to this many nearest candidates


@dataclass(frozen=True)
class Suggestion:
    path: Path
    predicted: str
    confidence: float  # mean calibrated top probability over the 8 views
    uncertainty: float  # entropy of the mean probabilities, 0..1 (divided by log 8)
    typicality: float  # 0..1 among the candidates (1: the densest neighbourhood)


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances between the rows of ``x`` and of ``c`` by matrix products: thousands of archive
    cells x 2,048 features never build an (n, k, dims) array."""
    return np.maximum((x * x).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2.0 * (x @ c.T), 0.0)


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 20) -> np.ndarray:
    """Cluster labels of ``x`` (k-means++ seeding, Lloyd iterations)."""
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d = _sq_dist(x, np.array(centres)).min(1)
        centres.append(x[rng.choice(len(x), p=d / d.sum())] if d.sum() > 0 else x[rng.integers(len(x))])
    c = np.array(centres)
    labels = np.zeros(len(x), dtype=int)
    for _ in range(iters):
        labels = _sq_dist(x, c).argmin(1)
        new = np.array([x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return labels


def _typicality(x: np.ndarray) -> np.ndarray:
    d = np.sqrt(_sq_dist(x, x))
    k = min(NEIGHBOURS, len(x) - 1)
    if k < 1:
        return np.ones(len(x))
    near = np.sort(d, axis=1)[:, 1 : k + 1].mean(1)
    t = 1.0 / (near + 1e-6)
    return t / t.max()


@dataclass(frozen=True)
class _Read:
    probs: np.ndarray  # (cells, classes): mean calibrated probabilities over the views
    emb: np.ndarray  # (cells, dims): mean pooled features, L2-normalised
    unc: np.ndarray  # (cells,): entropy of probs / log(classes)
    pred: np.ndarray  # (cells,): predicted class index
    typ: np.ndarray  # (cells,): typicality among all candidates


def _read(view_logits: np.ndarray, view_features: np.ndarray, temperature: float) -> _Read:
    v, c, k = view_logits.shape
    probs = softmax(view_logits.reshape(v * c, k) / temperature).reshape(v, c, k).mean(0)
    emb = view_features.mean(0)
    emb = emb / (np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12)
    unc = -(probs * np.log(probs + 1e-12)).sum(1) / np.log(k)
    return _Read(probs, emb, unc, probs.argmax(1), _typicality(emb))


def rank(view_logits: np.ndarray, view_features: np.ndarray, temperature: float, n: int, seed: int = 0) -> list[int]:
    """Indices of the ``n`` candidates to review, the most uncertain of them first (a reviewer may stop early).

    ``view_logits``: (views, cells, classes); ``view_features``: (views, cells, dims) - the network's outputs
    for each rotation/flip of each candidate.  k-means splits the candidates into ``n`` groups of look-alikes
    in the network's embedding; each group gives its most typical cell, nudged towards an uncertain one.
    """
    return _rank(_read(view_logits, view_features, temperature), n, seed)


def _rank(r: _Read, n: int, seed: int) -> list[int]:
    if n >= len(r.pred):
        return sorted(range(len(r.pred)), key=lambda i: -r.unc[i])
    groups = _kmeans(r.emb, n, np.random.default_rng(seed))
    picks = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        picks.append(int(members[(r.typ[members] + UNCERTAINTY_WEIGHT * r.unc[members]).argmax()]))
    return sorted(picks, key=lambda i: -r.unc[i])[:n]


def suggest(
    paths: Sequence[Path], model_path: Path, n: int, *, seed: int = 0, framed: bool = False
) -> list[Suggestion]:
    """The ``n`` cells among the image files ``paths`` to review first, for adapting the model at ``model_path``."""
    from training.adapt import VIEWS, Features, dihedral, prepare_items
    from training.data import Item
    from wbcproc.preprocess import to_input
    from wbcproc.sidecar import read_sidecar

    info = read_sidecar(model_path)
    spec = info.preprocess
    items = [Item(Path(p), CLASSES[0], "", "train", framed) for p in paths]  # the label is not used
    imgs, kept, _rejected = prepare_items(items, spec)
    if not kept:
        return []
    extractor = Features(model_path)
    outs = [extractor(to_input(view, spec)) for view in dihedral(imgs)[:VIEWS]]
    logits = np.stack([o[0] for o in outs])
    feats = np.stack([o[1] for o in outs])
    temperature = info.temperature or 1.0
    r = _read(logits, feats, temperature)
    return [
        Suggestion(
            kept[i].path, info.classes[int(r.pred[i])], float(r.probs[i].max()), float(r.unc[i]), float(r.typ[i])
        )
        for i in _rank(r, n, seed)
    ]


def candidates(folders: Sequence[Path]) -> list[Path]:
    """The single-cell images of sample folders (or of folders of them, such as the service's archive): the
    files whose header passes ``wbc process``'s checks and that are smaller than a field image."""
    from wbcproc.config import load_settings
    from wbcproc.discovery import IMAGE_EXTENSIONS, Candidate, check_image_header

    settings = load_settings()
    out: list[Path] = []
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if (
                any(part.startswith(".") for part in p.relative_to(folder).parts)
                or p.suffix.lower() not in IMAGE_EXTENSIONS
            ):
                continue
            if not p.is_file() or p.is_symlink():
                continue
            c = check_image_header(p, p.name, settings)
            if isinstance(c, Candidate) and max(c.width, c.height) < settings.field_min_px:
                out.append(p)
    return out


SORT_HERE = "to-sort"
HOW_TO = """Cells suggested for review ({n}, the most useful first), for adapting the model to this laboratory.

to-sort/ holds a copy of each; its name starts with its rank and the model's call. Look at each cell and
move it into the folder of its true class (neutrophil/, lymphocyte/, ...); leave in to-sort/ any you cannot
call. Only the cells you moved are used - never the model's call:

    wbc adapt --lab-data {root} --out RUN_DIR

suggested.csv lists each cell's source file, the model's call, its confidence and why it was chosen.
"""


def write_suggestions(found: Sequence[Suggestion], out: Path) -> Path:
    """``out/suggested.csv``, the cells copied into ``out/to-sort/``, an empty folder per class and a README:
    a laboratory data root that holds only what a person sorted."""
    import csv
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    (out / SORT_HERE).mkdir(exist_ok=True)
    for cls in CLASSES:
        (out / cls).mkdir(exist_ok=True)
    with (out / "suggested.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["rank", "copy", "source", "model_class", "confidence", "uncertainty", "typicality"])
        for rank_, s in enumerate(found, start=1):
            name = f"{rank_:03d}_{s.predicted}_{s.path.name}"
            shutil.copy2(s.path, out / SORT_HERE / name)
            w.writerow([rank_, f"{SORT_HERE}/{name}", str(s.path), s.predicted, f"{s.confidence:.3f}",
                        f"{s.uncertainty:.3f}", f"{s.typicality:.3f}"])  # fmt: skip
    (out / "README.txt").write_text(HOW_TO.format(n=len(found), root=out), encoding="utf-8")
    return out / "suggested.csv"
