"""White-cell localisation in smear fields: synthetic fields with known boxes, and real BCCD fields."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import CELLS, FIXTURES
from openpyxl import load_workbook

from wbcproc.classes import CLASSES
from wbcproc.fields import crop_cell, iou, locate
from wbcproc.pipeline import process_sample

FIELDS = FIXTURES / "fields"
WBC = str(Path(sys.executable).parent / "wbc")
RBC_D = 72  # red-cell diameter in the PBC crops the synthetic cells come from


def _background(h: int, w: int, seed: int = 0, n_rbc: int = 40) -> np.ndarray:
    """Light background with pink red cells (pale centre), like a thin smear at 100x."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), (225, 222, 235), np.uint8)  # BGR: grey-white, a little pink
    for _ in range(n_rbc):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, c, RBC_D // 2, (170, 165, 205), -1, cv2.LINE_AA)
        cv2.circle(img, c, RBC_D // 6, (195, 190, 220), -1, cv2.LINE_AA)
    return cv2.GaussianBlur(img, (3, 3), 0)


def _paste_cell(
    img: np.ndarray, cell_path: Path, centre: tuple[int, int], radius: int = 75
) -> tuple[int, int, int, int]:
    """Paste the central disc of a PBC crop (the white cell) and return its box."""
    crop = cv2.imread(str(cell_path))
    h, w = crop.shape[:2]
    disc = crop[h // 2 - radius : h // 2 + radius, w // 2 - radius : w // 2 + radius]
    mask = np.zeros(disc.shape[:2], np.uint8)
    cv2.circle(mask, (radius, radius), radius, 255, -1)
    x0, y0 = centre[0] - radius, centre[1] - radius
    h_img, w_img = img.shape[:2]
    cx0, cy0 = max(0, x0), max(0, y0)  # clip to the image: a cell can be cut by the border
    cx1, cy1 = min(w_img, x0 + 2 * radius), min(h_img, y0 + 2 * radius)
    roi = img[cy0:cy1, cx0:cx1]
    sub_mask = mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    roi[sub_mask > 0] = disc[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0][sub_mask > 0]
    return cx0, cy0, cx1, cy1


def _match(pred, gt, thr=0.3) -> int:
    used, tp = set(), 0
    for p in pred:
        best = max(((iou(p, g), j) for j, g in enumerate(gt) if j not in used), default=(0, -1))
        if best[0] >= thr:
            used.add(best[1])
            tp += 1
    return tp


def test_synthetic_field_known_boxes():
    img = _background(900, 1200, seed=1)
    cells = [
        CELLS / "neutrophil" / "BNE_25765.jpg",
        CELLS / "lymphocyte" / "LY_221345.jpg",
        CELLS / "eosinophil" / "EO_185749.jpg",
        CELLS / "monocyte" / "MO_104290.jpg",
    ]
    gt = [_paste_cell(img, p, c) for p, c in zip(cells, [(200, 200), (600, 250), (1000, 220), (500, 650)], strict=True)]
    res = locate(img)
    pred = [d.box for d in res.detections if not d.edge]
    assert _match(pred, gt) == 4, (pred, gt)
    assert len(pred) == 4  # the red cells and their pale centres are not white cells
    assert 0.6 * RBC_D <= res.rbc_diameter_px <= 1.4 * RBC_D


def test_edge_cells_are_marked_and_overlaps_count_once():
    img = _background(600, 800, seed=2)
    edge_box = _paste_cell(img, CELLS / "lymphocyte" / "LY_323391.jpg", (20, 300))  # cut by the left border
    inner = _paste_cell(img, CELLS / "neutrophil" / "BNE_104344.jpg", (450, 300))
    res = locate(img)
    by_edge = {d.edge: d for d in res.detections}
    assert set(by_edge) == {True, False}
    assert iou(by_edge[False].box, inner) >= 0.3 and iou(by_edge[True].box, edge_box) >= 0.3
    assert len(res.detections) == 2


def test_empty_field_and_platelets_only():
    assert locate(_background(480, 640, seed=3)).detections == []
    img = _background(480, 640, seed=4)
    rng = np.random.default_rng(0)
    for _ in range(12):  # platelets: small purple dots, a few micrometres across
        c = (int(rng.integers(20, 620)), int(rng.integers(20, 460)))
        cv2.circle(img, c, 6, (190, 90, 150), -1, cv2.LINE_AA)
    assert locate(img).detections == []


def _voc_wbc(xml: Path) -> list[tuple[int, ...]]:
    out = []
    for obj in ET.parse(xml).getroot().iter("object"):
        if obj.findtext("name") == "WBC":
            b = obj.find("bndbox")
            out.append(tuple(int(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
    return out


@pytest.mark.parametrize("name", ["BloodImage_00003", "BloodImage_00009", "BloodImage_00020", "BloodImage_00040"])
def test_real_bccd_fields(name):
    img = cv2.imread(str(FIELDS / f"{name}.jpg"))
    gt = _voc_wbc(FIELDS / f"{name}.xml")
    res = locate(img)
    counted = [d.box for d in res.detections if not d.edge]
    assert _match(counted, gt) == len(gt) == len(counted)
    assert 70 <= res.rbc_diameter_px <= 140  # BCCD red cells are ~100 px across


def test_crop_has_training_framing():
    img = _background(600, 800, seed=5)
    _paste_cell(img, CELLS / "monocyte" / "MO_198926.jpg", (400, 300))
    res = locate(img)
    crop = crop_cell(img, res.detections[0], res.rbc_diameter_px)
    assert crop.shape[0] == crop.shape[1] == round(5 * res.rbc_diameter_px)
    edge_crop = crop_cell(img, res.detections[0].__class__((0, 0, 50, 50), 1.0, True, 1), 100)
    assert edge_crop.shape == (500, 500, 3)  # padded, never out of bounds


def test_sample_with_fields_end_to_end(tmp_path, tiny_model):
    sample = tmp_path / "F-1"
    sample.mkdir()
    for p in FIELDS.glob("*.jpg"):
        shutil.copy(p, sample / p.name)
    shutil.copy(next((CELLS / "ig").iterdir()), sample / "single.jpg")  # crops and fields may mix
    paths = process_sample(sample, tmp_path / "out", model=tiny_model)
    r = json.loads(paths["json"].read_text())
    assert len(r["fields"]) == 4
    from_fields = [c for c in r["cells"] if c["field"]]
    assert len(from_fields) == sum(f["counted"] for f in r["fields"]) == 4
    assert all(c["box"] is not None for c in from_fields)
    assert next(c for c in r["cells"] if not c["field"])["file"] == "single.jpg"
    for f in r["fields"]:
        assert (paths["json"].parent / f["overview"]).is_file()
    wb = load_workbook(paths["xlsx"])
    assert "Fields" in wb.sheetnames and len(wb["Fields"]._images) == 4


def test_image_type_metadata_forces_single_cell(tmp_path, tiny_model):
    sample = tmp_path / "F-2"
    sample.mkdir()
    shutil.copy(FIELDS / "BloodImage_00003.jpg", sample / "a.jpg")
    (sample / "sample.json").write_text('{"image_type": "cell"}')
    r = json.loads(process_sample(sample, tmp_path / "out", model=tiny_model)["json"].read_text())
    assert r["fields"] == [] and r["cells"][0]["file"] == "a.jpg"


def test_locate_cli_jsonl(tmp_path, tiny_model):
    big = tmp_path / "huge.png"
    big.write_bytes(_huge_png_header())
    r = subprocess.run(
        [WBC, "locate", str(FIELDS / "BloodImage_00003.jpg"), str(big), "--json", "--model", str(tiny_model)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    first, second = (json.loads(x) for x in r.stdout.splitlines())
    cell = (first["cells"] + first["platelets"])[0]  # a random tiny model may call it a platelet
    assert set(cell) == {"box", "score", "label", "confidence", "edge"}
    assert cell["label"] in CLASSES
    assert all(c["label"] != "platelet" for c in first["cells"])
    assert second["cells"] == [] and "exceeds the limit" in second["error"]


def _huge_png_header() -> bytes:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", 0)
        + b"IEND"
        + struct.pack(">I", zlib.crc32(b"IEND"))
    )


def test_locate_with_the_shipped_model_finds_and_names_the_annotated_cell():
    """The four BCCD fixture fields (another lab than the training data; 00003 and 00009 are in the
    held-out part of BCCD, 00020 and 00040 were among the 91 BCCD training cells): the annotated WBC is
    found and counted (not an edge cell) in every field, and named as the float reference of the shipped
    weights names it (``tests/fixtures/float_reference.json``; a cell within 0.5 logit of the float
    runner-up may take either of the two).  That rule holds for every correct int8 implementation; the
    old ">= 3 of 4 named as labels.csv" failed on AVX2 CPUs, where 8-bit weights saturated.  How well the
    weights name these cells is a property of the model, asserted on the reference: at least 3 of 4."""
    ref = json.loads((FIXTURES / "float_reference.json").read_text())
    classes = ref["classes"]
    r = subprocess.run(
        [WBC, "locate", *map(str, sorted(FIELDS.glob("*.jpg"))), "--json"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    truth = {"00003": "neutrophil", "00009": "eosinophil", "00020": "lymphocyte", "00040": "monocyte"}
    reference_right = 0
    for line in map(json.loads, r.stdout.splitlines()):
        stem = Path(line["file"]).stem
        gt = _voc_wbc(FIELDS / f"{stem}.xml")[0]
        hits = [c for c in line["cells"] if iou(tuple(c["box"]), gt) >= 0.3 and not c["edge"]]
        assert len(hits) == 1, line
        logits = np.array(ref["cells"][f"{stem}.jpg#wbc"]["float"])
        order = np.argsort(-logits)
        allowed = {classes[order[0]]}
        if logits[order[0]] - logits[order[1]] < 0.5:
            allowed.add(classes[order[1]])
        assert hits[0]["label"] in allowed, (stem, hits[0], allowed)
        reference_right += classes[order[0]] == truth[stem[-5:]]
    assert reference_right >= 3
