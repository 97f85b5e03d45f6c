"""Verify and sign: an edited report workbook becomes the final report, with a hash-chained audit trail.

Real round trips: reports made by the real pipeline (tiny ONNX model, real fixture cells), workbooks
edited with openpyxl and - where LibreOffice is installed - opened, edited and saved by LibreOffice itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import (
    REV_COL,
    edit_workbook,
    expected_counts,
    libreoffice_edit,
    libreoffice_uno,
    other_class,
    review_plan,
)
from openpyxl import load_workbook

from wbcproc.audit import check, read_entries
from wbcproc.classes import WBC_CLASSES
from wbcproc.pipeline import process_sample
from wbcproc.verify import VerificationRejected, verify

CLASS_COL = 3


def _report(sample: Path, out: Path, model: Path) -> tuple[Path, dict]:
    paths = process_sample(sample, out, model=model)
    return paths["xlsx"], json.loads(paths["json"].read_text())


def _check_final_workbook(done, prelim: dict, plan: dict[str, str], xlsx: Path) -> None:
    """Status, signature, the verified class beside the model's, what verification did, the Audit sheet and
    every thumbnail of the preliminary workbook."""
    wb = load_workbook(done.paths["xlsx"])
    summary = {
        wb["Summary"].cell(row=r, column=1).value: wb["Summary"].cell(row=r, column=2).value for r in range(1, 20)
    }
    assert summary["Status"].startswith("FINAL - verified by Dr A. Example")
    assert summary["Verified by"] == "Dr A. Example"
    cells = wb["Cells"]
    assert cells.cell(row=1, column=9).value == "Model class"
    changed = {cells.cell(row=r, column=1).value for r in range(2, cells.max_row + 1)
               if cells.cell(row=r, column=3).value != cells.cell(row=r, column=9).value}  # fmt: skip
    assert changed == {c["file"] for c in prelim["cells"][:3]}
    marks = {cells.cell(row=r, column=1).value: cells.cell(row=r, column=7).value for r in range(2, cells.max_row + 1)}
    assert {f for f, m in marks.items() if m == "changed"} == changed
    assert {f for f, m in marks.items() if m == "confirmed"} == set(plan) - changed
    assert (
        cells.cell(row=1, column=4).value == "Model confidence" and cells.cell(row=1, column=7).value == "Verification"
    )
    audit = wb["Audit"]
    assert {audit.cell(row=r, column=4).value for r in range(2, 5)} == changed
    # every cell keeps its thumbnail, the same picture as in the preliminary workbook, on its own row
    from wbcproc.report.excel import read_thumbnails

    before, after = read_thumbnails(xlsx), read_thumbnails(done.paths["xlsx"])
    assert len(after) == len(prelim["cells"]) and after == before
    assert not [n for n in done.notes if "thumbnails" in n]


def test_three_corrections_make_a_final_report_with_a_checked_audit_chain(tmp_path, sample, tiny_model):
    out = tmp_path / "out"
    xlsx, prelim = _report(sample, out, tiny_model)
    assert prelim["status"] == "preliminary" and prelim["report_id"]
    prelim_bytes = (out / "S-001.json").read_bytes()
    plan = review_plan(prelim)
    edited = edit_workbook(xlsx, tmp_path / "edited.xlsx", plan)
    lab = tmp_path / "lab"
    done = verify(edited, out, sample_dir=sample, lab_data=lab)

    assert done.version == 1 and {p.name for p in done.paths.values()} == {
        "S-001.final.xlsx", "S-001.final.json", "S-001.final.fhir.json"}  # fmt: skip
    assert (out / "S-001.json").read_bytes() == prelim_bytes  # the preliminary report is never overwritten
    final = json.loads(done.paths["json"].read_text())
    assert final["status"] == "final" and final["verified_by"] == "Dr A. Example"
    assert final["counts"] == expected_counts(prelim, plan)
    assert len(final["changes"]) == 3
    assert {(c["file"], c["verified_class"]) for c in final["changes"]} == {
        (c["file"], plan[c["file"]]) for c in prelim["cells"][:3]}  # fmt: skip
    wbc = sum(final["counts"][c] for c in WBC_CLASSES)
    assert final["wbc_total"] == wbc
    for c in WBC_CLASSES:
        assert final["percent"][c] == pytest.approx(100 * final["counts"][c] / wbc, abs=0.01)
    assert final["cells_for_review"] == 0 and final["corrected"] is None
    assert final["preliminary"] == {"report_id": prelim["report_id"], "file": "S-001.json"}

    # the audit log: one entry, chained, with the hashes of what was read and written
    rep = check(out / "audit.jsonl")
    assert rep.ok and rep.entries == 1
    entry = read_entries(out / "audit.jsonl")[0]
    assert entry["verified_by"] == "Dr A. Example" and len(entry["changes"]) == 3
    import hashlib

    assert entry["hashes"]["preliminary_json"] == hashlib.sha256(prelim_bytes).hexdigest()
    assert entry["hashes"]["workbook_read"] == hashlib.sha256(edited.read_bytes()).hexdigest()
    assert entry["hashes"]["final_json"] == hashlib.sha256(done.paths["json"].read_bytes()).hexdigest()
    assert entry["hashes"]["final_xlsx"] == hashlib.sha256(done.paths["xlsx"].read_bytes()).hexdigest()

    _check_final_workbook(done, prelim, plan, xlsx)

    # FHIR: final, the verifier as performer
    bundle = json.loads(done.paths["fhir"].read_text())
    dr = bundle["entry"][0]["resource"]
    assert dr["status"] == "final" and dr["performer"][0]["display"] == "Dr A. Example"
    assert {e["resource"]["status"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"} == {
        "final"
    }

    # the verified cells went to the lab data folder in `wbc export-reviewed` format
    written = sorted(p.parent.name for p in (lab / "cells").rglob("*") if p.is_file())
    assert sorted(plan.values()) == written


def test_a_second_verification_writes_v2_and_both_stay_in_the_trail(tmp_path, sample, tiny_model):
    out = tmp_path / "out"
    xlsx, prelim = _report(sample, out, tiny_model)
    first = verify(edit_workbook(xlsx, tmp_path / "a.xlsx", review_plan(prelim)), out)
    final1 = first.paths["json"].read_bytes()
    # the physician corrects one more cell in the final workbook and signs again
    f = json.loads(final1)
    cell = f["cells"][5]
    second = verify(
        edit_workbook(first.paths["xlsx"], tmp_path / "b.xlsx", {cell["file"]: other_class(cell["class"])}, "Dr B"), out
    )
    assert second.version == 2 and second.paths["json"].name == "S-001.final.v2.json"
    assert first.paths["json"].read_bytes() == final1  # never overwritten
    f2 = json.loads(second.paths["json"].read_text())
    assert len(f2["changes"]) == 4 and f2["verified_by"] == "Dr B"
    assert json.loads(second.paths["fhir"].read_text())["entry"][0]["resource"]["status"] == "amended"
    rep = check(out / "audit.jsonl")
    assert rep.ok and rep.entries == 2
    wb = load_workbook(second.paths["xlsx"])
    who = {wb["Audit"].cell(row=r, column=2).value for r in range(2, wb["Audit"].max_row + 1)}
    assert {"Dr A. Example", "Dr B"} <= who


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_mismatched_or_tampered_workbooks_change_nothing_and_say_why(tmp_path, sample, tiny_model):
    out = tmp_path / "out"
    xlsx, prelim = _report(sample, out, tiny_model)
    plan = review_plan(prelim)
    before = _snapshot(out)

    def rejected(path: Path, *expected: str) -> None:
        with pytest.raises(VerificationRejected) as info:
            verify(path, out, by="Dr A")
        text = str(info.value)
        for e in expected:
            assert e in text, text
        assert _snapshot(out) == before

    # not a workbook
    bad = tmp_path / "notes.xlsx"
    bad.write_text("not a spreadsheet")
    rejected(bad, "not an Excel workbook")
    # a non-canonical class, listed with its row
    wb = load_workbook(edit_workbook(xlsx, tmp_path / "c.xlsx", plan))
    wb["Cells"].cell(row=2, column=REV_COL).value = "Neutro"
    wb["Cells"].cell(row=3, column=REV_COL).value = "blast"
    wb.save(tmp_path / "c.xlsx")
    rejected(tmp_path / "c.xlsx", "'Neutro' for", "'blast' for", "not a canonical class")
    # a row added, a file renamed
    wb = load_workbook(edit_workbook(xlsx, tmp_path / "d.xlsx", plan))
    ws = wb["Cells"]
    ws.cell(row=ws.max_row + 1, column=1).value = "extra.jpg"
    ws.cell(row=ws.max_row, column=CLASS_COL).value = "neutrophil"
    ws.cell(row=2, column=1).value = "renamed.jpg"
    wb.save(tmp_path / "d.xlsx")
    rejected(tmp_path / "d.xlsx", "'extra.jpg' is not in the report", "'renamed.jpg' is not in the report")
    # the model's own class edited instead of Reviewed class
    wb = load_workbook(edit_workbook(xlsx, tmp_path / "e.xlsx", plan))
    old = wb["Cells"].cell(row=2, column=CLASS_COL).value
    wb["Cells"].cell(row=2, column=CLASS_COL).value = other_class(old)
    wb.save(tmp_path / "e.xlsx")
    rejected(tmp_path / "e.xlsx", "corrections go in 'Reviewed class'")
    # another sample / another report version / another model
    for label, sheet, value, message in (
        ("Sample", "Summary", "S-999", "the workbook is for sample 'S-999'"),
        ("Model sha256", "About", "0" * 64, "model sha256 000000000000"),
    ):
        wb = load_workbook(edit_workbook(xlsx, tmp_path / "f.xlsx", plan))
        ws = wb[sheet]
        for r in range(1, ws.max_row + 1):
            if ws.cell(row=r, column=1).value == label:
                ws.cell(row=r, column=2).value = value
        wb.save(tmp_path / "f.xlsx")
        rejected(tmp_path / "f.xlsx", message)
    wb = load_workbook(edit_workbook(xlsx, tmp_path / "g.xlsx", plan))
    ws = wb["Summary"]
    for r in range(1, ws.max_row + 1):
        if ws.cell(row=r, column=1).value == "Report ID":
            ws.cell(row=r, column=2).value = "f" * 32
    wb.save(tmp_path / "g.xlsx")
    rejected(tmp_path / "g.xlsx", "no report with id 'ffff")
    # no name: nothing is signed, and the message says where the name goes
    with pytest.raises(VerificationRejected, match=r"'Verified by' cell \(B5\) or pass --by"):
        verify(edit_workbook(xlsx, tmp_path / "h.xlsx", plan, name=None), out)
    # a REVIEW-marked cell left without a reviewed class
    marked = [c["file"] for c in prelim["cells"] if c["review"] or c["flag_driver"]]
    assert marked, "the random tiny model marks cells for review"
    rejected(
        edit_workbook(xlsx, tmp_path / "i.xlsx", {marked[0]: "lymphocyte"}), "marked REVIEW have no reviewed class"
    )
    assert not (out / "audit.jsonl").exists()


def test_audit_check_finds_an_edited_entry(tmp_path, sample, tiny_model):
    from typer.testing import CliRunner

    from flows.cli import app

    out = tmp_path / "out"
    xlsx, prelim = _report(sample, out, tiny_model)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "verify",
            str(edit_workbook(xlsx, tmp_path / "a.xlsx", review_plan(prelim), None)),
            "--reports",
            str(out),
            "--by",
            "Dr C",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["changes"] == 3
    final = json.loads((out / "S-001.final.json").read_text())
    verify(
        edit_workbook(out / "S-001.final.xlsx", tmp_path / "b.xlsx", {final["cells"][4]["file"]: "basophil"}, "Dr D"),
        out,
    )
    ok = runner.invoke(app, ["audit", "check", str(out)])
    assert ok.exit_code == 0 and "2 entries, chain intact" in ok.output
    log = out / "audit.jsonl"
    lines = log.read_text().splitlines()
    lines[0] = lines[0].replace('"Dr C"', '"Dr X"')  # someone rewrites who signed
    log.write_text("\n".join(lines) + "\n")
    bad = runner.invoke(app, ["audit", "check", str(out)])
    assert bad.exit_code == 1 and "line 1: hash does not match its content" in bad.output
    log.write_text(lines[1] + "\n")  # the first entry removed
    bad = runner.invoke(app, ["audit", "check", str(log)])
    assert bad.exit_code == 1 and "seq 2, expected 1" in bad.output


@pytest.mark.slow
@pytest.mark.skipif(
    libreoffice_uno() is None,
    reason="LibreOffice Calc with python3-uno (Debian: libreoffice-calc-nogui python3-uno) is not installed",
)
def test_a_workbook_edited_and_saved_in_libreoffice_verifies(tmp_path, sample, tiny_model):
    """The three corrections, the confirmations and the name are typed *in LibreOffice Calc* (headless,
    through UNO) and the workbook saved by Calc as .xlsx: the file wbc reads is LibreOffice's own."""
    out = tmp_path / "out"
    xlsx, prelim = _report(sample, out, tiny_model)
    plan = review_plan(prelim)
    saved = libreoffice_edit(xlsx, tmp_path / "lo" / "edited.xlsx", plan)
    assert saved.read_bytes()[:2] == b"PK" and saved.stat().st_size != xlsx.stat().st_size
    done = verify(saved, out)
    final = json.loads(done.paths["json"].read_text())
    assert final["counts"] == expected_counts(prelim, plan) and len(final["changes"]) == 3
    assert final["verified_by"] == "Dr A. Example"
    assert check(out / "audit.jsonl").ok


def test_a_missing_preliminary_workbook_costs_the_thumbnails_not_the_final_report(tmp_path, sample, tiny_model):
    out = tmp_path / "out"
    xlsx, prelim = _report(sample, out, tiny_model)
    edited = edit_workbook(xlsx, tmp_path / "edited.xlsx", review_plan(prelim))
    xlsx.unlink()  # e.g. the preliminary workbook was moved away by hand
    done = verify(edited, out)
    assert done.paths["xlsx"].is_file() and json.loads(done.paths["json"].read_text())["status"] == "final"
    assert "the final workbook has no cell thumbnails: S-001.xlsx is not in the report folder" in done.notes


def test_a_sample_archived_while_its_cells_are_copied_is_followed_to_the_archive(
    tmp_path, sample, tiny_model, monkeypatch
):
    """The watcher archives a finished folder while its report may already be signed: the cells still reach
    the laboratory data folder, copied from where the folder went."""
    import shutil

    import wbcproc.verify as verify_mod

    inbox = tmp_path / "inbox"
    drop = inbox / sample.name
    shutil.copytree(sample, drop)
    out = tmp_path / "out"
    xlsx, prelim = _report(drop, out, tiny_model)
    plan = review_plan(prelim)
    edited = edit_workbook(xlsx, tmp_path / "edited.xlsx", plan)
    real_find = verify_mod.find_sample_dir
    found: list[Path | None] = []

    def find_then_archive(report, roots, **kw):  # the real search; the watcher's move lands right after it
        d = real_find(report, roots, **kw)
        found.append(d)
        if d is not None and d.parent == inbox:
            (inbox / "archive").mkdir(exist_ok=True)
            d.rename(inbox / "archive" / d.name)
        return d

    monkeypatch.setattr(verify_mod, "find_sample_dir", find_then_archive)
    lab = tmp_path / "lab"
    done = verify(edited, out, sample_roots=[inbox / "archive", inbox], lab_data=lab)
    assert found == [drop, inbox / "archive" / sample.name]
    assert done.exported is not None and not done.exported.skipped
    assert sorted(p.parent.name for p in (lab / "cells").rglob("*") if p.is_file()) == sorted(plan.values())
