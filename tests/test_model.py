"""Model loading refuses anything it cannot trust; inference is a real ORT session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import build_tiny_onnx, make_tiny_model, tiny_sidecar

from wbcproc.model import Classifier, load_classifier
from wbcproc.registry import Registry
from wbcproc.resolve import resolve_model_path
from wbcproc.sidecar import ModelError, ModelNotFoundError, read_sidecar, write_sidecar


def test_loads_and_classifies(tiny_model):
    clf = load_classifier(tiny_model, threads=1)
    assert clf.info.classes[0] == "neutrophil" and clf.threads == 1
    x = np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32)
    p = clf.probabilities(x)
    assert p.shape == (5, 8)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    assert load_classifier(tiny_model, threads=1) is clf  # one session per process and model


def test_missing_sidecar(tmp_path):
    onnx_path = build_tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(ModelError, match=r"has no sidecar 'm\.json'"):
        read_sidecar(onnx_path)


def test_tampered_model_is_refused(tmp_path):
    onnx_path = make_tiny_model(tmp_path)
    with open(onnx_path, "ab") as fh:
        fh.write(b"\x00")
    with pytest.raises(ModelError, match=r"sha256 .* refusing to load"):
        read_sidecar(onnx_path)


@pytest.mark.parametrize(
    ("classes", "match"),
    [
        (["neutrophil"] * 8, "duplicated"),
        (
            [
                "neutrophils",
                "lymphocyte",
                "monocyte",
                "eosinophil",
                "basophil",
                "ig",
                "erythroblast",
                "platelet",
            ],
            "unknown",
        ),
        (["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "ig", "erythroblast"], "missing"),
    ],
)
def test_bad_class_list(tmp_path, classes, match):
    onnx_path = make_tiny_model(tmp_path)
    side = json.loads(onnx_path.with_suffix(".json").read_text())
    side["classes"] = classes
    onnx_path.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(ModelError, match=match):
        read_sidecar(onnx_path)


def test_output_width_must_match_classes(tmp_path):
    onnx_path = build_tiny_onnx(tmp_path / "model.onnx", n_out=5)
    write_sidecar(onnx_path, tiny_sidecar())
    with pytest.raises(ModelError, match="outputs 5 classes but its sidecar lists 8"):
        Classifier(read_sidecar(onnx_path))


def test_corrupt_onnx_with_matching_sidecar(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_bytes(b"not a protobuf at all")
    write_sidecar(p, tiny_sidecar())
    with pytest.raises(ModelError, match="ONNX Runtime could not load"):
        Classifier(read_sidecar(p))


def test_resolution_order(tmp_path, monkeypatch, tiny_model):
    import wbcproc.paths as model_mod

    # the shipped default is the last resort
    assert resolve_model_path(None) == (Path(model_mod.__file__).parent.parent / "models" / "model.onnx").resolve()
    monkeypatch.setattr(model_mod, "packaged_model_dirs", lambda: [tmp_path / "nowhere"])
    with pytest.raises(ModelNotFoundError, match="wbc train"):
        resolve_model_path(None)
    # registry current model
    reg = Registry.default()
    version = reg.register(tiny_model.parent)
    reg.promote(version, reason="test")
    assert resolve_model_path(None) == reg.versions_dir / version / "model.onnx"
    # $WBC_MODEL beats the registry, an explicit path beats both
    other = tmp_path / "other"
    shutil.copytree(tiny_model.parent, other)
    monkeypatch.setenv("WBC_MODEL", str(other / "model.onnx"))
    assert resolve_model_path(None) == other / "model.onnx"
    assert resolve_model_path(tiny_model) == tiny_model
    assert resolve_model_path(tiny_model.parent) == tiny_model  # a run folder works too


def test_shipped_default_model_loads_and_classifies_real_cells():
    """The model in models/ (int8 ResNet50 + sidecar) loads by default and labels the PBC fixture cells.
    The fixture cells may be training images: this checks the wiring (sidecar, preprocessing, class order),
    the held-out figures are in models/card.md."""
    from helpers import CELLS

    from wbcproc.imageio import read_image
    from wbcproc.model import load_classifier
    from wbcproc.preprocess import prepare_image, to_input

    clf = load_classifier(None)
    assert clf.info.name == "wbc-resnet50" and clf.info.preprocess.framing is not None
    files = sorted(CELLS.glob("*/*.jpg"))
    spec = clf.info.preprocess
    probs = clf.probabilities(to_input(np.stack([prepare_image(read_image(f).bgr, spec) for f in files]), spec))
    predicted = [clf.info.classes[i] for i in probs.argmax(1)]
    correct = sum(p == f.parent.name for p, f in zip(predicted, files, strict=True))
    assert correct >= 0.9 * len(files), list(zip(predicted, [f.parent.name for f in files], strict=True))
