"""The pipeline as pure functions (Kedro-style nodes), wired by ``flows/`` or called directly.

    scan_sample -> classify_candidates -> summarise -> write_reports

``process_sample`` runs them in a row; the Prefect flow runs the same functions as tasks.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wbcproc import __version__
from wbcproc.aggregate import CellResult, Differential, differential
from wbcproc.config import Settings, load_settings
from wbcproc.correction import correct
from wbcproc.discovery import Candidate, Rejected, SampleInventory, require_images, scan_sample
from wbcproc.domain import assess, cell_features
from wbcproc.fields import crop_cell, locate
from wbcproc.flags import decide_flags, sample_flag, sample_flags
from wbcproc.framing import FrameInfo, sample_framing, uses_sample_ruler
from wbcproc.imageio import ImageRejected, read_image
from wbcproc.method import method_text
from wbcproc.model import Classifier, load_classifier
from wbcproc.preprocess import PreprocessSpec, measure_normalised, prepare_image, to_input
from wbcproc.routing import LAB, choose

THUMB_PX = 64
PREPARED_CACHE_BYTES = 96 * 1024 * 1024  # model-sized cells prepared by the ruler pre-pass (~2,000 at 128 px)


@dataclass
class Classified:
    cells: list[CellResult]
    rejected: list[Rejected]
    thumbnails: dict[str, bytes]
    timings: dict[str, float] = field(default_factory=dict)
    fields: list[dict[str, Any]] = field(default_factory=list)
    overviews: dict[str, bytes] = field(default_factory=dict)
    domain_features: list[np.ndarray] = field(default_factory=list)
    scale: dict[str, Any] | None = None  # the sample's red-cell ruler for single-cell images (see framing)
    # a routed laboratory model (wbcproc.routing): which model read the slide, and why
    routing: dict[str, Any] | None = None
    classifier: Classifier | None = None  # the model that read the slide, where routing chose it


@dataclass
class _Unit:
    """One cell image to classify: a whole single-cell file, or a crop from a field."""

    name: str
    bgr: np.ndarray | None
    notes: tuple[str, ...]
    box: tuple[int, int, int, int] | None = None
    field: str | None = None
    prepared: _Prepared | None = None  # made by the pre-pass: nothing left to do but classify


@dataclass
class _Prepared:
    """A single-cell image as the pre-pass prepared it, framed by its own red-cell measurement."""

    x: np.ndarray  # the model-sized cell
    features: np.ndarray  # its domain-guard features
    thumbnail: bytes | None
    notes: tuple[str, ...]


def _thumbnail(bgr: np.ndarray) -> bytes:
    h, w = bgr.shape[:2]
    s = THUMB_PX / max(h, w)
    small = cv2.resize(bgr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", small)
    return buf.tobytes() if ok else b""


def is_field(cand: Candidate, settings: Settings, image_type: str = "auto") -> bool:
    """Single-cell crop or smear field: sample metadata decides, else the image size."""
    if image_type in ("cell", "field"):
        return image_type == "field"
    return max(cand.width, cand.height) >= settings.field_min_px


def _units(
    candidates: list[Candidate],
    settings: Settings,
    image_type: str,
    rejected: list[Rejected],
    fields_out: list[dict[str, Any]],
    t: dict[str, float],
    kept: dict[str, _Prepared] | None = None,
) -> Iterator[_Unit]:
    for cand in candidates:
        cached = kept.pop(cand.file, None) if kept is not None else None
        if cached is not None:
            yield _Unit(cand.file, None, cached.notes, prepared=cached)
            continue
        t0 = time.perf_counter()
        try:
            decoded = read_image(cand.path)
        except ImageRejected as exc:
            rejected.append(Rejected(cand.file, exc.reason, exc.code))
            t["decode"] += time.perf_counter() - t0
            continue
        t["decode"] += time.perf_counter() - t0
        if not is_field(cand, settings, image_type):
            yield _Unit(cand.file, decoded.bgr, decoded.notes)
            continue
        t1 = time.perf_counter()
        res = locate(decoded.bgr)
        t["locate"] = t.get("locate", 0.0) + time.perf_counter() - t1
        counted = [d for d in res.detections if not d.edge]
        fields_out.append(
            {
                "file": cand.file,
                "rbc_diameter_px": round(res.rbc_diameter_px, 1),
                "scale_measured": res.scale_measured,
                "detections": [{"box": list(d.box), "score": d.score, "edge": d.edge} for d in res.detections],
                "counted": len(counted),
                "edge_not_counted": len(res.detections) - len(counted),
                "_bgr": decoded.bgr,
            }
        )
        if not counted and not res.detections:
            fields_out[-1]["note"] = "no white cell found in this field"
        for i, det in enumerate(counted, start=1):
            crop = crop_cell(decoded.bgr, det, res.rbc_diameter_px)
            yield _Unit(f"{cand.file}#{i}", crop, decoded.notes, det.box, cand.file)


class _Budget:
    """Bytes left to keep, shared by the pre-pass threads."""

    def __init__(self, n: int) -> None:
        self.left, self._lock = n, threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if n > self.left:
                return False
            self.left -= n
            return True


def _sample_scale(
    candidates: list[Candidate],
    spec: PreprocessSpec,
    settings: Settings,
    image_type: str,
    t: dict[str, float],
    thumbnails: bool,
) -> tuple[dict[str, Any] | None, dict[str, FrameInfo], dict[str, np.ndarray], dict[str, _Prepared]]:
    """One slide, one magnification: the red-cell ruler of the sample's single-cell images (median of each
    image's measurement), so that every cell is framed at a consistent scale.  A first pass (on two threads:
    OpenCV releases the GIL) decodes and measures each image - its framing and white-balance gain, kept for
    the main pass - and prepares it for the network framed by its own measurement, which is what the sample's
    ruler does too unless the image's own measurement is missing or off (``framing.uses_sample_ruler``):
    those few are dropped once the ruler is known and prepared again by the main pass.  The prepared cells
    (model-sized, with features and thumbnail) are kept up to ``PREPARED_CACHE_BYTES`` (~2,000 cells; a
    larger sample is decoded again for the rest, so memory stays bounded), so the main pass is mostly ONNX
    Runtime alone; images that fail to decode are left to the main pass to reject."""
    t0 = time.perf_counter()
    singles = [c for c in candidates if not is_field(c, settings, image_type)]
    keep: dict[str, _Prepared] = {}  # what the main pass reuses, up to PREPARED_CACHE_BYTES
    budget = _Budget(PREPARED_CACHE_BYTES)

    def one(cand: Candidate) -> tuple[str, FrameInfo | None, np.ndarray | None] | None:
        try:
            decoded = read_image(cand.path)
        except ImageRejected:
            return None
        info, gain, normalised = measure_normalised(decoded.bgr, spec)
        if budget.take(spec.input_size**2 * 3):
            x = prepare_image(normalised, spec, located=info, normalised=True)
            thumb = _thumbnail(decoded.bgr) if thumbnails else None
            keep[cand.file] = _Prepared(x, cell_features(x, spec.colour_order), thumb, decoded.notes)
        return cand.file, info, gain

    located: dict[str, FrameInfo] = {}
    gains: dict[str, np.ndarray] = {}
    with ThreadPoolExecutor(max_workers=min(2, max(1, len(singles))), thread_name_prefix="wbc-measure") as pool:
        for res in pool.map(one, singles):
            if res is None:
                continue
            name, info, gain = res
            if info is not None:
                located[name] = info
            if gain is not None:
                gains[name] = gain
    t["scale"] = t.get("scale", 0.0) + time.perf_counter() - t0
    return _ruler(located, spec, keep), located, gains, keep


def _ruler(located: dict[str, FrameInfo], spec: PreprocessSpec, keep: dict[str, _Prepared]) -> dict[str, Any] | None:
    """The sample's ruler from the images' own measurements; the cells it frames otherwise than their own
    measurement did are dropped from ``keep`` (the main pass prepares them again, by the ruler)."""
    ruler, every = sample_framing(list(located.values()), spec.framing)
    if ruler is None:
        return None
    measured = sum(i.rbc_px is not None for i in located.values())
    scale: dict[str, Any] = {"rbc_px": ruler, "measured": measured, "images": len(located)}
    if every:  # only then: the training laboratory's reports keep their exact form
        scale["every_image_by_ruler"] = True
    for name, info in located.items():
        if uses_sample_ruler(info, ruler, spec.framing, every=every):
            keep.pop(name, None)
    return scale


class _Batches:
    """Decoded cells -> prepared batches -> ONNX Runtime.  A batch's cells are prepared on two threads and
    the inference of one batch overlaps the decoding and preparation of the next (ONNX Runtime and OpenCV
    both release the GIL): at most two batches are in memory, and results are taken in order."""

    def __init__(
        self,
        classifier: Classifier,
        batch_size: int,
        threshold: float,
        prep: Callable[[_Unit], tuple[np.ndarray, np.ndarray, bytes | None]],
        timings: dict[str, float],
        on_batch: Callable[[int], None] | None,
    ) -> None:
        self.classifier, self.batch_size, self.threshold, self.prep = classifier, batch_size, threshold, prep
        self.t, self.on_batch = timings, on_batch
        self.cells: list[CellResult] = []
        self.feats: list[np.ndarray] = []
        self.thumbs: dict[str, bytes] = {}
        self._decoded: list[_Unit] = []
        self._batch: list[_Unit] = []
        self._prepared: list[np.ndarray] = []
        self._pending: list[tuple[Future, list[_Unit]]] = []
        self._workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="wbc-prepare")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wbc-infer")

    def add(self, unit: _Unit) -> None:
        self._decoded.append(unit)
        if len(self._decoded) >= self.batch_size:
            self._prepare_decoded()

    def finish(self) -> None:
        self._prepare_decoded()
        self._flush()
        self._collect()

    def close(self) -> None:
        self._workers.shutdown(wait=True)
        self._executor.shutdown(wait=True)

    def _infer(self, x_batch: np.ndarray) -> np.ndarray:
        t3 = time.perf_counter()
        probs = self.classifier.probabilities(x_batch)
        self.t["inference"] += time.perf_counter() - t3
        return probs

    def _collect(self) -> None:
        classes = self.classifier.info.classes
        while self._pending:
            fut, units = self._pending.pop(0)
            probs = fut.result()
            order = np.argsort(-probs, axis=1)
            for i, unit in enumerate(units):
                top, second = int(order[i, 0]), int(order[i, 1])
                conf = float(probs[i, top])
                self.cells.append(
                    CellResult(
                        file=unit.name,
                        label=classes[top],
                        confidence=round(conf, 6),
                        runner_up=classes[second],
                        runner_up_confidence=round(float(probs[i, second]), 6),
                        review=conf < self.threshold,
                        notes=unit.notes,
                        box=unit.box,
                        field=unit.field,
                    )
                )
            if self.on_batch:
                self.on_batch(len(units))

    def _flush(self) -> None:
        if not self._batch:
            return
        t2 = time.perf_counter()
        x = to_input(np.stack(self._prepared), self.classifier.info.preprocess)
        self.t["preprocess"] += time.perf_counter() - t2
        self._collect()  # the previous batch: keeps one in flight and the order of cells
        self._pending.append((self._executor.submit(self._infer, x), list(self._batch)))
        self._batch.clear()
        self._prepared.clear()

    def _prepare_decoded(self) -> None:
        t1 = time.perf_counter()
        for unit, (x, f, thumb) in zip(self._decoded, self._workers.map(self.prep, self._decoded), strict=True):
            self._prepared.append(x)
            self.feats.append(f)
            if thumb is not None:
                self.thumbs[unit.name] = thumb
            self._batch.append(unit)
        self._decoded.clear()
        self.t["preprocess"] += time.perf_counter() - t1
        if len(self._batch) >= self.batch_size:
            self._flush()


def classify_candidates(
    candidates: list[Candidate],
    classifier: Classifier,
    settings: Settings,
    *,
    thumbnails: bool = True,
    image_type: str = "auto",
    on_batch: Callable[[int], None] | None = None,
) -> Classified:
    """Decode, (locate,) preprocess and classify in batches; decode failures become rejections.

    Memory stays bounded by one batch of decoded cells (plus small thumbnails), whatever the folder size.
    """
    info = classifier.info
    spec = info.preprocess
    threshold = settings.review_threshold if settings.review_threshold is not None else info.review_threshold
    rejected: list[Rejected] = []
    fields: list[dict[str, Any]] = []
    t = {"decode": 0.0, "preprocess": 0.0, "inference": 0.0}
    scale, located, gains, kept = (
        _sample_scale(candidates, spec, settings, image_type, t, thumbnails)
        if spec.framing is not None
        else (None, {}, {}, {})
    )
    ruler = scale["rbc_px"] if scale else None
    every = bool(scale and scale.get("every_image_by_ruler"))

    def prep(unit: _Unit) -> tuple[np.ndarray, np.ndarray, bytes | None]:
        if unit.prepared is not None:
            return unit.prepared.x, unit.prepared.features, unit.prepared.thumbnail
        x = prepare_image(
            unit.bgr,
            spec,
            framed=unit.field is not None,
            rbc_px=ruler,
            ruler_for_every_image=every,
            located=located.get(unit.name),
            wb_gain=gains.get(unit.name),
        )
        return x, cell_features(x, spec.colour_order), _thumbnail(unit.bgr) if thumbnails else None

    runner = _Batches(classifier, settings.batch_size, threshold, prep, t, on_batch)
    try:
        for unit in _units(candidates, settings, image_type, rejected, fields, t, kept):
            runner.add(unit)
        runner.finish()
    finally:
        runner.close()
    overviews = {}
    for f in fields:
        bgr = f.pop("_bgr")
        if thumbnails:
            labels = {c.box: c for c in runner.cells if c.field == f["file"]}
            overviews[f["file"]] = overview_png(bgr, f["detections"], labels)
            f["overview_scale"] = overview_scale(bgr)  # its pixels per field pixel: where a box lies on it
    classified = Classified(runner.cells, rejected, runner.thumbs, t, fields, overviews, runner.feats, scale)
    if classifier.routing is not None:
        return _routed(classified, candidates, classifier, settings, thumbnails, image_type)
    return classified


def _routed(
    classified: Classified,
    candidates: list[Candidate],
    classifier: Classifier,
    settings: Settings,
    thumbnails: bool,
    image_type: str,
) -> Classified:
    """A routed laboratory model read the slide: kept where ``wbcproc.routing.choose`` picks the laboratory's
    model, else read again by the parent; the result says which model and why."""
    decision = choose(np.array(classified.domain_features), classifier.info.sidecar.domain, classifier.routing)
    chosen = classifier if decision["model"] == LAB else classifier.parent()
    if chosen is not classifier:
        timings = classified.timings
        classified = classify_candidates(
            candidates, chosen, settings, thumbnails=thumbnails, image_type=image_type
        )  # no progress callback: the progress already reached its total once
        classified.timings = {k: timings.get(k, 0.0) + v for k, v in classified.timings.items()}
    classified.routing = {**decision, "read_by": chosen.info.summary(), "routed_model": classifier.info.summary()}
    classified.classifier = chosen
    return classified


def locate_and_classify(bgr: np.ndarray, classifier: Classifier | None) -> dict[str, Any]:
    """Every detection of a field, classified (edge cells too, for display), split into white cells and
    platelets: a nucleus-coloured blob the classifier calls a platelet (a clump) is not a white cell.

    Returns ``{"cells": [...], "platelets": [...], "rbc_diameter_px": float}``, each entry
    ``{"box", "score", "label", "confidence", "edge"}`` (label/confidence None without a classifier).
    """
    res = locate(bgr)
    entries = [
        {"box": list(d.box), "score": d.score, "label": None, "confidence": None, "edge": d.edge}
        for d in res.detections
    ]
    if classifier is not None and entries:
        spec = classifier.info.preprocess
        crops = [crop_cell(bgr, d, res.rbc_diameter_px) for d in res.detections]
        probs = classifier.probabilities(to_input(np.stack([prepare_image(c, spec, framed=True) for c in crops]), spec))
        for e, p in zip(entries, probs, strict=True):
            k = int(p.argmax())
            e.update(label=classifier.info.classes[k], confidence=round(float(p[k]), 4))
    return {
        "cells": [e for e in entries if e["label"] != "platelet"],
        "platelets": [e for e in entries if e["label"] == "platelet"],
        "rbc_diameter_px": round(res.rbc_diameter_px, 1),
    }


OVERVIEW_MAX_PX = 1200  # a field overview's longer side at most


def overview_scale(bgr: np.ndarray) -> float:
    """The overview's pixels per field pixel (1 for fields up to ``OVERVIEW_MAX_PX``)."""
    h, w = bgr.shape[:2]
    return OVERVIEW_MAX_PX / max(h, w) if max(h, w) > OVERVIEW_MAX_PX else 1.0


def overview_png(bgr: np.ndarray, detections: list[dict[str, Any]], labels: dict) -> bytes:
    """The field with each detection's box and class (orange: cut by the border, not counted)."""
    img = bgr.copy()
    h, w = img.shape[:2]
    s = overview_scale(bgr)
    if s < 1:
        img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    thick = max(2, round(min(img.shape[:2]) / 200))
    for d in detections:
        x0, y0, x1, y1 = (round(v * s) for v in d["box"])
        cell = labels.get(tuple(d["box"]))
        colour = (0, 165, 255) if d["edge"] else (0, 160, 0)
        cv2.rectangle(img, (x0, y0), (x1, y1), colour, thick)
        text = "edge" if d["edge"] else (f"{cell.label} {cell.confidence:.2f}" if cell else "")
        cv2.putText(
            img,
            text,
            (x0 + 3, max(12, y0 - 5)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5 * thick / 2,
            colour,
            max(1, thick // 2),
            cv2.LINE_AA,
        )
    ok, buf = cv2.imencode(".png", img)
    return buf.tobytes() if ok else b""


def summarise(
    inventory: SampleInventory,
    classified: Classified,
    classifier: Classifier,
    settings: Settings,
    *,
    processed_at: datetime | None = None,
) -> dict[str, Any]:
    """Everything the reports need, as one JSON-ready dict (the content of ``<sample_id>.json``)."""
    classifier = classified.classifier or classifier  # a routed model: the one that read the slide
    meta = inventory.metadata
    diff: Differential = differential(
        (c.label for c in classified.cells), (c.review for c in classified.cells), meta.wbc_count
    )
    rejected = [*inventory.rejected, *classified.rejected]
    rejected.sort(key=lambda r: r.file)
    confusion = classifier.info.sidecar.confusion_val
    corrected = correct(diff.counts, confusion.counts) if confusion is not None else None
    domain = assess(
        np.array(classified.domain_features),
        classifier.info.sidecar.domain,
        np.array([1.0 - c.confidence for c in classified.cells]),
    )
    decision = decide_flags(
        diff,
        settings.reference,
        corrected,
        sample=sample_flags(
            diff, settings, n_rejected=len(rejected), metadata_errors=meta.errors, age_group=meta.age_group
        ),
        first=[_domain_shift_flag(domain)] if domain is not None and domain["shifted"] else [],
    )
    drivers = decision.drivers
    info = classifier.info
    threshold = settings.review_threshold if settings.review_threshold is not None else info.review_threshold
    return {
        "sample_id": inventory.sample_id,
        # a preliminary report is the machine's pre-classification; ``wbc verify`` makes the final one.  The
        # report id ties an edited workbook to exactly this report (wbcproc.verify)
        "status": "preliminary",
        "report_id": uuid.uuid4().hex,
        "report_version": 1,  # a changed re-drop of a reported sample is version 2, 3... (the watcher's ledger)
        "processed_at": (processed_at or datetime.now(UTC)).isoformat(timespec="seconds"),
        **diff.report_fields(),
        "cells_classified": diff.n_cells,
        # the cells marked on the Cells sheet: below the review threshold, or behind a flag (flag drivers)
        "cells_for_review": sum(1 for c in classified.cells if c.review or c.label in drivers),
        "review_threshold": threshold,
        "flags": decision.flags,
        "corrected": _corrected_block(corrected, confusion),
        "withheld_flags": decision.withheld,
        "flag_drivers": sorted(drivers),
        "flag_performance": info.sidecar.flag_performance,
        "cells": [c.as_dict() | {"flag_driver": c.label in drivers} for c in classified.cells],
        "fields": classified.fields,
        "domain": domain,
        "routing": classified.routing,
        "scale": classified.scale,
        "rejected": [{"file": r.file, "reason": r.reason, "code": r.code} for r in rejected],
        "ignored": [{"file": i.file, "reason": i.reason} for i in inventory.ignored],
        "metadata": meta.as_dict(),
        "model": {**info.summary(), "classes": list(info.classes), "input_size": info.preprocess.input_size},
        "software_version": __version__,
        "config": _config_block(settings),
        "method": method_text(info.summary(), classified.routing),
        "disclaimer": "Decision support only, not a diagnosis: results require review by a qualified person.",
    }


def _corrected_block(corrected, confusion) -> dict[str, Any] | None:
    """The confusion-corrected differential with its method, or None where the sidecar has no confusion."""
    if corrected is None:
        return None
    return {
        **corrected.as_dict(),
        "method": "adjusted classify-and-count: maximum-likelihood composition given the model's validation "
        "confusion matrix (EM), 95% intervals by bootstrap over cells and confusion-matrix uncertainty",
        "confusion_source": confusion.source if confusion is not None else None,
    }


def _config_block(settings: Settings) -> dict[str, Any]:
    """The settings a report was made with (the reference intervals and their source among them)."""
    return {
        "reference_intervals": settings.reference.as_dict(),
        "min_wbc": settings.min_wbc,
        "max_review_share": settings.max_review_share,
        "max_pixels": settings.max_pixels,
        "min_side_px": settings.min_side_px,
        "source": settings.source,
        "hash": settings.config_hash(),
        "outputs": settings.outputs(),
    }


def _domain_shift_flag(domain: dict[str, Any]) -> dict[str, Any]:
    """DOMAIN_SHIFT, saying which of the guard's reasons tripped and by how much."""
    why = []
    if "colour/framing" in domain["reasons"]:
        why.append(f"stain/camera/framing distance {domain['distance']:.2f} > calibrated {domain['threshold']:.2f}")
    if "laboratory not validated" in domain["reasons"]:
        why.append(
            f"they match laboratory {domain['matched_lab']['name']}, to which the model was adapted without "
            "being validated there (too few held-out cells, or scored below the bar: see the model's sidecar)"
        )
    if "model uncertainty" in domain["reasons"]:
        where = f" on laboratory {domain['uncertainty_reference']}" if domain.get("uncertainty_reference") else ""
        why.append(
            f"mean model uncertainty {domain['uncertainty']:.3f} > calibrated{where} "
            f"{domain['uncertainty_threshold']:.3f} for {domain['cells']} cells"
        )
    return sample_flag(
        "DOMAIN_SHIFT",
        f"these images differ from the model's training images ({'; '.join(why)}): the "
        "differential may be wrong; verify by manual review before use",
        domain["distance"],
    )


def run_sample(
    folder: str | Path, out_dir: str | Path, classifier: Classifier, settings: Settings
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Scan, classify, summarise and write all reports for one folder; returns the result and the paths."""
    from wbcproc.report import write_reports

    inventory = require_images(scan_sample(folder, settings))
    classified = classify_candidates(
        inventory.candidates, classifier, settings, image_type=inventory.metadata.image_type
    )
    result = summarise(inventory, classified, classifier, settings)
    return result, write_reports(result, classified.thumbnails, out_dir, classified.overviews)


def process_sample(
    folder: str | Path,
    out_dir: str | Path,
    *,
    model: str | Path | None = None,
    settings: Settings | None = None,
) -> dict[str, Path]:
    """:func:`run_sample` with the model and settings resolved the default way; returns the paths written."""
    settings = settings or load_settings()
    return run_sample(folder, out_dir, load_classifier(model, settings.threads), settings)[1]
