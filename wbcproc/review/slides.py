"""What the review app shows: the worklist of reports, a slide's cells by class, its live differential.

Plain functions over the report folder (the JSON reports ``wbc process`` writes, the workbooks' thumbnails
and the drafts of :mod:`.drafts`); the web app only renders them.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wbcproc.bounded import TooLarge, check_workbook_size
from wbcproc.classes import CLASSES
from wbcproc.report import read_report_json
from wbcproc.report.excel import read_thumbnails
from wbcproc.review.drafts import active_reviewers, load_draft, reviewed_classes
from wbcproc.suggested import Suggested, read_suggested, suggested_in
from wbcproc.verify import final_result


@dataclass(frozen=True)
class Entry:
    """One preliminary report on the worklist."""

    report_id: str
    sample_id: str
    processed_at: str
    path: Path
    flags: list[str]
    domain_shift: bool
    wbc_total: int
    cells: int
    cells_for_review: int
    verified: list[dict[str, Any]]  # its final reports: version, by, at, file
    reviewing: list[str]  # accounts on the slide in the last minutes

    @property
    def awaiting(self) -> bool:
        return not self.verified


def _is_report_name(p: Path) -> bool:
    return p.suffix == ".json" and not p.name.endswith(".fhir.json") and ".final" not in p.name


_cache: dict[Path, tuple[float, dict[str, Any] | None]] = {}
_cache_lock = threading.Lock()


def _by_mtime(cache: dict[Path, tuple[float, Any]], path: Path, parse: Callable[[Path, os.stat_result], Any], missing):
    """``parse(path, stat)``, kept in ``cache`` until the file's mtime changes; ``missing`` for no file."""
    try:
        st = path.stat()
    except OSError:
        return missing
    with _cache_lock:
        hit = cache.get(path)
    if hit and hit[0] == st.st_mtime:
        return hit[1]
    value = parse(path, st)
    with _cache_lock:
        cache[path] = (st.st_mtime, value)
    return value


def _parse_report(path: Path, _st: os.stat_result) -> dict[str, Any] | None:
    return read_report_json(path)


def read_report(path: Path) -> dict[str, Any] | None:
    """A report's JSON (cached until the file changes); None for a file that is not a wbc report."""
    return _by_mtime(_cache, path, _parse_report, None)


def _finals(path: Path) -> list[dict[str, Any]]:
    stem = path.name[: -len(".json")]
    out = []
    for f in sorted(path.parent.glob(f"{stem}.final*.json")):
        if f.name.endswith(".fhir.json"):
            continue
        r = read_report(f)
        if r is not None and r.get("status") == "final":
            out.append({"version": r.get("final_version"), "by": r.get("verified_by"), "at": r.get("verified_at"),
                        "file": f.name})  # fmt: skip
    return sorted(out, key=lambda v: v["version"] or 0)


def _entry(reports: Path, p: Path) -> Entry | None:
    r = read_report(p)
    if r is None or r.get("status") != "preliminary":
        return None
    _index[r["report_id"]] = p
    draft = load_draft(reports, r["report_id"])
    return Entry(
        report_id=r["report_id"],
        sample_id=str(r.get("sample_id")),
        processed_at=str(r.get("processed_at", "")),
        path=p,
        flags=[f["code"] for f in r.get("flags", [])],
        domain_shift=any(f["code"] == "DOMAIN_SHIFT" for f in r.get("flags", [])),
        wbc_total=int(r.get("wbc_total") or 0),
        cells=len(r["cells"]),
        cells_for_review=int(r.get("cells_for_review") or 0),
        verified=_finals(p),
        reviewing=active_reviewers(draft),
    )


_index: dict[str, Path] = {}  # report id -> its preliminary JSON, as last seen


def worklist(reports: Path) -> list[Entry]:
    """Every preliminary report in ``reports``, newest first."""
    entries = (_entry(reports, p) for p in Path(reports).glob("*.json") if _is_report_name(p))
    return sorted((e for e in entries if e is not None), key=lambda e: e.processed_at, reverse=True)


def find(reports: Path, report_id: str) -> Entry | None:
    """The preliminary report ``report_id`` (where it was last seen, else looked for again)."""
    known = _index.get(report_id)
    if known is not None and known.parent == Path(reports):
        e = _entry(reports, known)
        if e is not None and e.report_id == report_id:
            return e
    return next((e for e in worklist(reports) if e.report_id == report_id), None)


def load_suggested(path: Path | None) -> Suggested:
    """The cells ``wbc adapt --suggest`` chose for review (its ``suggested.csv``), as ranks of file names by
    sample folder name; empty without the file.  Read again whenever the file changes."""
    return {} if path is None else _by_mtime(_suggested, path, lambda p, _st: read_suggested(p), {})


_suggested: dict[Path, tuple[float, Suggested]] = {}


def gallery(
    report: dict[str, Any], reviewed: dict[str, str], for_adaptation: Collection[str] = frozenset()
) -> list[dict[str, Any]]:
    """The cells in the report's order (flag drivers, then low confidence, then the rest, as the workbook
    lists them), each with its number (its thumbnail's), the model's call, the reviewed class if any and
    whether ``wbc adapt --suggest`` chose it for review (``for_adaptation``)."""
    ordered = sorted(
        enumerate(report["cells"]), key=lambda ic: (not ic[1].get("flag_driver", False), not ic[1]["review"])
    )
    fields = {f["file"]: (i, f) for i, f in enumerate(report.get("fields") or []) if f.get("overview")}
    return [
        {
            "n": i,
            "file": c["file"],
            "model_class": c["class"],
            "class": reviewed.get(c["file"], c["class"]),
            "reviewed": c["file"] in reviewed,
            "confidence": c["confidence"],
            "runner_up": c["runner_up"],
            "mark": "flag" if c.get("flag_driver") else "review" if c["review"] else "",
            "adapt": c["file"] in for_adaptation,
            "field": _on_field(c, fields),
        }
        for i, c in ordered
    ]


def _on_field(cell: dict[str, Any], fields: dict[str, tuple[int, dict[str, Any]]]) -> dict[str, Any] | None:
    """Where a field cell lies on its field's overview (the field's number and the box in overview pixels);
    None for a single-cell image or a field without an overview."""
    hit = fields.get(cell.get("field") or "")
    if hit is None or not cell.get("box"):
        return None
    i, f = hit
    s = float(f.get("overview_scale", 1.0))
    return {"n": i, "file": f["file"], "box": [round(v * s) for v in cell["box"]]}


def overview(reports: Path, report: dict[str, Any], n: int) -> Path | None:
    """The overview image of the report's field ``n``, if it is a file inside the report folder."""
    fields = report.get("fields") or []
    if not 0 <= n < len(fields) or not fields[n].get("overview"):
        return None
    path = (reports / fields[n]["overview"]).resolve()
    return path if path.is_file() and path.is_relative_to(reports.resolve()) else None


def preview(report: dict[str, Any], reviewed: dict[str, str]) -> dict[str, Any]:
    """The differential and flags as signing the reviewed classes now would make them (the same code)."""
    r = final_result(report, reviewed, by="", at="", version=0)
    marked = [c["file"] for c in report["cells"] if c.get("review") or c.get("flag_driver")]
    return {
        "counts": r["counts"],
        "percent": r["percent"],
        "ci95": r["ci95"],
        "wbc_total": r["wbc_total"],
        "reference": report["config"]["reference_intervals"]["percent"],
        "flags": [{"code": f["code"], "message": f.get("message", "")} for f in r["flags"]],
        "withheld": [{"code": f.get("code"), "message": f.get("message", "")} for f in r.get("withheld_flags") or []],
        "changed": sum(1 for c in r["cells"] if c["class"] != c["model_class"]),
        "open": sum(1 for f in marked if f not in reviewed),
    }


def slide(reports: Path, report: dict[str, Any], suggested: Suggested | None = None) -> dict[str, Any]:
    """Everything the slide page shows; ``suggested``: :func:`load_suggested`'s cells to mark for adaptation."""
    draft = load_draft(reports, report["report_id"])
    reviewed = reviewed_classes(draft)
    adapt = suggested_in(report, suggested) if suggested else {}
    return {"draft_version": draft["version"], "cells": gallery(report, reviewed, adapt),
            "preview": preview(report, reviewed), "classes": list(CLASSES), "for_adaptation": len(adapt)}  # fmt: skip


class Thumbnails:
    """The preliminary workbooks' cell thumbnails, by report and cell number, the latest ``keep`` reports kept.

    Reading a workbook's pictures takes most of a second for 400 cells, so the worklist warms the cache for
    the reports awaiting verification (:meth:`warm`, in a background thread) before a reviewer opens one;
    a report is read once however many requests ask for it at the same time."""

    def __init__(self, keep: int = 8) -> None:
        self._keep = keep
        self._by_report: OrderedDict[str, list[bytes | None]] = OrderedDict()
        self._loading: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def get(self, report_path: Path, report: dict[str, Any], n: int) -> bytes | None:
        pngs = self._pngs(report_path, report)
        return pngs[n] if 0 <= n < len(pngs) else None

    def warm(self, items: list[tuple[Path, dict[str, Any]]]) -> None:
        """Read these reports' thumbnails in the background (the first ``keep``; those cached are skipped)."""
        todo = [(p, r) for p, r in items[: self._keep] if r["report_id"] not in self._by_report]
        if todo:
            threading.Thread(target=lambda: [self._pngs(p, r) for p, r in todo], daemon=True).start()

    def _pngs(self, report_path: Path, report: dict[str, Any]) -> list[bytes | None]:
        rid = report["report_id"]
        with self._lock:
            if rid in self._by_report:
                self._by_report.move_to_end(rid)
                return self._by_report[rid]
            event = self._loading.get(rid)
            mine = event is None
            if mine:
                event = self._loading[rid] = threading.Event()
        if not mine:  # another request is reading this workbook: wait for it
            event.wait(60)
            with self._lock:
                return self._by_report.get(rid, [])
        try:
            pngs = self._load(report_path, report)
            with self._lock:
                self._by_report[rid] = pngs
                while len(self._by_report) > self._keep:
                    self._by_report.popitem(last=False)
        finally:
            with self._lock:
                self._loading.pop(rid, None)
            event.set()
        return pngs

    @staticmethod
    def _load(report_path: Path, report: dict[str, Any]) -> list[bytes | None]:
        xlsx = report_path.with_suffix(".xlsx")
        try:
            check_workbook_size(xlsx)
            by_file = read_thumbnails(xlsx)
        except (OSError, TooLarge, ValueError):
            by_file = {}
        return [by_file.get(c["file"]) for c in report["cells"]]
