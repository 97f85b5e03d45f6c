"""The domain-shift guard: quiet on the training lab's cells, loud on another lab's."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
from helpers import FIXTURES, build_tiny_onnx, fixture_images, tiny_sidecar
from openpyxl import load_workbook

from wbcproc.domain import assess, cell_features, fit_reference
from wbcproc.fields import crop_cell, locate
from wbcproc.model import write_sidecar
from wbcproc.pipeline import process_sample
from wbcproc.preprocess import PreprocessSpec, prepare_image

SPEC = PreprocessSpec(input_size=64)


def _variants(img: np.ndarray) -> list[np.ndarray]:
    """Orientations of one cell: new in-domain images with the same stain and framing."""
    out = [img, cv2.flip(img, 1)]
    for code in (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE):
        out += [cv2.rotate(img, code), cv2.flip(cv2.rotate(img, code), 0)]
    return out


def _pbc_features() -> np.ndarray:
    feats = []
    for p in fixture_images():
        for v in _variants(cv2.imread(str(p))):
            feats.append(cell_features(prepare_image(v, SPEC)))
    return np.array(feats)


def _bccd_crops() -> list[np.ndarray]:
    crops = []
    for p in sorted((FIXTURES / "fields").glob("*.jpg")):
        img = cv2.imread(str(p))
        res = locate(img)
        crops += [crop_cell(img, d, res.rbc_diameter_px) for d in res.detections]
    return crops


def _reference() -> dict:
    feats = _pbc_features()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(feats))
    return fit_reference(feats[idx[:100]], feats[idx[100:]], calib_n=10)


def test_in_domain_quiet_other_lab_and_recoloured_loud():
    ref = _reference()
    pbc = np.array([cell_features(prepare_image(cv2.imread(str(p)), SPEC)) for p in fixture_images()])
    assert not assess(pbc, ref)["shifted"]
    bccd = np.array([cell_features(prepare_image(c, SPEC)) for c in _bccd_crops()])
    got = assess(bccd, ref)
    assert got["shifted"], got
    # the same PBC cells in a yellowish rapid-stain look, with the cell filling the frame
    yellow = []
    for p in fixture_images():
        img = cv2.imread(str(p))
        h, w = img.shape[:2]
        tight = img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
        tinted = np.clip(tight.astype(int) * [0.75, 1.0, 1.05] + [0, 10, 15], 0, 255).astype(np.uint8)
        yellow.append(cell_features(prepare_image(tinted, SPEC)))
    assert assess(np.array(yellow), ref)["shifted"]
    assert assess(np.zeros((0, 8)), ref) is None and assess(pbc, None) is None


def _model_with_domain(folder):
    onnx_path = build_tiny_onnx(folder / "model.onnx", size=64)
    write_sidecar(onnx_path, tiny_sidecar(size=64, domain=_reference(), preprocess=SPEC.to_dict()))
    return onnx_path


def test_reports_carry_the_guard(tmp_path):
    model = _model_with_domain(tmp_path / "m")
    home = tmp_path / "PBC-1"
    home.mkdir()
    for p in fixture_images():
        shutil.copy(p, home / p.name)
    r = json.loads(process_sample(home, tmp_path / "out", model=model)["json"].read_text())
    assert r["domain"]["shifted"] is False and "DOMAIN_SHIFT" not in {f["code"] for f in r["flags"]}
    other = tmp_path / "OTHER-1"
    other.mkdir()
    for i, c in enumerate(_bccd_crops()):
        cv2.imwrite(str(other / f"crop{i}.png"), c)
    paths = process_sample(other, tmp_path / "out", model=model)
    r = json.loads(paths["json"].read_text())
    assert r["flags"][0]["code"] == "DOMAIN_SHIFT" and r["flags"][0]["cell"] is None
    assert r["domain"]["distance"] > r["domain"]["threshold"]
    fhir = json.loads(paths["fhir"].read_text())
    assert fhir["entry"][0]["resource"]["status"] == "preliminary"
    banner = load_workbook(paths["xlsx"])["Summary"]["C1"].value
    assert banner.startswith("DOMAIN SHIFT")
