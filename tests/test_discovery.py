"""Every file in a sample ends up counted, rejected with a specific reason, or ignored."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import cell_bgr, fixture_images
from PIL import Image

from wbcproc.config import load_settings
from wbcproc.discovery import SampleFolderError, read_metadata, safe_stem, scan_sample


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height: enough for a header check, nothing to decode."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    out = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return out + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def _jpeg(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr)
    assert ok
    return buf.tobytes()


@pytest.fixture
def settings():
    return load_settings(None)


def _outcome(folder: Path, settings) -> dict[str, tuple[str, str]]:
    inv = scan_sample(folder, settings)
    out: dict[str, tuple[str, str]] = {}
    for c in inv.candidates:
        out[c.file] = ("candidate", "")
    for r in inv.rejected:
        out[r.file] = ("rejected", r.code)
    for i in inv.ignored:
        out[i.file] = ("ignored", i.reason)
    assert inv.n_entries == len(os.listdir(folder)), "every entry must be accounted for exactly once"
    return out


def test_each_entry_is_sorted_once(tmp_path, settings):
    folder = tmp_path / "S1"
    folder.mkdir()
    good = fixture_images()[0].read_bytes()
    (folder / "good.JPG").write_bytes(good)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    (folder / "ds.jpg").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 100)
    (folder / "bomb.png").write_bytes(_png_header_only(21000, 21000))
    (folder / "tiny.png").write_bytes(cv2.imencode(".png", cell_bgr()[:1, :1])[1].tobytes())
    (folder / "notes.txt").write_text("hello")
    (folder / ".DS_Store").write_bytes(b"\x00")
    (folder / "Thumbs.db").write_bytes(b"\x00")
    (folder / ".hidden.jpg").write_bytes(good)
    (folder / "sub").mkdir()
    (folder / "sample.json").write_text('{"wbc_count": 6.1}')
    (folder / "READY").touch()
    gif = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 100, 100)).save(gif, "GIF")
    (folder / "anim.jpg").write_bytes(gif.getvalue())
    out = _outcome(folder, settings)
    assert out["good.JPG"] == ("candidate", "")
    assert out["empty.jpg"] == ("rejected", "empty")
    assert out["text.jpg"] == ("rejected", "not_image")
    assert out["ds.jpg"] == ("rejected", "not_image")
    assert out["bomb.png"] == ("rejected", "too_large")
    assert out["tiny.png"] == ("rejected", "too_small")
    assert out["notes.txt"] == ("rejected", "extension")
    assert out["anim.jpg"] == ("rejected", "format")
    assert out[".DS_Store"][0] == "ignored"
    assert out["Thumbs.db"][0] == "ignored"
    assert out[".hidden.jpg"] == ("ignored", "hidden file")
    assert out["sub"][0] == "ignored"
    assert out["sample.json"] == ("ignored", "sample metadata")
    assert out["READY"] == ("ignored", "completion marker")


def test_pixel_limit_is_configurable_and_checked_from_header(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[input]\nmax_pixels = 10000\n")
    s = load_settings(cfg)
    folder = tmp_path / "S"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png_header_only(101, 100))  # undecodable body: header alone decides
    inv = scan_sample(folder, s)
    assert [r.code for r in inv.rejected] == ["too_large"]
    assert "10,100 pixels exceeds the limit of 10,000" in inv.rejected[0].reason


def test_symlinks(tmp_path, settings):
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(fixture_images()[0].read_bytes())
    folder = tmp_path / "S"
    folder.mkdir()
    (folder / "real.jpg").write_bytes(fixture_images()[1].read_bytes())
    (folder / "escape.jpg").symlink_to(outside)
    (folder / "twin.jpg").symlink_to(folder / "real.jpg")
    (folder / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    out = _outcome(folder, settings)
    assert out["real.jpg"][0] == "candidate"
    assert out["escape.jpg"] == ("rejected", "symlink")
    assert out["twin.jpg"] == ("rejected", "symlink")
    assert out["dangling.jpg"] == ("rejected", "symlink")


def test_multipage_tiff_and_greyscale_rejected(tmp_path, settings):
    folder = tmp_path / "S"
    folder.mkdir()
    rgb = Image.fromarray(cv2.cvtColor(cell_bgr(), cv2.COLOR_BGR2RGB))
    rgb.save(folder / "pages.tif", save_all=True, append_images=[rgb])
    rgb.convert("L").save(folder / "grey.png")
    Image.fromarray(np.full((64, 64), 1000, np.uint16)).save(folder / "grey16.png")
    out = _outcome(folder, settings)
    assert out["pages.tif"] == ("rejected", "multipage")
    assert out["grey.png"] == ("rejected", "greyscale")
    assert out["grey16.png"] == ("rejected", "greyscale")


def test_unreadable_and_unicode_names(tmp_path, settings):
    folder = tmp_path / "S"
    folder.mkdir()
    data = fixture_images()[0].read_bytes()
    (folder / "célula_ü.jpg").write_bytes(data)
    raw = os.fsencode(str(folder)) + b"/bad\xffname.jpg"
    with open(raw, "wb") as fh:
        fh.write(data)
    out = _outcome(folder, settings)
    assert out["célula_ü.jpg"][0] == "candidate"
    assert out["bad\ufffdname.jpg"][0] == "candidate"


def test_missing_folder_is_an_error(tmp_path, settings):
    with pytest.raises(SampleFolderError, match="does not exist"):
        scan_sample(tmp_path / "nope", settings)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SampleFolderError, match="is not a folder"):
        scan_sample(f, settings)


# --- decode policy -------------------------------------------------------------------------------


def test_metadata_parsing(tmp_path):
    p = tmp_path / "sample.json"
    p.write_text('{"wbc_count": 7.5, "age_group": "adult", "notes": "x", "ward": "ICU"}')
    m = read_metadata(p)
    assert (m.wbc_count, m.age_group, m.notes, m.unknown, m.errors) == (
        7.5,
        "adult",
        "x",
        {"ward": "ICU"},
        [],
    )
    p.write_text('{"wbc_count": "many"}')
    assert "wbc_count 'many'" in read_metadata(p).errors[0]
    p.write_text("{not json")
    assert "could not be read as UTF-8 JSON" in read_metadata(p).errors[0]
    p.write_text("[1, 2]")
    assert "must hold a JSON object" in read_metadata(p).errors[0]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("S-001", "S-001"),
        ("../../etc", "etc"),
        ("a/b", "a_b"),
        ("..", "sample"),
        ("CON", "_CON"),
        ("=2+5", "2_5"),
        ("", "sample"),
        ("nul.txt", "_nul.txt"),
    ],
)
def test_safe_stem(name, expected):
    assert safe_stem(name) == expected
