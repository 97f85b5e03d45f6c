"""Hostile or absurdly large files from a person are refused before they are parsed: in seconds, with a
small memory, one line of reason, and nothing written (``wbcproc.bounded``)."""

from __future__ import annotations

import json
import resource
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.watcher import ReviewedWatcher
from wbcproc.bounded import MAX_METADATA_BYTES, MAX_WORKBOOK_BYTES, TooLarge, check_workbook_size
from wbcproc.discovery import read_metadata
from wbcproc.pipeline import process_sample
from wbcproc.verify import VerificationRejected, verify


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def _rezip(src: Path, dest: Path, replace: dict[str, bytes | int]) -> Path:
    """``src`` with some parts replaced: bytes as given, or an int: that many zero bytes, streamed."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            new = replace.get(info.filename)
            if new is None:
                zout.writestr(info, zin.read(info))
            elif isinstance(new, bytes):
                zout.writestr(info.filename, new)
            else:
                with zout.open(info.filename, "w", force_zip64=True) as fh:
                    block = b"\0" * (1 << 20)
                    for _ in range(new >> 20):
                        fh.write(block)
    return dest


@pytest.fixture
def report(tmp_path, sample, tiny_model):
    out = tmp_path / "out"
    paths = process_sample(sample, out, model=tiny_model)
    return paths["xlsx"], out


def _sheet(xlsx: Path) -> tuple[str, bytes]:
    with zipfile.ZipFile(xlsx) as zf:
        name = next(n for n in zf.namelist() if n.startswith("xl/worksheets/sheet"))
        return name, zf.read(name)


def hostile_workbooks(xlsx: Path, where: Path) -> dict[str, tuple[Path, str]]:
    """Each kind of hostile workbook, made from a real report workbook, with the words its refusal says."""
    sheet, xml = _sheet(xlsx)
    body = xml.split(b"?>", 1)[1] if xml.startswith(b"<?xml") else xml
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>'
        + body.replace(b"<sheetData>", b"<sheetData>&lol2;", 1)
    )
    huge_dim = xml.replace(b'<dimension ref="', b'<dimension ref="A1:ZZ1048576" x="', 1)
    big = where / "big.xlsx"
    with big.open("wb") as fh:  # sparse: the size alone is refused, nothing is read
        fh.truncate(MAX_WORKBOOK_BYTES + 1)
    return {
        "entities": (_rezip(xlsx, where / "laughs.xlsx", {sheet: laughs}), "DTD or XML entities"),
        "dimension": (_rezip(xlsx, where / "dim.xlsx", {sheet: huge_dim}), "1,048,576 rows"),
        "sheet bomb": (_rezip(xlsx, where / "sheet.xlsx", {sheet: 40 << 20}), "MB of XML"),
        "zip bomb": (_rezip(xlsx, where / "bomb.xlsx", {"docProps/app.xml": 300 << 20}), "zip bomb"),
        "size": (big, "a report workbook is at most"),
    }


@pytest.mark.slow  # builds ~340 MB of compressed zeros
def test_hostile_workbooks_are_refused_in_seconds_and_change_nothing(tmp_path, report):
    xlsx, out = report
    check_workbook_size(xlsx)  # the real report workbook is within every limit
    made = hostile_workbooks(xlsx, tmp_path)
    before = _tree(out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for kind, (path, words) in made.items():
        with pytest.raises(VerificationRejected) as info:
            verify(path, out, by="Dr A")
        reason = str(info.value)
        assert words in reason and "\n" not in reason, (kind, reason)
    # a fixed, small memory: no part was expanded in memory (ru_maxrss is in KiB on Linux)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 64 * 1024
    assert _tree(out) == before and not (out / "audit.jsonl").exists()


def test_the_cli_and_the_inbox_give_the_one_line_reason(tmp_path, report):
    xlsx, out = report
    sheet, _xml = _sheet(xlsx)
    laughs = _rezip(xlsx, tmp_path / "laughs.xlsx", {sheet: b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "a">]>'})
    before = _tree(out)
    res = CliRunner().invoke(app, ["verify", str(laughs), "--reports", str(out), "--by", "Dr A"])
    assert res.exit_code != 0 and "DTD or XML entities" in res.output, res.output
    assert _tree(out) == before
    inbox = tmp_path / "reviewed"
    inbox.mkdir()
    dropped = inbox / "S-1.xlsx"
    dropped.write_bytes(laughs.read_bytes())
    watcher = ReviewedWatcher(inbox, lambda p: verify(p, out), quiet_s=0.0)
    watcher.scan_once(now=0.0)
    watcher.scan_once(now=1.0)
    reason = (inbox / "rejected" / "S-1.xlsx.reason.txt").read_text()
    assert "DTD or XML entities" in reason and reason.count("\n") == 1
    assert (inbox / "rejected" / "S-1.xlsx").read_bytes() == laughs.read_bytes()  # kept, never lost
    assert _tree(out) == before


def test_lab_data_export_refuses_the_same_workbooks(tmp_path, report):
    from wbcproc.reviewed import reviewed_classes

    xlsx, _out = report
    sheet, _xml = _sheet(xlsx)
    bad = _rezip(xlsx, tmp_path / "dim.xlsx", {sheet: b'<worksheet><dimension ref="A1:IV900000"/></worksheet>'})
    with pytest.raises(ValueError, match="900,000 rows"):
        reviewed_classes(bad)


def test_sample_json_is_bounded_and_never_raises(tmp_path):
    meta = tmp_path / "sample.json"
    meta.write_bytes(b'{"notes": "' + b"x" * MAX_METADATA_BYTES + b'"}')
    assert any("over 1024 KB" in e for e in read_metadata(meta).errors)
    meta.write_bytes(b"[" * 200_000 + b"]" * 200_000)  # nested past the parser's recursion limit
    errors = read_metadata(meta).errors
    assert errors and "could not be read as UTF-8 JSON" in errors[0]
    meta.write_text(json.dumps({"wbc_count": 7.2}))
    assert read_metadata(meta).errors == []


def test_not_a_zip_is_one_line(tmp_path):
    bad = tmp_path / "notes.xlsx"
    bad.write_text("not a spreadsheet")
    with pytest.raises(TooLarge, match="not an Excel workbook"):
        check_workbook_size(bad)
