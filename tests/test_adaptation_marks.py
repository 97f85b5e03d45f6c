"""``wbc adapt --suggest N --reports DIR``: the suggested cells marked "review for adaptation" in the preliminary
workbooks - real reports from the real pipeline (tiny ONNX model, real fixture cells), the real ranking, the
workbooks read back with openpyxl; a workbook a person signed or wrote in is never written over."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import copy_cells, edit_workbook, other_class, review_plan
from openpyxl import load_workbook

from wbcproc.pipeline import process_sample
from wbcproc.report.excel import ADAPT_HEADER, SUGGESTED_LABEL, adaptation_rank, read_thumbnails
from wbcproc.report.marks import mark_workbooks
from wbcproc.reviewed import reviewed_classes
from wbcproc.suggested import read_suggested, suggested_in
from wbcproc.verify import verify


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _cells_sheet(xlsx: Path) -> tuple[list[str], list[tuple]]:
    wb = load_workbook(xlsx, read_only=True)
    rows = list(wb["Cells"].iter_rows(values_only=True))
    wb.close()
    return [str(h or "") for h in rows[0]], rows[1:]


def _summary_value(xlsx: Path, label: str):
    wb = load_workbook(xlsx, read_only=True)
    found = next((row[1] for row in wb["Summary"].iter_rows(values_only=True) if row and row[0] == label), None)
    wb.close()
    return found


def _wbc(*args: str) -> subprocess.CompletedProcess:
    wbc = str(Path(sys.executable).with_name("wbc"))
    return subprocess.run([wbc, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def lab(tmp_path, tiny_model):
    """Four processed samples: S-1..S-3 in the archive the suggestions are drawn from, S-9 elsewhere."""
    archive, reports = tmp_path / "archive", tmp_path / "reports"
    for sid, n in (("S-1", 6), ("S-2", 6), ("S-3", 5)):
        copy_cells(archive / sid, n)
        process_sample(archive / sid, reports, model=tiny_model)
    copy_cells(tmp_path / "elsewhere" / "S-9", 4)
    process_sample(tmp_path / "elsewhere" / "S-9", reports, model=tiny_model)
    return archive, reports


def test_suggested_cells_are_marked_in_their_workbooks_and_nothing_a_person_wrote_is_lost(tmp_path, tiny_model, lab):
    archive, reports = lab
    s1, s2, s3, s9 = (reports / f"S-{i}.xlsx" for i in (1, 2, 3, 9))
    thumbs_before = {p: read_thumbnails(p) for p in (s1, s2)}
    # S-2: a reviewer has started (one cell reclassified, not signed); S-3: signed, not yet dropped for
    # verification; S-9: not among the samples the suggestions come from
    r2 = json.loads((reports / "S-2.json").read_text())
    first = r2["cells"][0]
    typed = {first["file"]: other_class(first["class"])}
    edit_workbook(s2, s2, typed, name=None)
    r3 = json.loads((reports / "S-3.json").read_text())
    edit_workbook(s3, s3, review_plan(r3, 1), name="Dr A. Example")
    untouched = {p: _sha(p) for p in (s3, s9)}

    n_cells = 6 + 6 + 5  # every candidate is suggested, so every sample in the archive has some
    out = tmp_path / "to-review"
    r = _wbc("adapt", "--suggest", str(n_cells), "--samples", str(archive), "--out", str(out),
             "--model", str(tiny_model), "--reports", str(reports), "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["workbooks"]
    assert sorted(Path(m["workbook"]).name for m in res["marked"]) == ["S-1.xlsx", "S-2.xlsx"]
    assert [(Path(x["workbook"]).name, x["why"].split(" (")[0]) for x in res["left"]] == [
        ("S-3.xlsx", "signed in the workbook")
    ]
    assert "not marked: S-3.xlsx: signed in the workbook ('Verified by': 'Dr A. Example')" in r.stderr
    assert {p: _sha(p) for p in untouched} == untouched  # the signed one and the one not suggested from

    suggested = read_suggested(out / "suggested.csv")
    ranks_csv = {
        (Path(row["source"]).parent.name, Path(row["source"]).name): int(row["rank"])
        for row in csv.DictReader((out / "suggested.csv").open(encoding="utf-8"))
    }
    for sid, xlsx in (("S-1", s1), ("S-2", s2)):
        report = json.loads((reports / f"{sid}.json").read_text())
        header, rows = _cells_sheet(xlsx)
        i_file, i_adapt, i_rev = header.index("File"), header.index(ADAPT_HEADER), header.index("Reviewed class")
        assert header[-1] == "Image notes"
        marks = {row[i_file]: adaptation_rank(row[i_adapt]) for row in rows}
        assert marks == {f: ranks_csv[(sid, f)] for f in marks}  # every cell of the sample, with its rank
        assert marks == suggested_in(report, suggested)
        assert _summary_value(xlsx, SUGGESTED_LABEL).startswith(f"{len(marks)} (Cells sheet")
        # the REVIEW cells stay first; the suggested ones follow by rank
        review = [bool(row[header.index("Review")]) for row in rows]
        assert review == sorted(review, reverse=True)
        after = [marks[row[i_file]] for row, rv in zip(rows, review, strict=True) if not rv]
        assert after == sorted(after)
        assert read_thumbnails(xlsx) == thumbs_before[xlsx]  # the same pictures
        if sid == "S-2":  # the reviewer's entry is kept, and export-reviewed / verification read it
            assert {row[i_file]: row[i_rev] for row in rows if row[i_rev]} == typed
            assert reviewed_classes(xlsx) == typed

    # a marked workbook signs as any other: the reviewer's entry and the REVIEW cells, then the name
    plan = {**review_plan(r2, 0), **typed}
    signed = edit_workbook(s2, tmp_path / "S-2-signed.xlsx", plan)
    done = verify(signed, reports)
    final = json.loads(done.paths["json"].read_text())
    assert final["status"] == "final"
    assert {c["file"]: c["class"] for c in final["cells"]}[first["file"]] == typed[first["file"]]

    # marking again (a new list) replaces the marks; the verified sample is now left as it is
    again = mark_workbooks(reports, {"S-1": {sorted(suggested["S-1"])[0]: 1}})
    assert [(p.name, k) for p, k in again.marked] == [("S-1.xlsx", 1)]
    header, rows = _cells_sheet(s1)
    assert sum(1 for row in rows if row[header.index(ADAPT_HEADER)]) == 1
    assert mark_workbooks(reports, {"S-2": suggested["S-2"]}).left[0][1].startswith("the sample is verified already")


def test_a_workbook_with_anything_else_written_in_it_is_left_as_it_was(tmp_path, lab):
    _, reports = lab
    s1 = reports / "S-1.xlsx"
    wb = load_workbook(s1)
    wb["Summary"]["E3"] = "smear thin at the tail; repeat?"  # a note a person typed
    wb.save(s1)
    before = _sha(s1)
    report = json.loads((reports / "S-1.json").read_text())
    done = mark_workbooks(reports, {"S-1": {report["cells"][0]["file"]: 1}})
    assert done.marked == [] and done.cells == 1
    ((path, why),) = done.left
    assert path == s1 and "sheet Summary, cell E3: 'smear thin at the tail; repeat?'" in why
    assert _sha(s1) == before


def test_the_cli_refuses_reports_without_suggest_and_a_missing_folder(tmp_path, tiny_model):
    r = _wbc("adapt", "--out", str(tmp_path / "o"), "--reports", str(tmp_path))
    assert r.returncode == 2 and "--reports marks the cells of --suggest N" in r.stderr
    copy_cells(tmp_path / "archive" / "S-1", 2)
    r = _wbc("adapt", "--suggest", "1", "--samples", str(tmp_path / "archive"), "--out", str(tmp_path / "o"),
             "--model", str(tiny_model), "--reports", str(tmp_path / "nowhere"))  # fmt: skip
    assert r.returncode == 2 and "--reports" in r.stderr and "is not a folder of reports" in r.stderr


def test_a_suggestions_list_without_its_columns_is_refused(tmp_path):
    bad = tmp_path / "suggested.csv"
    bad.write_text("file,class\na.jpg,neutrophil\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no rank / source column"):
        read_suggested(bad)


def test_a_new_list_takes_an_earlier_lists_marks_out_and_keeps_what_the_reviewer_typed(tmp_path, lab):
    _, reports = lab
    s1 = reports / "S-1.xlsx"
    r1, r2 = (json.loads((reports / f"S-{i}.json").read_text()) for i in (1, 2))
    first = mark_workbooks(reports, {"S-1": {r1["cells"][0]["file"]: 1}, "S-2": {r2["cells"][0]["file"]: 2}})
    assert sorted(p.name for p, _ in first.marked) == ["S-1.xlsx", "S-2.xlsx"] and first.cleared == []
    typed = {r1["cells"][1]["file"]: other_class(r1["cells"][1]["class"])}
    edit_workbook(s1, s1, typed, name=None)  # the reviewer typed a class into S-1 meanwhile
    thumbs = read_thumbnails(s1)
    unmarked = {p: _sha(p) for p in (reports / "S-3.xlsx", reports / "S-9.xlsx")}

    second = mark_workbooks(reports, {"S-2": {r2["cells"][1]["file"]: 1}})
    assert [(p.name, k) for p, k in second.marked] == [("S-2.xlsx", 1)]
    assert second.cleared == [s1] and second.left == []
    header, _ = _cells_sheet(s1)
    assert ADAPT_HEADER not in header and _summary_value(s1, SUGGESTED_LABEL) is None
    assert reviewed_classes(s1) == typed and read_thumbnails(s1) == thumbs
    assert {p: _sha(p) for p in unmarked} == unmarked  # never marked: not written again

    # a signed workbook keeps the marks it was signed with, and says so
    mark_workbooks(reports, {"S-1": {r1["cells"][0]["file"]: 1}})
    edit_workbook(s1, s1, {**review_plan(r1, 0), **typed}, name="Dr A. Example")
    signed = _sha(s1)
    third = mark_workbooks(reports, {"S-2": {r2["cells"][0]["file"]: 1}})
    assert third.cleared == [] and [(p.name, why.split(" (")[0]) for p, why in third.left] == [
        ("S-1.xlsx", "signed in the workbook")
    ]
    assert _sha(s1) == signed
