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
from wbcproc.pipeline import process_sample
from wbcproc.preprocess import PreprocessSpec, prepare_image
from wbcproc.sidecar import write_sidecar

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


def test_uncertainty_thresholds_by_sample_size():
    """The model-side half: thresholds calibrated per sample size (smaller samples vary more), the
    largest calibrated size <= n applies, and below the smallest it stays silent."""
    from wbcproc.domain import fit_uncertainty, uncertainty_threshold

    rng = np.random.default_rng(1)
    held = rng.beta(0.5, 20, 1500)  # in-domain: mostly confident cells, a tail of unsure ones
    ref = fit_uncertainty(held, sizes=(10, 20, 50), draws=500)
    t = ref["thresholds"]
    assert t["10"] > t["20"] > t["50"] > held.mean()
    assert uncertainty_threshold(ref, 35) == t["20"] and uncertainty_threshold(ref, 500) == t["50"]
    assert uncertainty_threshold(ref, 9) is None
    colour = _reference()
    pbc = np.array([cell_features(prepare_image(cv2.imread(str(p)), SPEC)) for p in fixture_images()])
    both = {**colour, "uncertainty": ref}
    quiet = assess(pbc, both, rng.beta(0.5, 20, len(pbc)))
    assert not quiet["shifted"] and quiet["reasons"] == [] and quiet["uncertainty_threshold"] == round(t["20"], 4)
    unsure = assess(pbc, both, np.full(len(pbc), 0.4))
    assert unsure["shifted"] and unsure["reasons"] == ["model uncertainty"]
    few = assess(pbc[:5], both, np.full(5, 0.4))  # too few cells for this half
    assert not few["shifted"] and few["uncertainty_threshold"] is None


def test_an_unsure_model_on_familiar_looking_images_raises_the_flag(tmp_path):
    """Colour and framing in-domain, but the model is unsure of the cells (here: an untrained one): the
    report carries DOMAIN_SHIFT and says it is the model's uncertainty."""
    from wbcproc.domain import fit_uncertainty

    onnx_path = build_tiny_onnx(tmp_path / "m" / "model.onnx", size=64)
    confident = np.random.default_rng(2).beta(0.5, 30, 1000)
    domain = {**_reference(), "uncertainty": fit_uncertainty(confident, draws=300)}
    write_sidecar(onnx_path, tiny_sidecar(size=64, domain=domain, preprocess=SPEC.to_dict()))
    home = tmp_path / "PBC-2"
    home.mkdir()
    for p in fixture_images():
        shutil.copy(p, home / p.name)
    r = json.loads(process_sample(home, tmp_path / "out", model=onnx_path)["json"].read_text())
    assert r["domain"]["reasons"] == ["model uncertainty"], r["domain"]
    flag = r["flags"][0]
    assert flag["code"] == "DOMAIN_SHIFT" and "mean model uncertainty" in flag["message"]
    assert "stain/camera/framing distance" not in flag["message"]


def test_a_look_known_from_a_few_cells_passes_that_looks_unseen_cells():
    """A laboratory's look fitted on its few reviewed cells must accept that laboratory's next slides:
    calibrated on the same cells' own distances, the threshold sits below what unseen cells of the look
    score, and a routed laboratory model would read none of the laboratory's slides."""
    from wbcproc.domain import distances, fit_reference_loo

    rng = np.random.default_rng(1)
    mix = rng.normal(size=(8, 8))
    feats = rng.normal(size=(15 + 3000, 8)) @ mix + 50.0  # correlated features, like colour statistics
    reviewed, unseen = feats[:15], feats[15:]

    def share_passed(ref: dict) -> float:
        d = distances(unseen, ref)
        return float(np.mean([np.median(rng.choice(d, 30)) <= ref["threshold"] for _ in range(400)]))

    in_sample = fit_reference(reviewed, reviewed)
    assert share_passed(in_sample) < 0.5  # the trap: the reviewed cells' own distances are too short
    loo = fit_reference_loo(reviewed)
    assert loo["calibration"]["distances"] == "leave-one-out" and loo["calibration"]["with_replacement"]
    assert share_passed(loo) >= 0.95
