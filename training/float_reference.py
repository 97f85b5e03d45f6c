"""The float reference a shipped int8 model is checked against on every CPU.

Instead of a second (94 MB) float model, the repository keeps the *logits* of the test fixture cells:
computed once, at export, by the float ONNX model (``model.fp32.onnx`` of the ``wbc train --quantize``
run) and by the int8 file that ships, on the machine that exported it.  ``tests/test_int8.py`` then runs
the shipped int8 file on whatever CPU the tests run on and fails when

- its classes differ from the float reference on more than 0.5 % of the fixture cells, or
- its logits differ from the exporting machine's int8 logits by more than a quantisation step's worth
  (the integer arithmetic is exact on every CPU for a 7-bit-weight model: only float rounding differs).

Inputs are made here, by the same preprocessing inference runs: each fixture cell framed by its own
red-cell measurement, and the annotated white cell of each fixture field cut and framed as ``wbc locate``
cuts it.

    python -m training.scripts.float_reference --fp32 runs/final/model.fp32.onnx --model models/model.onnx \\
        --out tests/fixtures/float_reference.json
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from training.bccd import wbc_boxes
from wbcproc.fields import crop_cell, iou, locate
from wbcproc.imageio import read_image
from wbcproc.preprocess import PreprocessSpec, prepare_image, to_input
from wbcproc.sidecar import read_sidecar, sha256_file

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def fixture_inputs(spec: PreprocessSpec, fixtures: Path = FIXTURES) -> tuple[list[str], np.ndarray]:
    """Names and model inputs of the fixture cells (``cells/<class>/*.jpg``) and of the annotated white
    cell of each fixture field (``fields/*.jpg`` + VOC ``*.xml``), named ``<field>.jpg#wbc``."""
    names, prepared = [], []
    for f in sorted((fixtures / "cells").glob("*/*.jpg")):
        names.append(f"{f.parent.name}/{f.name}")
        prepared.append(prepare_image(read_image(f).bgr, spec))
    for f in sorted((fixtures / "fields").glob("*.jpg")):
        bgr = read_image(f).bgr
        res = locate(bgr)
        gt = wbc_boxes(f.with_suffix(".xml"))[0]
        best = max(res.detections, key=lambda d: iou(tuple(d.box), gt), default=None)
        if best is None or iou(tuple(best.box), gt) < 0.3:
            continue  # the field test reports a missed cell; nothing to compare here
        names.append(f"{f.name}#wbc")
        prepared.append(prepare_image(crop_cell(bgr, best, res.rbc_diameter_px), spec, framed=True))
    return names, to_input(np.stack(prepared), spec)


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def inputs_sha256(x: np.ndarray) -> str:
    """One hash over the fixture cells' model inputs (float32 NCHW): the preprocessing's answer, bit for bit."""
    return hashlib.sha256(np.ascontiguousarray(x, np.float32).tobytes()).hexdigest()


def build_reference(fp32: Path, model: Path) -> dict:
    from wbcproc.int8 import int8_kernel

    info = read_sidecar(model)
    names, x = fixture_inputs(info.preprocess)
    f, q = _logits(fp32, x), _logits(model, x)
    return {
        "model_sha256": info.sha256,
        "model_version": info.version,
        "fp32_sha256": sha256_file(fp32),
        "int8_cpu_kernel": int8_kernel().name,
        "inputs_sha256": inputs_sha256(x),
        "classes": list(info.classes),
        "cells": {
            n: {"float": [round(float(v), 5) for v in f[i]], "int8": [round(float(v), 5) for v in q[i]]}
            for i, n in enumerate(names)
        },
    }


def refresh_int8(reference: dict, model: Path, why: str) -> dict:
    """The reference after a change of preprocessing, when the float export is no longer at hand: the int8
    logits and the inputs' hash made again on this CPU, the float logits kept - they belong to the earlier
    inputs, which ``float_inputs`` says (the class check against them stays meaningful only while the inputs
    moved little; ``wbc train --quantize`` + :func:`build_reference` make both anew)."""
    from wbcproc.int8 import int8_kernel

    info = read_sidecar(model)
    if info.sha256 != reference["model_sha256"]:
        raise ValueError(
            f"the reference is for model {reference['model_sha256'][:12]}, not {info.sha256[:12]}: "
            "a new model needs its float export (build_reference)"
        )
    names, x = fixture_inputs(info.preprocess)
    if names != list(reference["cells"]):
        raise ValueError("the fixture cells changed since the reference was made: build it anew")
    q = _logits(model, x)
    out = dict(reference, int8_cpu_kernel=int8_kernel().name, inputs_sha256=inputs_sha256(x))
    out["float_inputs"] = reference.get("float_inputs") or why
    out["cells"] = {
        n: {"float": reference["cells"][n]["float"], "int8": [round(float(v), 5) for v in q[i]]}
        for i, n in enumerate(names)
    }
    return out
