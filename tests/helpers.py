"""Test helpers: a tiny real ONNX classifier (random weights) with a real sidecar, and image makers."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from openpyxl import load_workbook

from wbcproc.classes import CLASSES, WBC_CLASSES
from wbcproc.sidecar import write_sidecar

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


def assert_sidecar_meets_schema(onnx_path: Path) -> None:
    """The sidecar a writer produced validates against the published JSON Schema (for tools outside Python)."""
    import jsonschema

    from wbcproc.sidecar import SCHEMA_PATH

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator(schema).validate(json.loads(onnx_path.with_suffix(".json").read_text()))


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


# --- editing report workbooks as a verifier would (tests/test_verify.py, tests/test_serve.py) ---------------
REV_COL = 8  # "Reviewed class" on the Cells sheet


def other_class(cls: str) -> str:
    """A class that changes the differential (a WBC class other than ``cls``)."""
    return next(c for c in WBC_CLASSES if c != cls)


def review_plan(report: dict, n_changes: int = 3) -> dict[str, str]:
    """Reviewed classes: every REVIEW-marked cell confirmed, and ``n_changes`` cells reclassified."""
    plan = {c["file"]: c["class"] for c in report["cells"] if c["review"] or c["flag_driver"]}
    for c in report["cells"][:n_changes]:
        plan[c["file"]] = other_class(c["class"])
    return plan


def edit_workbook(xlsx: Path, dest: Path, plan: dict[str, str], name: str | None = "Dr A. Example") -> Path:
    wb = load_workbook(xlsx)
    ws = wb["Cells"]
    for row in range(2, ws.max_row + 1):
        f = ws.cell(row=row, column=1).value
        if f in plan:
            ws.cell(row=row, column=REV_COL).value = plan[f]
    if name is not None:
        s = wb["Summary"]
        for row in range(1, s.max_row + 1):
            if s.cell(row=row, column=1).value == "Verified by":
                s.cell(row=row, column=2).value = name
    wb.save(dest)
    return dest


def expected_counts(report: dict, plan: dict[str, str]) -> dict[str, int]:
    counts = dict.fromkeys(CLASSES, 0)
    for c in report["cells"]:
        counts[plan.get(c["file"], c["class"])] += 1
    return counts


def soffice() -> str | None:
    return shutil.which("soffice") or shutil.which("libreoffice")


def libreoffice_uno() -> str | None:
    """The system Python that can drive LibreOffice through UNO (Debian python3-uno), or None."""
    for py in ("/usr/bin/python3", shutil.which("python3") or ""):
        if py and soffice() and subprocess.run([py, "-c", "import uno"], capture_output=True).returncode == 0:
            return py
    return None


def libreoffice_edit(src: Path, dest: Path, plan: dict[str, str], name: str | None = "Dr A. Example") -> Path:
    """Type ``plan``'s reviewed classes (and the verifier's name) into a report *in LibreOffice Calc* and
    save it as .xlsx (tests/lo_edit.py, UNO): the edit itself is LibreOffice's, as a physician's in Calc."""
    import json

    wb = load_workbook(src, read_only=True)
    edits = []
    for row, values in enumerate(wb["Cells"].iter_rows(min_row=2, values_only=True), start=2):
        if values[0] in plan:
            edits.append(["Cells", f"H{row}", plan[values[0]]])
    if name is not None:
        for row, values in enumerate(wb["Summary"].iter_rows(max_col=1, values_only=True), start=1):
            if values[0] == "Verified by":
                edits.append(["Summary", f"B{row}", name])
    wb.close()
    dest.parent.mkdir(parents=True, exist_ok=True)
    profile = dest.parent / f".lo-profile-{dest.stem}"
    script = Path(__file__).with_name("lo_edit.py")
    py = libreoffice_uno()
    assert py, "LibreOffice with python3-uno is needed"
    subprocess.run([py, str(script), str(src), str(dest), json.dumps(edits), str(profile)], check=True,
                   capture_output=True, timeout=240)  # fmt: skip
    return dest


# --- the review app on a real loopback port (tests/test_review_app.py, tests/test_review_browser.py) -------


@contextlib.contextmanager
def served(app):
    """``app`` served by uvicorn on a free loopback port, until the block ends."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the review app did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
