"""A second laboratory's labelled white cells: crops from the BCCD smear fields (MIT licence).

BCCD (https://github.com/Shenggan/BCCD_Dataset) has 640x480 fields with VOC boxes and a ``labels.csv``
of the white-cell subtype per field.  Fields with exactly one labelled WBC box and one subtype give one
labelled crop, cut the way ``wbc process`` cuts field cells: ``wbcproc.fields.locate`` measures the field's
red-cell diameter and ``crop_cell`` cuts a square of that many red-cell diameters around the box centre.

The crops are written as class folders under two roots - ``train/`` (given to ``wbc train --data``) and
``holdout/`` (never trained on: measures another lab's accuracy) - chosen by a hash of the field name, so
the split is fixed.  Each root holds a ``FRAMED`` marker: its images are already canonical squares, so
training skips the framing step for them exactly as inference does for field crops.
"""

from __future__ import annotations

import csv
import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2

from wbcproc.classes import CLASSES
from wbcproc.fields import Detection, crop_cell, locate
from wbcproc.reviewed import mark_framed


def wbc_boxes(xml_path: Path) -> list[tuple[int, int, int, int]]:
    """The WBC boxes (x0, y0, x1, y1) of one VOC annotation file."""
    root = ET.parse(xml_path).getroot()
    out = []
    for obj in root.findall("object"):
        if (obj.findtext("name") or "").strip().upper() != "WBC":
            continue
        bb = obj.find("bndbox")
        out.append(tuple(int(float(bb.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")))  # type: ignore[arg-type]
    return out


def holdout_of(name: str, fraction: float) -> bool:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 2**32 < fraction


def export_crops(bccd: str | Path, out: str | Path, holdout: float = 0.4) -> dict[str, dict[str, int]]:
    """Write ``out/{train,holdout}/<class>/<field>.png``; returns counts per root and class."""
    bccd, out = Path(bccd), Path(out)
    counts: dict[str, dict[str, int]] = {"train": {}, "holdout": {}}
    with open(bccd / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for part in counts:
        mark_framed(out / part)
    for row in rows:
        labels = [x.strip().lower() for x in row["wbc_categories"].split(",") if x.strip()]
        if len(labels) != 1 or labels[0] not in CLASSES:
            continue
        stem = Path(row["image"]).stem
        xml, jpg = bccd / "Annotations" / f"{stem}.xml", bccd / "JPEGImages" / row["image"]
        if not xml.is_file() or not jpg.is_file():
            continue
        boxes = wbc_boxes(xml)
        img = cv2.imread(str(jpg), cv2.IMREAD_COLOR)
        if len(boxes) != 1 or img is None:
            continue
        rbc = locate(img).rbc_diameter_px
        crop = crop_cell(img, Detection(boxes[0], 1.0, False, 0), rbc)
        part = "holdout" if holdout_of(stem, holdout) else "train"
        dest = out / part / labels[0] / f"BCCD_{stem}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dest), crop)
        counts[part][labels[0]] = counts[part].get(labels[0], 0) + 1
    return counts
