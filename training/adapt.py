"""Adapt a model to a new laboratory from its reviewed cells, on a CPU, in a few minutes (``wbc adapt``).

What is adapted: by default the network's last stage (ResNet ``layer4``) and its classifier head
(``training.adapt_stage``), fine-tuned on the laboratory's cells (8 rotations/flips each) mixed batch for
batch with replay cells of the original training data (8 rotations/flips each too), for about 240 batches
within 6-12 epochs (``adapt_stage.planned_epochs``; fewer than 100 cells also in augmented copies, in as many
steps as without them: ``lab_views``, ``stage_epochs``); with ``--head-only`` (or where PyTorch, the model's
graph or its replay cell images do not allow the stage) the head alone, refitted in seconds on the pooled
features of the *deployed* int8 backbone, with replay features, pulled towards the parent head (L2).  Either
way:

- it starts from what is deployed: the stage is rebuilt from the parent's own int8 weights and written back
  7-bit per channel (the same answer on every CPU); the head is 8 x 2048 floats.  Where the parent carries
  float weights (``training.weights``), the adapted model gets its own beside it (the parent's, with the
  adapted stage and head folded in), so a later training can continue it;
- every figure and guard rail is measured on the written int8 draft, which reaches OUT only if they hold; a
  refused stage draft is followed by a gentler one (half the learning rate), then by the head alone;
- a class the laboratory did not review keeps the parent's behaviour (replay, distillation / the pull to the
  parent head), reported per class as ``unreviewed_recall``;
- where the laboratory's look tells its slides from the original laboratory's, the parent is shipped beside
  the adapted model and each slide is read by the model whose laboratory it looks like (a *routed* model,
  ``wbcproc.routing``): the original laboratory keeps the parent's accuracy exactly, and the adapted model
  may then move up to ``ROUTED_MAX_ORIGINAL_DROP`` on the original's check cells instead of one point - a
  laboratory far from the original gets a model rather than a refusal;
- the domain guard learns the laboratory: its look always, and - once the adapted model scored at least
  ``LAB_GUARD_MIN_CELLS`` held-out cells at ``LAB_GUARD_MIN_ACCURACY`` or better (*validated*) - how unsure
  the model usually is there, so the laboratory's samples stop carrying DOMAIN_SHIFT only then.

Measured (benchmarks/adapt_curve.py, docs/adapting.md): on LISC, a laboratory no model here has seen, with
half of its cells reviewed, the other half goes from 0.53 to 0.94 (stage) / 0.84 (head alone) through the
pipeline, in two minutes / three seconds on a 2-core CPU, within a point on the original
laboratory; a harder rapid-stain small-crop stand-in made from it from 0.17 to 0.89.

Replay: ``<model>.replay.npz`` beside the model holds, for a few PBC training and validation cells per
class, their pooled features computed by that model file (its sha256 inside) and the cells themselves (128
px JPEG from the training cache, 3.3 MB).  The validation part is the original-laboratory check: the
adapted model must stay within ``MAX_ORIGINAL_DROP`` of the parent there.

    wbc adapt --lab-data LAB_ROOT... --out RUN_DIR [--model models/model.onnx] [--head-only]
    python -m training.scripts.make_replay --model models/model.onnx --cache runs/pack/cache-128.npz
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from training.data import Gathered, Item, gather
from training.sessions import session_with_output
from training.weights import weights_path
from wbcproc.classes import CLASSES
from wbcproc.defaults import (
    ADAPT_TIME_BUDGET_S,
    HOLDOUT_FRACTION,
    LAB_GUARD_MIN_ACCURACY,
    LAB_GUARD_MIN_CELLS,
    MIN_PER_CLASS,
)
from wbcproc.framing import FrameInfo, sample_framing
from wbcproc.imageio import ImageRejected, read_image
from wbcproc.preprocess import PreprocessSpec, measure_normalised, prepare_image, to_input
from wbcproc.registry import version_stamp
from wbcproc.sidecar import float_weights_path, read_sidecar, write_sidecar
from wbcproc.stats import softmax

MAX_ORIGINAL_DROP = 0.01  # the original-laboratory check may lose at most one point
VIEWS = 8  # rotations x flips of each training cell: a cell has no orientation
MAX_STAGE_VIEWS = 3200  # views of laboratory cells held for the stage fine-tune (~420 MB of stage inputs)
# few reviewed cells: augmented copies of their 8 views join the stage fine-tune up to about this many views
# (25 cells: 3 copies, 50: 1, 100 or more: none), each copy the robust training preset's changes of stain,
# camera, scale and rotation (training.augment) - see lab_views
AUGMENTED_VIEWS, MAX_AUGMENTED_COPIES, ADAPT_AUGMENTATION = 800, 3, "robust"
# a routed model (wbcproc.routing: the adapted model reads the slides that look like the laboratory's, the
# parent beside it the others) where random samples of ROUTE_SAMPLE_CELLS cells of each laboratory are routed
# right at least ROUTE_MIN_SEPARATION of ROUTE_DRAWS times; its adapted model may then lose up to
# ROUTED_MAX_ORIGINAL_DROP on the original laboratory's check cells (what a misrouted slide could cost)
ROUTE_MIN_SEPARATION, ROUTE_SAMPLE_CELLS, ROUTE_DRAWS = 0.95, 30, 200
ROUTED_MAX_ORIGINAL_DROP = 0.05
PARENT_FILE = "parent.onnx"
# of a time budget, kept for what follows the last fine-tune: judging the draft, calibrating, writing (about
# 4 s on a 2-core AVX-512 CPU; several times that on a slower one)
FINISH_RESERVE_S = 20.0


class AdaptError(ValueError):
    """Adaptation cannot go ahead; the message says what is wrong and what to do."""


@dataclass
class Head:
    weight: np.ndarray  # (classes, features)
    bias: np.ndarray  # (classes,)

    def logits(self, feats: np.ndarray) -> np.ndarray:
        return feats @ self.weight.T + self.bias


@dataclass
class Graph:
    """The model's graph with the head located: the Gemm, its feature input and its weight/bias sources."""

    model: onnx.ModelProto
    gemm: onnx.NodeProto
    feature: str
    head: Head
    dropped: list[str] = field(default_factory=list)  # nodes feeding the head's weights (DequantizeLinear)


def _init(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _value(model: onnx.ModelProto, name: str) -> tuple[np.ndarray, list[str]]:
    """A constant tensor by name: an initializer, or a DequantizeLinear of initializers (QDQ weights)."""
    inits = _init(model)
    if name in inits:
        return numpy_helper.to_array(inits[name]).astype(np.float32), []
    node = next((n for n in model.graph.node if name in n.output), None)
    if node is None or node.op_type != "DequantizeLinear":
        raise AdaptError(f"the head's input {name!r} is neither a constant nor a dequantised constant")
    q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    zp = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32) if len(node.input) > 2 else 0.0
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    shape = [1] * q.ndim
    if np.ndim(scale):
        shape[axis] = -1
    return (q - np.reshape(zp, shape)) * np.reshape(scale, shape), [node.name or node.output[0]]


def load_graph(path: str | Path) -> Graph:
    model = onnx.load(str(path))
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    if not gemms:
        raise AdaptError(f"{path}: no Gemm (linear head) in the graph; only models with a linear head adapt")
    gemm = gemms[-1]
    if not any(a.name == "transB" and a.i == 1 for a in gemm.attribute):
        raise AdaptError(f"{path}: the head Gemm is not (features x weight^T); cannot adapt this export")
    w, d1 = _value(model, gemm.input[1])
    b, d2 = _value(model, gemm.input[2])
    if w.shape[0] != len(CLASSES):
        raise AdaptError(f"{path}: the head has {w.shape[0]} outputs; expected {len(CLASSES)}")
    return Graph(model, gemm, gemm.input[0], Head(w, b), d1 + d2)


class Features:
    """ONNX Runtime session returning (logits, features) of the deployed file."""

    def __init__(self, path: str | Path, threads: int = 0, plan_from: str | Path | None = None) -> None:
        """``plan_from``: the model whose sidecar names the int8 plan (a draft has no sidecar yet)."""
        g = load_graph(path)
        self.session = session_with_output(g.model, g.feature, plan_from or path, threads)
        self.head = g.head

    def __call__(self, x: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        outs = [self.session.run(None, {"input": x[i : i + batch]}) for i in range(0, len(x), batch)]
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[-1] for o in outs]).reshape(len(x), -1)


def dihedral(images: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations/flips of a batch of HxWx3 images."""
    out = []
    for k in range(VIEWS):
        v = np.rot90(images, k % 4, axes=(1, 2))
        out.append(np.ascontiguousarray(v[:, :, ::-1] if k >= 4 else v))
    return out


def stage_views(n_cells: int) -> int:
    """Rotations/flips of each laboratory cell in the stage fine-tune: all 8, fewer for thousands of cells
    (bounded memory: ``MAX_STAGE_VIEWS``)."""
    return max(1, min(VIEWS, MAX_STAGE_VIEWS // max(1, n_cells)))


def augmented_copies(n_cells: int, views: int) -> int:
    """How many augmented copies of each cell's ``views`` join the stage fine-tune: enough to make about
    ``AUGMENTED_VIEWS`` views, at most ``MAX_AUGMENTED_COPIES`` (25 cells x 8 views: 3; 50: 1; 100: 0)."""
    if n_cells <= 0 or views <= 0:
        return 0
    return int(min(MAX_AUGMENTED_COPIES, max(0, -(-AUGMENTED_VIEWS // (n_cells * views)) - 1)))


def stage_epochs(own_views: int, all_views: int, batch: int = 64) -> int:
    """Epochs of the stage fine-tune over the laboratory's views and their augmented copies (``all_views``):
    as many steps as the cells' own views plan (``adapt_stage.planned_epochs``), not more.  The copies change
    what each step sees, not how many steps there are: more steps make the classes a laboratory did not
    review drift (adapt_stage, MAX_EPOCHS) and cost time on slow CPUs.  25 cells x 8 views: 48 steps, over
    800 views 4 epochs; without copies ``planned_epochs(own_views)``."""
    from training.adapt_stage import planned_epochs

    own = planned_epochs(own_views, batch)
    if all_views <= own_views:
        return own
    return max(1, round(-(-own_views // batch) * own / -(-all_views // batch)))


def lab_views(imgs: np.ndarray, labels: np.ndarray, views: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """The laboratory's cells as the stage fine-tune sees them: ``views`` rotations/flips of each, and for few
    cells :func:`augmented_copies` copies of those changed as training changes images for other laboratories
    (``ADAPT_AUGMENTATION``: stain, camera, scale, any rotation; seeded).  Why: a handful of one day's cells
    otherwise teach the stage that day's exact colours and sizes - on LISC, 25 suggested cells read the
    laboratory's other half at 0.84 without the copies and 0.88 with them (3 seeds, through the pipeline;
    docs/adapting-measured.md), while at 100+ cells copies did not help.  The fine-tune makes no more
    steps for them (:func:`stage_epochs`).  Returns the images, their labels and the copies made."""
    base = dihedral(imgs)[:views]
    copies = augmented_copies(len(imgs), views)
    out = list(base)
    if copies:
        import torch

        from training.augment import augment, to_float
        from training.recipe import TrainConfig, augmentation

        cfg = TrainConfig(**augmentation(ADAPT_AUGMENTATION))
        gen = torch.Generator().manual_seed(seed)
        x = to_float(torch.from_numpy(np.concatenate(base)))
        host = random.getstate()  # augment draws one factor a batch from Python's random: seeded here too
        random.seed(seed)
        try:
            for _ in range(copies):
                changed = augment(x, cfg, gen).permute(0, 2, 3, 1).mul(255.0).round().clamp(0, 255)
                out.append(changed.to(torch.uint8).numpy())
        finally:
            random.setstate(host)
    x = np.concatenate(out)
    return x, np.tile(labels, len(x) // max(1, len(labels))).astype(np.int64), copies


def prepare_items(items: list[Item], spec: PreprocessSpec) -> tuple[np.ndarray, list[Item], list[tuple[str, str]]]:
    """Prepared images, as inference prepares them, and the rejected files.

    Field crops skip framing.  Single-cell images are framed as ``wbc process`` frames a sample's, with
    each data root taken as one sample (one laboratory, one magnification): its red-cell ruler where an
    image's own measurement is missing or off, or for every image where the single-image measurement is
    unreliable in that laboratory (``wbcproc.framing.ruler_for_every_image``) - so the head learns the cells
    as the laboratory's samples will show them.  Two passes (measure, then prepare) keep memory at one image.
    """
    kept, arrays, rejected = [], [], []
    framing: dict[str, tuple[float | None, bool]] = {}  # root -> (ruler, every image by it)
    measured: dict[Path, tuple[FrameInfo | None, np.ndarray | None]] = {}  # reused by the second pass
    if spec.framing is not None:
        by_root: dict[str, list[FrameInfo]] = {}
        for it in items:
            if it.framed:
                continue
            try:
                info, gain, _normalised = measure_normalised(read_image(it.path).bgr, spec)
            except ImageRejected:
                continue  # rejected (with its reason) by the second pass
            measured[it.path] = (info, gain)
            by_root.setdefault(str(it.path.parent.parent), []).append(info)
        framing = {root: sample_framing(infos, spec.framing) for root, infos in by_root.items()}
    for it in items:
        ruler, every = framing.get(str(it.path.parent.parent), (None, False))
        info, gain = measured.get(it.path, (None, None))
        try:
            bgr = read_image(it.path).bgr
            arrays.append(
                prepare_image(
                    bgr, spec, framed=it.framed, rbc_px=ruler, ruler_for_every_image=every, located=info, wb_gain=gain
                )
            )
            kept.append(it)
        except ImageRejected as exc:
            rejected.append((str(it.path), exc.reason))
    if not arrays:
        return np.zeros((0, spec.input_size, spec.input_size, 3), np.uint8), kept, rejected
    return np.stack(arrays), kept, rejected


def fit_head(
    feats: np.ndarray,
    labels: np.ndarray,
    parent: Head,
    *,
    weights: np.ndarray | None = None,
    pull: float = 1e-2,
    steps: int = 400,
    lr: float = 0.05,
) -> Head:
    """Weighted softmax regression from the parent head, with an L2 pull towards it (full-batch GD)."""
    w, b = parent.weight.copy(), parent.bias.copy()
    sw = np.ones(len(labels)) if weights is None else weights
    sw = sw / sw.sum()
    rows = np.arange(len(labels))
    for _ in range(steps):
        p = softmax(feats @ w.T + b)
        p[rows, labels] -= 1
        p *= sw[:, None]
        w -= lr * (p.T @ feats + pull * (w - parent.weight))
        b -= lr * p.sum(0)
    return Head(w.astype(np.float32), b.astype(np.float32))


def write_adapted(parent_path: Path, head: Head, out_path: Path) -> Path:
    """A copy of the parent graph with the head's weight and bias replaced by float constants, and the
    logits no longer re-quantised (their range changed)."""
    g = load_graph(parent_path)
    m = g.model
    graph = m.graph
    w_name, b_name = "adapted.head.weight", "adapted.head.bias"
    graph.initializer.extend([numpy_helper.from_array(head.weight, w_name), numpy_helper.from_array(head.bias, b_name)])
    dead = {n.output[0] for n in graph.node if (n.name or n.output[0]) in g.dropped}
    g.gemm.input[1], g.gemm.input[2] = w_name, b_name
    out_name = graph.output[0].name
    if g.gemm.output[0] != out_name:
        # Gemm -> QuantizeLinear -> DequantizeLinear -> logits: the Gemm writes the logits itself now
        chain = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        q = next((n for n in chain if n.input[0] == g.gemm.output[0]), None)
        dq = next((n for n in chain if q is not None and n.input[0] == q.output[0]), None)
        if q is None or dq is None or dq.output[0] != out_name:
            raise AdaptError("the head's output does not reach the model output through one Q/DQ pair")
        dead |= {q.output[0], dq.output[0]}
        g.gemm.output[0] = out_name
    keep = [n for n in graph.node if not (set(n.output) & dead) or n is g.gemm]
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    onnx.checker.check_model(m)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(out_path))
    return out_path


def replay_path(model_path: Path) -> Path:
    return model_path.with_suffix(".replay.npz")


def load_replay(model_path: Path, sha256: str) -> dict[str, np.ndarray] | None:
    p = replay_path(model_path)
    if not p.is_file():
        return None
    with np.load(p, allow_pickle=False) as z:
        if str(z["model_sha256"]) != sha256:
            return None
        keys = (
            "train_x",
            "train_y",
            "check_x",
            "check_y",
            "train_jpeg",
            "train_offsets",
            "check_jpeg",
            "check_offsets",
        )
        return {k: z[k] for k in keys if k in z.files}


def _lab_cells(data: list[str | Path], min_per_class: int, holdout: float) -> tuple[Gathered, dict[str, int]]:
    """The laboratory's reviewed cells (a share held out) and the fitted count per class; refuses a reviewed
    class with too few cells, naming each."""
    g = gather(data, val_fraction=0.0, test_fraction=holdout)
    if not g.items:
        raise AdaptError(f"no reviewed cells found under {', '.join(map(str, data))}: expected class folders")
    fit_items = [it for it in g.items if it.split != "test"]
    counts = {c: sum(it.label == c for it in fit_items) for c in CLASSES}
    short = {c: n for c, n in counts.items() if 0 < n < min_per_class}
    if short:
        raise AdaptError(
            "too few reviewed cells to adapt: "
            + ", ".join(f"{c} has {n}" for c, n in short.items())
            + f" (at least {min_per_class} per reviewed class, after {round(holdout * 100)} % are held out "
            "for checking); review more cells of these classes, or leave the class out entirely to keep the "
            "current model's behaviour for it"
        )
    return g, counts


def _with_replay(
    lab_x: np.ndarray, lab_y: np.ndarray, replay: dict | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, labels and sample weights for the head fit: the lab's cells, plus the original
    training cells' replay features - the laboratory and the original data weigh the same in total."""
    if replay is None:
        return lab_x, lab_y, np.ones(len(lab_y))
    x = np.concatenate([lab_x, replay["train_x"].astype(np.float32)])
    y = np.concatenate([lab_y, replay["train_y"]])
    wts = np.concatenate(
        [np.full(len(lab_y), 1.0 / len(lab_y)), np.full(len(replay["train_y"]), 1.0 / len(replay["train_y"]))]
    )
    return x, y, wts


def _score(logits: np.ndarray, yy: np.ndarray) -> dict[str, float]:
    from training.metrics import classification_metrics

    m = classification_metrics(yy, logits.argmax(1), CLASSES)
    return {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4), "n": len(yy)}


def _check_original(
    metrics: dict,
    parent_logits: np.ndarray,
    adapted_logits: np.ndarray,
    cy: np.ndarray,
    counts: dict[str, int],
    max_drop: float,
) -> None:
    """Accuracy on the original laboratory's check cells before/after (refused beyond ``max_drop``:
    MAX_ORIGINAL_DROP, or ROUTED_MAX_ORIGINAL_DROP for a routed model, whose parent reads the original
    laboratory's slides), and the recall of each class the laboratory did not review (it keeps the parent's
    behaviour)."""
    before, after = _score(parent_logits, cy), _score(adapted_logits, cy)
    metrics["original_check"] = {"parent": before, "adapted": after, "max_drop": max_drop}
    unreviewed = [c for c, n in counts.items() if n == 0]
    p_pred, a_pred = parent_logits.argmax(1), adapted_logits.argmax(1)
    metrics["unreviewed_recall"] = {
        c: {
            "parent": round(float((p_pred[cy == CLASSES.index(c)] == CLASSES.index(c)).mean()), 4),
            "adapted": round(float((a_pred[cy == CLASSES.index(c)] == CLASSES.index(c)).mean()), 4),
        }
        for c in unreviewed
        if (cy == CLASSES.index(c)).any()
    }
    if before["accuracy"] - after["accuracy"] > max_drop:
        raise AdaptError(
            f"the adapted model would lose {100 * (before['accuracy'] - after['accuracy']):.1f} points on the "
            f"original laboratory's check cells ({before['accuracy']:.3f} -> {after['accuracy']:.3f}; at most "
            f"{100 * max_drop:g} allowed): not written"
        )


def _calibration(calib_logits: list[np.ndarray], calib_y: list[np.ndarray], parent) -> tuple[float, float]:
    """Temperature and review threshold refitted on the held-out lab cells and check cells (else the parent's)."""
    from training.metrics import fit_temperature, review_threshold

    if not calib_logits:
        return parent.temperature, parent.review_threshold
    cl, cyy = np.concatenate(calib_logits), np.concatenate(calib_y)
    temperature = float(fit_temperature(cl, cyy))
    return temperature, float(review_threshold(softmax(cl / temperature), cyy))


def _with_uncertainty(domain: dict[str, Any] | None, judged: _Judged, lab: _Lab, parent, log) -> dict[str, Any] | None:
    """The original laboratory's uncertainty thresholds carried over to the adapted model, whose temperature
    and weights differ from the parent's: raised by the rise of the check cells' mean uncertainty, adapted
    over parent, times the thresholds' safety factor.  Why this and not a refit or a ratio (LISC, measured):
    refitting on the 240 check cells alone gave thresholds 15-20 % tighter than the parent's own (1,230
    validation cells: too few cells for a 99.5th percentile); the mean rose 1.7x (0.0107 -> 0.0183: the bulk
    of confident cells moved) while thresholds bootstrapped on the check cells rose 1.1-1.4x (the tail of
    unsure cells hardly moved) - the shift matches them (x1.07-1.28).  Unchanged without check cells."""
    from wbcproc.domain import cell_uncertainty

    if not domain or domain.get("uncertainty") is None or judged.check_logits is None or lab.parent_check is None:
        return domain
    before = float(cell_uncertainty(lab.parent_check, parent.temperature).mean())
    after = float(cell_uncertainty(judged.check_logits, judged.temperature).mean())
    unc = domain["uncertainty"]
    shift = float(unc.get("calibration", {}).get("safety", 1.25)) * (after - before)
    log(
        f"domain guard, original laboratory: uncertainty thresholds {shift:+.4f} (check cells {before:.4f} -> {after:.4f})"
    )
    moved = {
        **unc,
        "thresholds": {k: max(0.0, float(v) + shift) for k, v in unc["thresholds"].items()},
        "adapted_shift": {
            "shift": round(shift, 5),
            "check_cells": len(judged.check_logits),
            "mean_uncertainty_parent": round(before, 5),
            "mean_uncertainty_adapted": round(after, 5),
            "why": "the parent's thresholds + safety x the rise of the check cells' mean uncertainty",
        },
    }
    return {**domain, "uncertainty": moved}


def _lab_uncertainty(judged: _Judged, lab: _Lab, metrics: dict, log) -> dict[str, Any] | None:
    """The laboratory's own uncertainty thresholds (its held-out cells under the adapted model), only where
    there are enough of them and the adapted model scored them well enough to be trusted there; otherwise
    None: the laboratory is not validated and its samples keep DOMAIN_SHIFT (the reason is recorded)."""
    from wbcproc.domain import cell_uncertainty, fit_uncertainty

    n = 0 if judged.hold_logits is None else len(judged.hold_logits)
    acc = float((judged.hold_logits.argmax(1) == lab.hold_y).mean()) if n else None
    why_not = None
    if n < LAB_GUARD_MIN_CELLS:
        why_not = f"{n} held-out laboratory cells, at least {LAB_GUARD_MIN_CELLS} needed"
    elif acc < LAB_GUARD_MIN_ACCURACY:
        why_not = f"held-out accuracy {acc:.3f} < {LAB_GUARD_MIN_ACCURACY}"
    if why_not:
        metrics["lab_guard"] = {"validated": False, "why_not": why_not}
        log(
            f"domain guard: this laboratory is not validated ({why_not}); its samples still carry DOMAIN_SHIFT "
            f"- review more cells (a share is held out: --holdout) and adapt again"
        )
        return None
    metrics["lab_guard"] = {"validated": True, "held_out_cells": n, "held_out_accuracy": round(acc, 4)}
    source = (
        f"this laboratory's held-out cells ({n}, accuracy {acc:.3f}), the adapted model, "
        f"temperature {judged.temperature:.4f}, drawn with replacement"
    )
    return fit_uncertainty(cell_uncertainty(judged.hold_logits, judged.temperature), source=source, bootstrap=True)


def lab_reference(lab_feats: np.ndarray, data) -> dict[str, Any] | None:
    """The laboratory's colour/framing reference for the domain guard, from all its reviewed cells' features,
    the threshold calibrated on leave-one-out distances (:func:`wbcproc.domain.fit_reference_loo`), so that
    the laboratory's unseen cells are judged as its reviewed ones would be; None with under 10 cells."""
    from wbcproc.domain import fit_reference_loo

    if len(lab_feats) < 10:
        return None
    lab_ref = fit_reference_loo(lab_feats)
    lab_ref["name"] = ", ".join(Path(d).name for d in data)
    return lab_ref


def _with_lab_domain(
    domain: dict[str, Any] | None, lab_ref: dict[str, Any] | None, uncertainty: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The laboratory's colour reference joins the guard's (``domain.labs``).  With ``uncertainty`` (the
    adapted model was validated there) its samples pass the colour half and are judged against the
    laboratory's own uncertainty thresholds; without, they still carry DOMAIN_SHIFT, which says why."""
    if lab_ref is None:
        return domain
    domain = dict(domain or {})
    # validated: the adapted model proved itself on the laboratory's held-out cells (_lab_uncertainty); an
    # unvalidated laboratory is known by its look, and its samples still carry DOMAIN_SHIFT
    lab_ref = {**lab_ref, "validated": uncertainty is not None}
    if uncertainty is not None:
        lab_ref["uncertainty"] = uncertainty
    # the parent's laboratories: this one's earlier entry is replaced (the weekly retrain adapts again); any
    # other was validated for the parent, not for this model (the replay holds only the original laboratory)
    inherited = []
    for old in domain.get("labs", []):
        if old.get("name") == lab_ref["name"]:
            continue
        if old.get("validated", True):
            old = {k: v for k, v in old.items() if k != "uncertainty"}
            old.update(validated=False, not_validated_because="validated for an earlier model, not for this one")
        inherited.append(old)
    domain["labs"] = [*inherited, lab_ref]
    return domain


HEAD_METHOD = (
    "classifier head refitted on the laboratory's reviewed cells (8 rotations/flips each) as the parent's int8 "
    "backbone sees them, plus replay features of the original training cells, pulled towards the parent head; "
    "backbone unchanged"
)
STAGE_METHOD = (
    "last ResNet stage (layer4) and classifier head fine-tuned on the laboratory's reviewed cells (rotations/flips; "
    f"fewer than {AUGMENTED_VIEWS // VIEWS} cells also in up to {MAX_AUGMENTED_COPIES} copies changed as the "
    f"{ADAPT_AUGMENTATION} training preset changes stain, camera and scale, in as many steps as the cells alone) "
    "mixed batch for batch with replay cells of the original training data, starting from the parent's int8 "
    "weights; the stage re-quantised as the parent (7-bit per-channel weights, activation ranges re-measured); "
    "layers before it unchanged"
)


def _fit_head_only(extractor: Features, imgs: np.ndarray, labels: np.ndarray, replay, spec, parent_path, draft) -> None:
    fit_feats, fit_labels = [], []
    for view in dihedral(imgs):
        fit_feats.append(extractor(to_input(view, spec))[1])
        fit_labels.append(labels)
    x, y, wts = _with_replay(np.concatenate(fit_feats), np.concatenate(fit_labels), replay)
    write_adapted(parent_path, fit_head(x, y, extractor.head, weights=wts), draft)


STAGE_LEARNING_RATES = (1e-4, 5e-5)  # the first draft, then a gentler one if the guard rail refuses it


def _stage_drafts(
    extractor: Features, imgs: np.ndarray, labels: np.ndarray, replay, spec, parent_path, draft, threads, deadline, log
):
    """Write a last-stage + head draft to ``draft`` for each learning rate in turn (yielded with the epochs
    run, the epochs planned and the augmented copies made of each cell), strongest first: the caller keeps the first that the guard rails accept.  On a laboratory far from the training
    data (out of the box 0.17), 120 cells at 1e-4 for 6 epochs with 400 replay cells in one view moved the
    stage 1.3-1.7 points on the original check, at 5e-5 0.4-0.8 points (0.84 on the laboratory against 0.68
    for the head alone); with the replay cells in 8 views and ~240 batches, 1e-4 kept it within 0.7 points
    (0.89)."""
    from training import adapt_stage
    from training.adapt_stage import fine_tune, read_stage, stage_inputs, write_stage

    stage = read_stage(onnx.load(str(parent_path)))
    views = stage_views(len(imgs))
    rep = replay_images(replay, "train")
    lab_x, lab_y, copies = lab_views(imgs, labels, views)
    log(
        f"computing the last stage's inputs once (the parent's int8 network): {len(imgs)} cells x {views} views"
        + (f" and {copies} augmented cop{'y' if copies == 1 else 'ies'} of each" if copies else "")
        + f", {len(rep)} replay cells x {VIEWS} views"
    )
    lab_s = stage_inputs(parent_path, stage, to_input(lab_x, spec), threads)
    # the replay cells in all 8 views too: the original laboratory is then kept on more than the 400 cells
    # themselves (the hard half of a far laboratory: original check 0.979 -> 0.988, float stage, 12 epochs)
    rep_s = replay_stage_inputs(parent_path, stage, rep, spec, threads)
    rep_y = np.tile(replay["train_y"], VIEWS).astype(np.int64)
    rep_t = replay_teacher(parent_path, stage, extractor.head, rep_s)
    # activation ranges from what inference reads: the cells' own views, not the augmented copies
    own = lab_s[: len(imgs) * views]
    calib = np.concatenate([own[:: max(1, len(own) // 512)], rep_s[: len(rep)]])
    epochs = stage_epochs(len(imgs) * views, len(lab_s))
    for i, lr in enumerate(STAGE_LEARNING_RATES):
        if i and deadline is not None and time.monotonic() > deadline:
            log(f"time budget spent: no draft at learning rate {lr:g}")
            return
        log(
            f"fine-tuning the last stage and head at learning rate {lr:g}, {epochs} epochs: {len(imgs)} cells x "
            f"{views} views{f' x {copies + 1}' if copies else ''}, {len(rep)} replay cells x {VIEWS} views"
        )
        tuned = fine_tune(
            stage, extractor.head.weight, extractor.head.bias, lab_s, lab_y,
            rep_s, rep_y, epochs=epochs, lr=lr, threads=threads, frozen=adapt_stage.FROZEN_BLOCKS, teacher=rep_t,
            deadline=deadline, log=log,
        )  # fmt: skip
        staged = write_stage(stage, tuned.net, calib, draft.with_name("stage.onnx"))
        write_adapted(staged, Head(tuned.weight, tuned.bias), draft)
        staged.unlink()
        yield lr, tuned.epochs, epochs, copies


def replay_stage_inputs(parent_path: Path, stage, rep: np.ndarray, spec, threads: int) -> np.ndarray:
    """The replay cells' stage inputs in all 8 views: the same for every adaptation of one model file, and the
    longest fixed part of one (3,200 views through the int8 network: ~2 minutes on a 2-core AVX2-only CPU), so
    kept in the cache folder (:func:`_cached`, 420 MB a model) by the model's sha256 and the ONNX Runtime
    version."""
    import onnxruntime as ort

    from training.adapt_stage import stage_inputs

    return _cached(
        "replay-stage-inputs",
        _model_key(parent_path) + f"-ort{ort.__version__}-{len(rep)}x{VIEWS}",
        lambda: stage_inputs(parent_path, stage, to_input(np.concatenate(dihedral(rep)), spec), threads),
    )


def replay_teacher(parent_path: Path, stage, head: Head, rep_s: np.ndarray) -> np.ndarray:
    """The parent's logits for the replay views (the distillation targets): one forward pass of the stage over
    3,200 views (~35 s on 2 cores with PyTorch's AVX2 kernels), the same for every draft of every adaptation
    of one model file, so kept in the cache folder beside the stage inputs (100 KB)."""
    import torch

    from training.adapt_stage import parent_outputs

    return _cached(
        "replay-teacher",
        _model_key(parent_path) + f"-torch{torch.__version__}-{len(rep_s)}",
        lambda: parent_outputs(stage, head.weight, head.bias, rep_s),
    )


def _model_key(path: Path) -> str:
    from wbcproc.sidecar import sha256_file

    return sha256_file(path)[:24]


def _cached(name: str, key: str, compute) -> np.ndarray:
    """``compute()``, kept in the cache folder (``wbcproc.paths.cache_home``) as ``adapt/<name>-<key>.npy`` and
    computed again whenever the key differs or the file does not read back whole.  A read-only or full cache
    folder costs time, never the adaptation."""
    from wbcproc.paths import cache_home

    path = cache_home() / "adapt" / f"{name}-{key}.npy"
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        pass  # absent or unreadable: computed again and written anew
    value = compute()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as fh:
            np.save(fh, value)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
    return value


def _stage_unavailable(parent_path: Path, replay) -> str | None:
    """Why the last stage cannot be fine-tuned for this model here (None: it can)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return "PyTorch is not installed (pip install 'wbc[train]')"
    if replay is None or "train_jpeg" not in replay:
        return f"{replay_path(parent_path).name} holds no replay cell images (make_replay writes them)"
    from training.adapt_stage import StageError, read_stage

    try:
        read_stage(onnx.load(str(parent_path)))
    except StageError as exc:
        return str(exc)
    return None


@dataclass
class _Lab:
    """The laboratory's cells to fit, and what every draft is judged on - the held-out cells and the original
    laboratory's check cells - with the parent's logits there, computed once for all drafts."""

    fit_imgs: np.ndarray
    fit_labels: np.ndarray
    counts: dict[str, int]
    hold_in: np.ndarray | None
    hold_y: np.ndarray
    parent_hold: np.ndarray | None
    check_in: np.ndarray | None  # the check cells' images (None: only their pooled features, check_x)
    check_x: np.ndarray | None
    check_y: np.ndarray | None
    parent_check: np.ndarray | None
    lab_feats: np.ndarray  # the domain guard's features of every laboratory cell
    check_feats: np.ndarray | None  # and of the check cells (None: the replay holds no images)


def _lab(imgs, labels, is_fit, counts, extractor: Features, replay, spec) -> _Lab:
    from wbcproc.domain import cell_features

    hold_in = to_input(imgs[~is_fit], spec) if (~is_fit).any() else None
    check = replay_images(replay, "check") if replay is not None else None
    check_in = to_input(check, spec) if check is not None else None
    check_x = replay["check_x"].astype(np.float32) if replay is not None and check is None else None
    if check_in is not None:
        parent_check = extractor(check_in)[0]
    else:
        parent_check = extractor.head.logits(check_x) if check_x is not None else None
    return _Lab(
        imgs[is_fit], labels[is_fit], counts, hold_in, labels[~is_fit],
        extractor(hold_in)[0] if hold_in is not None else None,
        check_in, check_x, replay["check_y"] if replay is not None else None, parent_check,
        np.array([cell_features(im, spec.colour_order) for im in imgs]).reshape(len(imgs), -1),
        None if check is None else np.array([cell_features(im, spec.colour_order) for im in check]),
    )  # fmt: skip


@dataclass
class _Judged:
    """A draft's recalibration, and its logits on the held-out laboratory cells and the check cells (None:
    there were none) - from which the domain guard's uncertainty thresholds are refitted."""

    temperature: float
    review_threshold: float
    hold_logits: np.ndarray | None = None
    check_logits: np.ndarray | None = None


def _judge(metrics, adapted: Features, lab: _Lab, parent, max_drop: float) -> _Judged:
    """The draft's figures, measured on the written int8 file: held-out laboratory cells and the original
    laboratory's check (refused beyond ``max_drop``: nothing is written) - the check through the
    draft's images where the replay holds them, else through its head (a head-only draft); its temperature
    and review threshold refitted on both."""
    calib_logits, calib_y = [], []
    hold_adapted = check = None
    if lab.hold_in is not None and len(lab.hold_y):
        hold_adapted = adapted(lab.hold_in)[0]
        metrics["lab_holdout"] = {
            "parent": _score(lab.parent_hold, lab.hold_y),
            "adapted": _score(hold_adapted, lab.hold_y),
        }
        calib_logits.append(hold_adapted)
        calib_y.append(lab.hold_y)
    if lab.parent_check is not None:
        check = adapted(lab.check_in)[0] if lab.check_in is not None else adapted.head.logits(lab.check_x)
        _check_original(metrics, lab.parent_check, check, lab.check_y, lab.counts, max_drop)
        calib_logits.append(check)
        calib_y.append(lab.check_y)
    return _Judged(*_calibration(calib_logits, calib_y, parent), hold_adapted, check)


def _best_draft(
    lab: _Lab, extractor, replay, spec, parent, parent_path, draft, metrics, why_not, max_drop, threads, deadline, log
):
    """The strongest draft the guard rails accept, written to ``draft``: last-stage drafts in turn (unless
    ``why_not`` says why not), else the head alone (whose refusal is final).  Returns the draft's
    :class:`_Judged` and why the stage was not fine-tuned (None: it was)."""

    def judge():
        return _judge(metrics, Features(draft, threads, plan_from=parent_path), lab, parent, max_drop)

    if why_not is None:
        refused = []
        for lr, epochs, planned, copies in _stage_drafts(
            extractor, lab.fit_imgs, lab.fit_labels, replay, spec, parent_path, draft, threads, deadline, log
        ):
            try:
                judged = judge()
            except AdaptError as exc:  # the stage moved too far for the original laboratory: gentler
                refused.append(f"learning rate {lr:g}: {exc}")
                log(f"last-stage draft at learning rate {lr:g} refused: {exc}")
                metrics.pop("lab_holdout", None)
                continue
            metrics["stage_learning_rate"] = lr
            metrics["stage_epochs"] = epochs
            metrics["stage_epochs_planned"] = planned
            metrics["stage_augmented_copies"] = copies
            return judged, None
        why_not = "every last-stage draft was refused (" + "; ".join(refused) + ")"
        log("refitting the head alone")
    _fit_head_only(extractor, lab.fit_imgs, lab.fit_labels, replay, spec, parent_path, draft)
    return judge(), why_not


def _with_unreviewed(
    files: list[Path], lab: _Lab, first: tuple[_Judged, str | None], ctx: dict[str, Any], metrics: dict, log
) -> tuple[_Judged, str | None]:
    """A second draft from the parent on the reviewed + confidently pseudo-labelled unreviewed cells
    (``training.pseudo``), kept in ``ctx["draft"]`` only where every guard rail holds, the stage is fine-tuned
    whenever the first draft's was, and the held-out laboratory cells (where there are any) score at least as
    well as without them; else the first draft stays.  ``metrics["unreviewed"]`` says what was taken and why
    it was or was not kept."""
    import dataclasses

    from training.pseudo import pseudo_label

    judged, why_not = first
    if ctx["deadline"] is not None and time.monotonic() > ctx["deadline"]:
        why = "the time budget was spent on the draft from the reviewed cells (--time-budget-seconds 0: no limit)"
        metrics["unreviewed"] = {"candidates": len(files), "taken": 0, "kept": False, "why": why}
        log(f"unreviewed cells not used: {why}")
        return first
    parent_path, spec, draft = ctx["parent_path"], ctx["spec"], ctx["draft"]
    reader = Features(draft, ctx["threads"], plan_from=parent_path)
    log(f"reading {len(files)} unreviewed cells with the adapted draft (8 views each)")
    found = pseudo_label(
        files,
        lambda items: prepare_items(items, spec),
        lambda imgs: np.stack([reader(to_input(v, spec))[0] for v in dihedral(imgs)]),
        judged.temperature,
        lab.counts,
        ctx["reviewed_sha256"],
    )
    record = metrics["unreviewed"] = found.record
    if not len(found.labels):
        record.update(kept=False, why="no unreviewed cell was called confidently by the adapted draft")
        return first
    log(f"{len(found.labels)} unreviewed cells taken with the draft's class {record['per_class']}: adapting again")
    more = dataclasses.replace(
        lab,
        fit_imgs=np.concatenate([lab.fit_imgs, found.imgs]),
        fit_labels=np.concatenate([lab.fit_labels, found.labels]),
    )
    second_draft = draft.parent / "with-unreviewed" / draft.name
    second_draft.parent.mkdir()
    m2 = {k: v for k, v in metrics.items() if k != "unreviewed"}
    try:
        second = _best_draft(
            more, ctx["extractor"], ctx["replay"], spec, ctx["parent"], parent_path, second_draft, m2, why_not,
            ctx["max_drop"], ctx["threads"], ctx["deadline"], log,
        )  # fmt: skip
    except AdaptError as exc:
        record.update(kept=False, why=f"the draft with them was refused: {exc}")
        return first
    before = metrics.get("lab_holdout", {}).get("adapted", {}).get("accuracy")
    after = m2.get("lab_holdout", {}).get("adapted", {}).get("accuracy")
    why = None
    if second[1] is not None and why_not is None:
        why = f"with them the last stage was not fine-tuned ({second[1]})"
    elif before is not None and after is not None and after < before:
        why = f"held-out laboratory cells {after:.3f} with them, {before:.3f} without"
    if why:
        record.update(kept=False, why=why)
        log(f"the unreviewed cells are not used: {why}")
        return first
    shutil.move(str(second_draft), str(draft))
    metrics.update({k: v for k, v in m2.items() if k != "unreviewed"})
    record.update(
        kept=True,
        why="every guard rail held"
        + ("" if before is None else f"; held-out laboratory cells {after:.3f} with them, {before:.3f} without"),
    )
    log(f"the unreviewed cells are used: {record['why']}")
    return second


def _separation(lab_feats: np.ndarray, check_feats: np.ndarray, domain: dict, lab_ref: dict) -> dict[str, Any]:
    """How reliably the routing rule tells the two laboratories apart: the share of random samples of
    ``ROUTE_SAMPLE_CELLS`` of the laboratory's cells routed to its model, and of the original laboratory's
    check cells routed to the parent.  The laboratory's cells are measured by their leave-one-out distances
    to its look (as its next slide's unseen cells will be), and samples are drawn with replacement."""
    from wbcproc.domain import distances, leave_one_out_distances
    from wbcproc.routing import LAB, PARENT, decide

    rng = np.random.default_rng(0)

    def share(to_lab: np.ndarray, to_orig: np.ndarray, want: str) -> float:
        hits = 0
        for _ in range(ROUTE_DRAWS):
            i = rng.choice(len(to_lab), ROUTE_SAMPLE_CELLS, replace=True)
            lab_ratio = float(np.median(to_lab[i])) / float(lab_ref["threshold"])
            orig_ratio = float(np.median(to_orig[i])) / float(domain["threshold"])
            hits += decide(lab_ratio, orig_ratio, lab_ref["name"])["model"] == want
        return round(hits / ROUTE_DRAWS, 4)

    return {
        "lab_samples_to_lab": share(leave_one_out_distances(lab_feats), distances(lab_feats, domain), LAB),
        "original_samples_to_parent": share(distances(check_feats, lab_ref), distances(check_feats, domain), PARENT),
        "sample_cells": ROUTE_SAMPLE_CELLS,
        "draws": ROUTE_DRAWS,
    }


def _routing_plan(lab: _Lab, domain: dict | None, lab_ref: dict | None, metrics, log) -> dict[str, Any] | None:
    """Route (None: one model for every slide)?  Where the laboratory's look tells its slides from the original
    laboratory's (``ROUTE_MIN_SEPARATION`` of random samples of each routed right), the adapted model reads
    only the laboratory's slides and the parent, shipped beside it, the original laboratory's: the original
    laboratory keeps the parent's accuracy exactly, and the laboratory's model may move further than a point
    on the original's cells (at most ``ROUTED_MAX_ORIGINAL_DROP``, which bounds what a misrouted slide costs)."""
    if lab_ref is None or domain is None or lab.check_feats is None:
        metrics["routing"] = {"routed": False, "why_not": "no laboratory look or no original check cells to compare"}
        return None
    routing = {"lab": lab_ref["name"]}
    sep = _separation(lab.lab_feats, lab.check_feats, domain, lab_ref)
    routed = min(sep["lab_samples_to_lab"], sep["original_samples_to_parent"]) >= ROUTE_MIN_SEPARATION
    why_not = None if routed else f"the laboratories' looks are not told apart in {ROUTE_MIN_SEPARATION:.0%} of samples"
    metrics["routing"] = {"routed": routed, "why_not": why_not, "separation": sep}
    log(
        f"routing: samples of this laboratory's cells go to its model in {sep['lab_samples_to_lab']:.1%}, the "
        f"original laboratory's to the parent in {sep['original_samples_to_parent']:.1%}: "
        + ("the adapted model reads this laboratory's slides, the parent the others" if routed else why_not)
    )
    return {**routing, "separation": sep} if routed else None


def _write_parent(parent_path: Path, parent, out: Path, routing: dict[str, Any]) -> dict[str, Any]:
    """The parent beside a routed model (``parent.onnx`` + ``parent.json``): the original laboratory's model -
    a routed parent's own parent, so a routed model adapted again still falls back to the original's."""
    origin = parent_path
    if parent.sidecar.adaptation and parent.sidecar.adaptation.get("routing"):
        origin = parent_path.parent / parent.sidecar.adaptation["routing"]["parent_file"]
    info = read_sidecar(origin)
    shutil.copy2(origin, out / PARENT_FILE)
    if info.sidecar.weights is None:
        shutil.copy2(info.sidecar_path, (out / PARENT_FILE).with_suffix(".json"))
    else:  # its float weights go with it, named for the copy (the adapted model's own are model.weights...)
        dest = weights_path(out / PARENT_FILE)
        shutil.copy2(float_weights_path(info), dest)
        write_sidecar(out / PARENT_FILE, info.sidecar.replace(weights=replace(info.sidecar.weights, file=dest.name)))
    return {
        **routing,
        "parent_file": PARENT_FILE,
        "parent_sha256": info.sha256,
        "parent_version": info.version,
        "rule": "each slide is read by this model where it matches the laboratory's look and not the original "
        "laboratory's (median colour/framing distance within the laboratory's calibrated threshold and beyond the "
        "original laboratory's), else by the parent (wbcproc.routing)",
    }


def _record(parent, replay, kept, rejected, metrics, why_not, routing, t0) -> dict[str, Any]:
    """The sidecar's ``adaptation`` block: how, from what, on which cells, with what result."""
    method = STAGE_METHOD if why_not is None else HEAD_METHOD
    taken = metrics.get("unreviewed", {})
    if taken.get("kept"):
        method += f"; with {taken['taken']} of the laboratory's unreviewed cells, pseudo-labelled by a first draft"
    if routing is not None:
        method += f"; routed with its parent {routing['parent_version']}: {routing['rule']}"
    return {
        "method": method,
        "stage_fine_tuned": why_not is None,
        "stage_not_fine_tuned_because": why_not,
        "parent": {"name": parent.name, "version": parent.version, "sha256": parent.sha256},
        "replay": replay is not None,
        "routing": routing,
        "lab_cells": [
            {
                "file": str(it.path),
                "sha256": it.sha256,
                "class": it.label,
                "use": "held out" if it.split == "test" else "fit",
            }
            for it in kept
        ],
        "rejected": [{"file": f, "reason": r} for f, r in rejected],
        "metrics": metrics,
        "seconds": round(time.time() - t0, 1),
    }


def _replay_or_say(parent_path: Path, parent, log) -> dict[str, np.ndarray] | None:
    """The parent's replay cells, or None - said, since the head then learns from the lab's cells only."""
    replay = load_replay(parent_path, parent.sha256)
    if replay is None:
        log(
            f"no replay features for this model ({replay_path(parent_path).name}): the head learns from the lab's cells only"
        )
    return replay


def adapt(
    data: list[str | Path],
    out: str | Path,
    model: str | Path | None = None,
    *,
    min_per_class: int = MIN_PER_CLASS,
    holdout: float = HOLDOUT_FRACTION,
    version: str | None = None,
    threads: int = 0,
    stage: bool = True,
    route: bool = True,
    unreviewed: list[Path] | None = None,
    time_budget_s: float = ADAPT_TIME_BUDGET_S,
    log=print,
) -> dict[str, Any]:
    """Adapt the model to the laboratory's cells - its last stage and head (``stage``, where PyTorch, the
    model's graph and its replay cells allow; else the head alone); write ``out/model.onnx`` + sidecar only
    if every guard rail holds, with the parent beside it where the laboratory's slides can be told from the
    original laboratory's (``route``: :func:`_routing_plan`); returns the summary.  ``unreviewed``: the
    laboratory's unreviewed single-cell images, confidently pseudo-labelled by a first draft and used for a
    second one where that does not lose (:func:`_with_unreviewed`).  ``time_budget_s`` (0: none): the
    fine-tunes run fewer epochs where they would not fit (:data:`wbcproc.defaults.ADAPT_TIME_BUDGET_S`)."""
    import tempfile

    from wbcproc.resolve import resolve_model_path

    t0 = time.time()
    deadline = time.monotonic() + time_budget_s - FINISH_RESERVE_S if time_budget_s > 0 else None
    parent_path = resolve_model_path(model)
    parent = read_sidecar(parent_path)
    spec = parent.preprocess
    g, counts = _lab_cells(data, min_per_class, holdout)
    extractor = Features(parent_path, threads)
    imgs, kept, rejected = prepare_items(g.items, spec)
    for f, why in rejected:
        log(f"skipped {f}: {why}")
    labels = np.array([CLASSES.index(it.label) for it in kept])
    is_fit = np.array([it.split != "test" for it in kept])
    replay = _replay_or_say(parent_path, parent, log)
    why_not = _stage_unavailable(parent_path, replay) if stage else "not asked for (--head-only)"
    if stage and why_not:
        log(f"the last stage is not fine-tuned ({why_not}): the head alone is refitted")
    out = Path(out)
    metrics: dict[str, Any] = {"counts_fitted": counts, "held_out_cells": int((~is_fit).sum()),
                               "time_budget_s": time_budget_s or None}  # fmt: skip
    lab = _lab(imgs, labels, is_fit, counts, extractor, replay, spec)
    lab_ref = lab_reference(lab.lab_feats, data)
    plan = _routing_plan(lab, parent.sidecar.domain, lab_ref, metrics, log) if route else None
    max_drop = MAX_ORIGINAL_DROP if plan is None else ROUTED_MAX_ORIGINAL_DROP
    with tempfile.TemporaryDirectory(prefix="wbc-adapt-") as tmp:
        draft = Path(tmp) / "model.onnx"
        judged, why_not = _best_draft(
            lab, extractor, replay, spec, parent, parent_path, draft, metrics, why_not, max_drop, threads, deadline, log
        )
        if unreviewed:
            ctx = {"parent_path": parent_path, "spec": spec, "draft": draft, "threads": threads, "parent": parent,
                   "extractor": extractor, "replay": replay, "max_drop": max_drop, "deadline": deadline,
                   "reviewed_sha256": {it.sha256 for it in kept}}  # fmt: skip
            judged, why_not = _with_unreviewed(list(unreviewed), lab, (judged, why_not), ctx, metrics, log)
        out.mkdir(parents=True, exist_ok=True)
        onnx_out = out / "model.onnx"
        shutil.move(str(draft), str(onnx_out))
    routing = None if plan is None else _write_parent(parent_path, parent, out, plan)
    stamp = datetime.now(UTC)
    domain = _with_uncertainty(parent.sidecar.domain, judged, lab, parent, log)
    domain = _with_lab_domain(domain, lab_ref, _lab_uncertainty(judged, lab, metrics, log))
    adaptation = _record(parent, replay, kept, rejected, metrics, why_not, routing, t0)
    side = parent.sidecar.replace(
        version=version or f"{parent.version}+lab.{version_stamp(stamp)}", created_at=stamp.isoformat(timespec="seconds"),
        temperature=judged.temperature, review_threshold=judged.review_threshold, domain=domain, adaptation=adaptation,
        weights=_adapted_weights(parent_path, parent, onnx_out, log),
    )  # fmt: skip
    write_sidecar(onnx_out, side)
    info = read_sidecar(onnx_out)
    log(json.dumps(metrics))
    return {"run_dir": str(out), "version": info.version, "sha256": info.sha256, "metrics": metrics,
            "seconds": adaptation["seconds"], "routed": routing is not None}  # fmt: skip


def _adapted_weights(parent_path: Path, parent, onnx_out: Path, log):
    """The adapted model's float weights beside it (:func:`training.weights.adapted_state`), where the parent
    carries its own; else none, said."""
    if parent.sidecar.weights is None:
        log(f"no float weights written: the parent {parent.version} carries none (an int8 file alone)")
        return None
    try:
        from training.weights import FOLDED_NOTE, adapted_state, load_float_weights, save_float_weights

        parent_state, _ = load_float_weights(parent_path)
    except ImportError as exc:
        log(f"no float weights written: {exc.name} is not installed (pip install 'wbc[train]')")
        return None
    g = load_graph(onnx_out)
    state = adapted_state(parent_state, parent_path, g.model, (g.head.weight, g.head.bias))
    return save_float_weights(state, onnx_out, architecture=parent.sidecar.weights.architecture, note=FOLDED_NOTE)


def _cache_jpeg(jpeg: np.ndarray, offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cache's own JPEG bytes of these cells (prepared, model-sized), concatenated, with offsets."""
    parts = [jpeg[offsets[i] : offsets[i + 1]] for i in idx]
    return np.concatenate(parts), np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)


def replay_images(replay: dict[str, np.ndarray], part: str) -> np.ndarray | None:
    """The replay cells of ``part`` (train | check) as prepared uint8 images in the model's colour order
    (as the cache stores them, ``training.dataset.load_cache``), if the replay file holds them."""
    from training.dataset import jpeg_decoder

    if f"{part}_jpeg" not in replay:
        return None
    decode, jpeg, off = jpeg_decoder("opencv"), replay[f"{part}_jpeg"], replay[f"{part}_offsets"]
    return np.stack([decode(jpeg[off[i] : off[i + 1]]) for i in range(len(off) - 1)])


def make_replay(
    model: str | Path,
    cache: str | Path,
    per_class_train: int = 50,
    per_class_check: int = 30,
    exclude: str | None = None,
) -> Path:
    """Pooled features of a few training and validation cells per class of the model's own training cache,
    computed by that model file: the replay sample and the original-laboratory check of ``adapt``.
    ``exclude``: leave out cache files whose path contains it - the source a twin model was trained without
    (as ``gpu_train --exclude-train``), so its replay holds only what it learnt from."""
    from training.dataset import load_cache
    from wbcproc.preprocess import to_input as _to_input

    info = read_sidecar(model)
    data = load_cache(cache)
    with np.load(cache, allow_pickle=False) as z:  # the cells' own JPEG bytes, kept as they are
        jpeg, offsets = z["jpeg"], z["offsets"]
    rng = np.random.default_rng(0)
    ext = Features(info.onnx_path)
    out: dict[str, Any] = {"model_sha256": np.array(info.sha256)}
    allowed = np.array([exclude is None or exclude not in str(f) for f in data.files], dtype=bool)
    for part, split, k in (("train", "train", per_class_train), ("check", "val", per_class_check)):
        idx = np.concatenate(
            [
                rng.choice(np.where((data.splits == split) & (data.labels == c) & allowed)[0], k, replace=False)
                for c in range(len(CLASSES))
            ]
        )
        out[f"{part}_x"] = ext(_to_input(data.images[idx], data.spec))[1].astype(np.float16)
        out[f"{part}_y"] = data.labels[idx].astype(np.int64)
        out[f"{part}_jpeg"], out[f"{part}_offsets"] = _cache_jpeg(jpeg, offsets, idx)
    path = replay_path(info.onnx_path)
    np.savez_compressed(path, **out)
    return path
