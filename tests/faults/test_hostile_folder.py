"""A hostile sample folder through the real CLI: every file counted or rejected with a reason, exit 0,
no formula from a file name anywhere, peak memory under 1 GiB."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import cell_bgr, fixture_images
from hypothesis import given, settings
from hypothesis import strategies as st
from openpyxl import load_workbook
from PIL import Image

from wbcproc.report import report_paths

WBC = str(Path(sys.executable).parent / "wbc")


def _bomb_png(side: int = 21000) -> bytes:
    """A real, valid RGB PNG of side x side pixels (1.3 GB decoded) in about a megabyte."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * side)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _enc(ext: str, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The folder and, per entry, what must happen to it: 'counted', 'rejected' or 'ignored'."""
    root = tmp_path_factory.mktemp("hostile")
    folder = root / "=HYPERLINK(evil)"
    folder.mkdir()
    expect: dict[str, str] = {}

    def put(name: str, data: bytes, outcome: str) -> None:
        (folder / name).write_bytes(data)
        expect[name] = outcome

    good = fixture_images()
    for i, p in enumerate(good[:6]):
        put(f"cell{i}.jpg", p.read_bytes(), "counted")
    jpg = _enc(".jpg", cell_bgr())
    png = _enc(".png", cell_bgr())
    put("truncated.jpg", jpg[: len(jpg) // 2], "rejected")
    put("truncated.png", png[: len(png) // 2], "rejected")
    put("zero.jpg", b"", "rejected")
    put("text.jpg", b"this is a text file\n", "rejected")
    put("dsstore.jpg", b"\x00\x00\x00\x01Bud1" + bytes(200), "rejected")
    put("one_pixel.png", _enc(".png", cell_bgr()[:1, :1]), "rejected")
    put("bomb.png", _bomb_png(), "rejected")
    put("sixteen_bit.png", _enc(".png", cell_bgr().astype(np.uint16) * 257), "counted")
    put("grey.png", _enc(".png", cv2.cvtColor(cell_bgr(), cv2.COLOR_BGR2GRAY)), "rejected")
    bgra = cv2.cvtColor(cell_bgr(), cv2.COLOR_BGR2BGRA)
    put("alpha.png", _enc(".png", bgra), "counted")
    rgb = Image.fromarray(cv2.cvtColor(cell_bgr(), cv2.COLOR_BGR2RGB))
    buf = io.BytesIO()
    rgb.convert("CMYK").save(buf, "JPEG")
    put("cmyk.jpg", buf.getvalue(), "counted")
    buf = io.BytesIO()
    rgb.save(buf, "TIFF", save_all=True, append_images=[rgb, rgb])
    put("pages.tif", buf.getvalue(), "rejected")
    put("=2+5.jpg", good[6].read_bytes(), "counted")
    put("+SUM(1,2).jpg", good[7].read_bytes(), "counted")
    put("@x.jpg", good[8].read_bytes(), "counted")
    put("-1+1.jpg", good[9].read_bytes(), "counted")
    put("célula_日本.jpg", good[10].read_bytes(), "counted")
    with open(os.fsencode(str(folder)) + b"/latin1_\xe9.jpg", "wb") as fh:
        fh.write(good[11].read_bytes())
    expect["latin1_\ufffd.jpg"] = "counted"
    secret = root / "secret.jpg"
    secret.write_bytes(good[12].read_bytes())
    (folder / "escape.jpg").symlink_to(secret)
    expect["escape.jpg"] = "rejected"
    (folder / "nested").mkdir()
    (folder / "nested" / "inner.jpg").write_bytes(good[13].read_bytes())
    expect["nested"] = "ignored"
    put(".DS_Store", b"\x00\x00\x00\x01Bud1", "ignored")
    put("Thumbs.db", b"\x00" * 10, "ignored")
    put("sample.json", b'{"wbc_count": "lots", ', "ignored")
    return folder, expect


@pytest.fixture(scope="module")
def processed(hostile, tiny_model, tmp_path_factory):
    folder, _expect = hostile
    out = tmp_path_factory.mktemp("out")
    # The child reports the peak RSS of its own address space (VmHWM) at exit; ru_maxrss of a child
    # would include this (large, torch-loaded) test process's pages at fork time.
    wrapper = (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write('PEAK ' + [l for l in open('/proc/self/status')"
        " if l.startswith('VmHWM')][0].split()[1] + '\\n'))\n"
        "sys.argv = ['wbc'] + sys.argv[1:]\n"
        "from flows.cli import main\n"
        "main()\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", wrapper, "process", str(folder), "--out", str(out), "--model", str(tiny_model)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    peak = [int(line.split()[1]) for line in r.stderr.splitlines() if line.startswith("PEAK ")]
    assert peak, r.stderr
    return r, out, peak[0]


def test_every_file_accounted_for(hostile, processed):
    _folder, expect = hostile
    r, out, _ = processed
    assert r.returncode == 0, r.stderr
    reports = [p for p in out.iterdir() if p.suffix == ".json" and not p.name.endswith(".fhir.json")]
    assert len(reports) == 1
    res = json.loads(reports[0].read_text())
    got = {c["file"]: "counted" for c in res["cells"]}
    got |= {x["file"]: "rejected" for x in res["rejected"]}
    got |= {x["file"]: "ignored" for x in res["ignored"]}
    assert got == expect
    assert all(x["reason"] for x in res["rejected"])
    assert "METADATA_INVALID" in {f["code"] for f in res["flags"]}
    assert res["sample_id"] == "=HYPERLINK(evil)"


def test_no_formula_anywhere_and_name_is_safe(processed):
    _, out, _ = processed
    xlsx = [p for p in out.iterdir() if p.suffix == ".xlsx"]
    assert [p.name for p in xlsx] == ["HYPERLINK_evil.xlsx"]
    wb = load_workbook(xlsx[0])
    for ws in wb.worksheets:
        for row in ws.iter_rows():
            for c in row:
                assert c.data_type != "f", f"formula in {ws.title}!{c.coordinate}: {c.value!r}"
    assert "secret" not in json.dumps(json.loads((out / "HYPERLINK_evil.json").read_text()))


def test_peak_memory_under_1_gib(processed):
    _, _, peak_kib = processed
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_rejected(tmp_path, tiny_model):
    from wbcproc.pipeline import process_sample

    folder = tmp_path / "S"
    folder.mkdir()
    shutil.copy(fixture_images()[0], folder / "locked.jpg")
    (folder / "locked.jpg").chmod(0)
    r = json.loads(process_sample(folder, tmp_path / "o", model=tiny_model)["json"].read_text())
    assert r["rejected"][0]["reason"] == "permission denied"


def test_file_vanishing_during_the_run(tmp_path, tiny_model):
    from wbcproc.config import load_settings
    from wbcproc.discovery import scan_sample
    from wbcproc.model import load_classifier
    from wbcproc.pipeline import classify_candidates

    folder = tmp_path / "S"
    folder.mkdir()
    for p in fixture_images()[:3]:
        shutil.copy(p, folder / p.name)
    settings = load_settings(None)
    inv = scan_sample(folder, settings)
    inv.candidates[1].path.unlink()  # gone between listing and decoding
    inv.candidates[2].path.write_bytes(b"\xff\xd8\xff\xe0 rewritten and cut")  # changed under us
    res = classify_candidates(inv.candidates, load_classifier(tiny_model), settings)
    assert len(res.cells) == 1
    assert sorted(r.code for r in res.rejected) == ["truncated", "vanished"]


def test_tampered_registry_model_is_refused_without_fallback(tmp_path, tiny_model):
    from wbcproc.registry import Registry

    home = tmp_path / "home"
    env = dict(os.environ, WBC_HOME=str(home))
    reg = Registry(home / "registry")
    v = reg.register(tiny_model.parent)
    reg.promote(v, reason="test")
    with open(reg.versions_dir / v / "model.onnx", "ab") as fh:
        fh.write(b"tamper")
    folder = tmp_path / "S"
    folder.mkdir()
    shutil.copy(fixture_images()[0], folder / "a.jpg")
    r = subprocess.run(
        [WBC, "process", str(folder), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1 and "sha256" in r.stderr and "refusing" in r.stderr
    assert not (tmp_path / "o").exists()


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=80))
def test_output_names_never_escape(name):
    out = Path("/reports")
    for p in report_paths(name, out).values():
        assert p.parent == out
        assert not p.name.startswith(".")
        assert "/" not in p.name and "\\" not in p.name
        assert p.name[0] not in "=+-@"
