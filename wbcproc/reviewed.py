"""A laboratory's own reviewed cells, turned into training data (adapting the model to a new lab).

The physician corrects or confirms classes in the report workbook's "Reviewed class" column.  This module
reads that column, finds each reviewed cell's image (the single-cell file in the sample folder, or the
crop of a field image cut exactly as ``wbc process`` cut it, from the box in the JSON report) and writes a
data root that ``wbc train --data`` and the retrain flow take as an extra source:

    LAB_ROOT/cells/<class>/<sample>__<file>          single-cell images, copied byte for byte
    LAB_ROOT/field-crops/<class>/<sample>__<...>.png  field crops, with a FRAMED marker (no re-framing)

Only cells with an explicit reviewed class are exported - unreviewed model output is never fed back as a
label.  Training splits files by content hash, so part of the lab's cells is held out for its test split.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from wbcproc.classes import CLASSES
from wbcproc.discovery import safe_stem
from wbcproc.fields import Detection, crop_cell
from wbcproc.imageio import ImageRejected, read_image

FRAMED_MARKER = "FRAMED"  # the same name training.data looks for


def mark_framed(root: Path) -> None:
    """Mark a data root as holding field crops already cut at their field's red-cell scale: training and
    evaluation skip the framing step for its images, as ``wbc process`` does for field crops."""
    root.mkdir(parents=True, exist_ok=True)
    (root / FRAMED_MARKER).write_text("field crops at the field's red-cell scale: no re-framing\n")


@dataclass
class Exported:
    written: dict[str, int] = field(default_factory=dict)  # class -> cells written
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (cell, reason)


def reviewed_classes(workbook: str | Path) -> dict[str, str]:
    """``{cell file name: reviewed class}`` from the Cells sheet; blank reviewed cells are left out."""
    from openpyxl import load_workbook

    from wbcproc.bounded import TooLarge, check_workbook_size

    try:
        check_workbook_size(workbook)
    except TooLarge as exc:
        raise ValueError(f"{str(workbook)!r}: {exc}") from None
    wb = load_workbook(workbook, read_only=True)
    if "Cells" not in wb.sheetnames:
        raise ValueError(f"{str(workbook)!r} has no 'Cells' sheet: not a wbc report workbook")
    rows = wb["Cells"].iter_rows(values_only=True)
    header = [str(h or "") for h in next(rows, ())]
    try:
        i_file, i_rev = header.index("File"), header.index("Reviewed class")
    except ValueError:
        raise ValueError(f"{str(workbook)!r}: Cells sheet lacks 'File' / 'Reviewed class' columns") from None
    out: dict[str, str] = {}
    for row in rows:
        name, rev = row[i_file], row[i_rev] if len(row) > i_rev else None
        if name and rev not in (None, ""):
            out[str(name)] = str(rev).strip()
    wb.close()
    return out


def export_reviewed(workbook: str | Path, sample_dir: str | Path, out_root: str | Path) -> Exported:
    """Write the reviewed cells of one report into ``out_root`` (see the module docstring)."""
    workbook, sample_dir, out_root = Path(workbook), Path(sample_dir), Path(out_root)
    report_json = workbook.with_suffix(".json")
    if not report_json.is_file():
        raise FileNotFoundError(f"the JSON report {str(report_json)!r} beside the workbook is needed (cell boxes)")
    report = json.loads(report_json.read_text(encoding="utf-8"))
    return export_cells(report, reviewed_classes(workbook), sample_dir, out_root)


def export_cells(report: dict, classes: dict[str, str], sample_dir: str | Path, out_root: str | Path) -> Exported:
    """Write the cells named in ``classes`` (``{file: class}``) of one report into ``out_root``."""
    sample_dir, out_root = Path(sample_dir), Path(out_root)
    cells = {c["file"]: c for c in report["cells"]}
    sample = safe_stem(str(report.get("sample_id") or sample_dir.name))
    res = Exported()
    fields_cache: dict[str, object] = {}
    for name, typed in classes.items():
        label = typed.lower()
        if label not in CLASSES:
            res.skipped.append((name, f"reviewed class {typed!r} is not one of {list(CLASSES)}"))
            continue
        cell = cells.get(name)
        if cell is None:
            res.skipped.append((name, "not in the JSON report (workbook and report do not match)"))
            continue
        if cell.get("field"):
            src = sample_dir / cell["field"]
            if cell["field"] not in fields_cache:
                try:
                    img = read_image(src)
                except (ImageRejected, OSError) as exc:
                    res.skipped.append((name, f"field image {str(src)!r} unreadable: {exc}"))
                    continue
                fields_cache[cell["field"]] = img
            img = fields_cache[cell["field"]]
            field_info = next((f for f in report.get("fields", []) if f["file"] == cell["field"]), None)
            if field_info is None:
                res.skipped.append((name, "field not described in the JSON report"))
                continue
            crop = crop_cell(img.bgr, Detection(tuple(cell["box"]), 1.0, False, 0), field_info["rbc_diameter_px"])
            dest_dir = out_root / "field-crops"
            dest = dest_dir / label / f"{sample}__{safe_stem(name)}.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            mark_framed(dest_dir)
            if not cv2.imwrite(str(dest), crop):
                res.skipped.append((name, f"could not write {str(dest)!r}"))
                continue
        else:
            src = sample_dir / name
            dest = out_root / "cells" / label / f"{sample}__{name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:  # not there: never was, or the folder was moved (archived) while its cells were copied
                shutil.copyfile(src, dest)
            except (FileNotFoundError, IsADirectoryError):
                res.skipped.append((name, f"image {str(src)!r} not found in the sample folder"))
                continue
        res.written[label] = res.written.get(label, 0) + 1
    return res
