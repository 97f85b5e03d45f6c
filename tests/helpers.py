"""Test helpers: a tiny real ONNX classifier (random weights) with a real sidecar, and image makers."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from wbcproc.classes import CLASSES
from wbcproc.model import write_sidecar

FIXTURES = Path(__file__).parent / "fixtures"
CELLS = FIXTURES / "cells"


def build_tiny_onnx(path: Path, *, size: int = 32, seed: int = 0, classes=CLASSES, n_out: int | None = None) -> Path:
    """Conv(3->8, 3x3) -> ReLU -> GlobalAveragePool -> Flatten -> Gemm(8->n): a real graph, dynamic batch."""
    rng = np.random.default_rng(seed)
    n_out = len(classes) if n_out is None else n_out
    w = numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b")
    fw = numpy_helper.from_array(rng.normal(0, 1.0, (n_out, 8)).astype(np.float32), "fw")
    fb = numpy_helper.from_array(rng.normal(0, 0.1, (n_out,)).astype(np.float32), "fb")
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_out])],
        [w, b, fw, fb],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def tiny_sidecar(size: int = 32, **over) -> dict:
    side = {
        "name": "tiny-test-model",
        "version": "0.0.1-test",
        "classes": list(CLASSES),
        "input": {"name": "input", "layout": "NCHW", "dtype": "float32"},
        "output": {"name": "logits", "kind": "logits"},
        "preprocess": {"input_size": size, "resize": "stretch", "colour_order": "RGB"},
        "temperature": 1.0,
        "review_threshold": 0.3,
        "parity": {"passed": True},
        "metrics": {"macro_f1": 0.1},
    }
    side.update(over)
    return side


def make_tiny_model(folder: Path, **over) -> Path:
    onnx_path = build_tiny_onnx(folder / "model.onnx", size=over.get("preprocess", {}).get("input_size", 32))
    write_sidecar(onnx_path, tiny_sidecar(**over))
    return onnx_path


def fixture_images() -> list[Path]:
    return sorted(CELLS.glob("*/*.jpg"))


def copy_cells(dest: Path, n: int | None = None) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for p in fixture_images()[:n]:
        q = dest / p.name
        shutil.copy(p, q)
        out.append(q)
    return out


def cell_bgr() -> np.ndarray:
    img = cv2.imread(str(fixture_images()[0]), cv2.IMREAD_COLOR)
    assert img is not None
    return img
