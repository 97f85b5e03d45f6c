"""The pipeline as pure functions (Kedro-style nodes), wired by ``flows/`` or called directly.

    scan_sample -> classify_candidates -> summarise -> write_reports

``process_sample`` runs them in a row; the Prefect flow runs the same functions as tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wbcproc import __version__
from wbcproc.aggregate import CellResult, Differential, differential
from wbcproc.classes import CLASSES, WBC_CLASSES
from wbcproc.config import Settings, load_settings
from wbcproc.discovery import Candidate, Rejected, SampleInventory, scan_sample
from wbcproc.flags import interval_flags, sample_flags
from wbcproc.imageio import ImageRejected, read_image
from wbcproc.model import Classifier, load_classifier
from wbcproc.preprocess import prepare_image, to_input

THUMB_PX = 64


@dataclass
class Classified:
    cells: list[CellResult]
    rejected: list[Rejected]
    thumbnails: dict[str, bytes]
    timings: dict[str, float] = field(default_factory=dict)


def _thumbnail(bgr: np.ndarray) -> bytes:
    h, w = bgr.shape[:2]
    s = THUMB_PX / max(h, w)
    small = cv2.resize(bgr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", small)
    return buf.tobytes() if ok else b""


def _batches(items: list[Candidate], size: int) -> Iterator[list[Candidate]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def classify_candidates(
    candidates: list[Candidate],
    classifier: Classifier,
    settings: Settings,
    *,
    thumbnails: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> Classified:
    """Decode, preprocess and classify in batches; decode failures become rejections.

    Memory stays bounded by one batch of decoded images (plus small thumbnails), whatever the folder size.
    """
    info = classifier.info
    spec = info.preprocess
    threshold = settings.review_threshold if settings.review_threshold is not None else info.review_threshold
    cells: list[CellResult] = []
    rejected: list[Rejected] = []
    thumbs: dict[str, bytes] = {}
    t = {"decode": 0.0, "preprocess": 0.0, "inference": 0.0}
    for batch in _batches(candidates, settings.batch_size):
        prepared, kept, notes = [], [], []
        for cand in batch:
            t0 = time.perf_counter()
            try:
                decoded = read_image(cand.path)
            except ImageRejected as exc:
                rejected.append(Rejected(cand.file, exc.reason, exc.code))
                t["decode"] += time.perf_counter() - t0
                continue
            t1 = time.perf_counter()
            t["decode"] += t1 - t0
            prepared.append(prepare_image(decoded.bgr, spec))
            if thumbnails:
                thumbs[cand.file] = _thumbnail(decoded.bgr)
            t["preprocess"] += time.perf_counter() - t1
            kept.append(cand)
            notes.append(decoded.notes)
        if not kept:
            if on_batch:
                on_batch(len(batch))
            continue
        t2 = time.perf_counter()
        x = to_input(np.stack(prepared), spec)
        t3 = time.perf_counter()
        probs = classifier.probabilities(x)
        t["preprocess"] += t3 - t2
        t["inference"] += time.perf_counter() - t3
        order = np.argsort(-probs, axis=1)
        for i, cand in enumerate(kept):
            top, second = int(order[i, 0]), int(order[i, 1])
            conf = float(probs[i, top])
            cells.append(
                CellResult(
                    file=cand.file,
                    label=info.classes[top],
                    confidence=round(conf, 6),
                    runner_up=info.classes[second],
                    runner_up_confidence=round(float(probs[i, second]), 6),
                    review=conf < threshold,
                    notes=notes[i],
                )
            )
        if on_batch:
            on_batch(len(batch))
    return Classified(cells, rejected, thumbs, t)


def summarise(
    inventory: SampleInventory,
    classified: Classified,
    classifier: Classifier,
    settings: Settings,
    *,
    processed_at: datetime | None = None,
) -> dict[str, Any]:
    """Everything the reports need, as one JSON-ready dict (the content of ``<sample_id>.json``)."""
    meta = inventory.metadata
    diff: Differential = differential(
        (c.label for c in classified.cells), (c.review for c in classified.cells), meta.wbc_count
    )
    rejected = [*inventory.rejected, *classified.rejected]
    rejected.sort(key=lambda r: r.file)
    flags = interval_flags(diff, settings.reference)
    flags += sample_flags(diff, settings, n_rejected=len(rejected), metadata_errors=meta.errors)
    info = classifier.info
    threshold = settings.review_threshold if settings.review_threshold is not None else info.review_threshold
    return {
        "sample_id": inventory.sample_id,
        "processed_at": (processed_at or datetime.now(UTC)).isoformat(timespec="seconds"),
        "counts": {c: diff.counts[c] for c in CLASSES},
        "wbc_total": diff.wbc_total,
        "percent": {c: _r(diff.percent[c]) for c in WBC_CLASSES},
        "ci95": {c: (None if diff.ci95[c] is None else [_r(v) for v in diff.ci95[c]]) for c in WBC_CLASSES},
        "absolute": None if diff.absolute is None else {c: round(v, 4) for c, v in diff.absolute.items()},
        "absolute_unit": "10*9/L",
        "nrbc_per_100_wbc": _r(diff.nrbc_per_100_wbc),
        "platelets_seen": diff.platelets_seen,
        "cells_classified": diff.n_cells,
        "cells_for_review": diff.n_review,
        "review_threshold": threshold,
        "flags": flags,
        "cells": [c.as_dict() for c in classified.cells],
        "rejected": [{"file": r.file, "reason": r.reason, "code": r.code} for r in rejected],
        "ignored": [{"file": i.file, "reason": i.reason} for i in inventory.ignored],
        "metadata": meta.as_dict(),
        "model": {**info.summary(), "classes": list(info.classes), "input_size": info.preprocess.input_size},
        "software_version": __version__,
        "config": {
            "reference_intervals": settings.reference.as_dict(),
            "min_wbc": settings.min_wbc,
            "max_review_share": settings.max_review_share,
            "max_pixels": settings.max_pixels,
            "min_side_px": settings.min_side_px,
            "source": settings.source,
            "hash": settings.config_hash(),
        },
        "method": (
            "Each cell image is decoded with OpenCV, prepared as the model's sidecar prescribes and classified "
            f"by {info.name} {info.version} (ONNX Runtime). Percentages are of the WBC total (neutrophils, "
            "lymphocytes, monocytes, eosinophils, basophils, immature granulocytes); NRBC per 100 WBC; 95% "
            "confidence intervals are exact binomial (Clopper-Pearson)."
        ),
        "disclaimer": "Decision support only, not a diagnosis: results require review by a qualified person.",
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def process_sample(
    folder: str | Path,
    out_dir: str | Path,
    *,
    model: str | Path | None = None,
    settings: Settings | None = None,
) -> dict[str, Path]:
    """Scan, classify, summarise and write all reports for one sample folder; returns the paths written."""
    from wbcproc.report import write_reports

    settings = settings or load_settings()
    classifier = load_classifier(model, settings.threads)
    inventory = scan_sample(folder, settings)
    classified = classify_candidates(inventory.candidates, classifier, settings)
    result = summarise(inventory, classified, classifier, settings)
    return write_reports(result, classified.thumbnails, out_dir)
