"""Adapting to a new laboratory: reviewed cells in the Excel report -> a lab data root -> training data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import CELLS, FIXTURES, copy_cells
from openpyxl import load_workbook

from wbcproc.reviewed import FRAMED_MARKER, reviewed_classes

WBC = str(Path(sys.executable).parent / "wbc")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([WBC, *args], capture_output=True, text=True, timeout=300)


def test_reviewed_cells_become_a_lab_data_root(tmp_path, tiny_model):
    sample = tmp_path / "LAB-7"
    copy_cells(sample, 6)
    shutil.copy(FIXTURES / "fields" / "BloodImage_00003.jpg", sample / "field.jpg")
    out = tmp_path / "reports"
    r = _run("process", str(sample), "--out", str(out), "--model", str(tiny_model))
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "LAB-7.json").read_text())
    single = [c for c in report["cells"] if not c["field"]]
    from_field = [c for c in report["cells"] if c["field"]]
    assert len(single) == 6 and from_field

    # the physician fills in "Reviewed class" in Excel (here: openpyxl), one value is not a class
    wb = load_workbook(out / "LAB-7.xlsx")
    ws = wb["Cells"]
    header = [c.value for c in ws[1]]
    col_file, col_rev = header.index("File") + 1, header.index("Reviewed class") + 1
    truth = {}
    for row in range(2, ws.max_row + 1):
        name = ws.cell(row=row, column=col_file).value
        if name == single[0]["file"]:
            ws.cell(row=row, column=col_rev, value="Smudge cell")
        elif name in {c["file"] for c in single[1:4]}:
            label = next(p.parent.name for p in CELLS.glob(f"*/{name}"))
            ws.cell(row=row, column=col_rev, value=label)
            truth[name] = label
        elif name == from_field[0]["file"]:
            ws.cell(row=row, column=col_rev, value="neutrophil")  # BCCD labels.csv: NEUTROPHIL
            truth[name] = "neutrophil"
    wb.save(out / "LAB-7.xlsx")
    assert len(reviewed_classes(out / "LAB-7.xlsx")) == 5

    lab = tmp_path / "lab-root"
    r = _run("export-reviewed", str(out / "LAB-7.xlsx"), "--sample", str(sample), "--lab-data", str(lab), "--json")
    assert r.returncode == 0, r.stderr
    assert sum(json.loads(r.stdout)["written"].values()) == 4
    assert "Smudge cell" in r.stderr and "not one of" in r.stderr  # skipped, with the reason
    for name, label in truth.items():
        if "#" in name:
            crops = list((lab / "field-crops" / label).glob("LAB-7__*.png"))
            assert len(crops) == 1
        else:
            copied = lab / "cells" / label / f"LAB-7__{name}"
            assert copied.read_bytes() == (sample / name).read_bytes()  # byte for byte
    assert (lab / "field-crops" / FRAMED_MARKER).is_file()
    # unreviewed cells are never exported
    assert sum(1 for _ in lab.rglob("*.jpg")) + sum(1 for _ in lab.rglob("*.png")) == 4


def test_lab_root_is_gathered_as_two_sources_with_framing_kept(tmp_path):
    """``--data LAB_ROOT`` expands to its cells/ and field-crops/ roots; field crops keep their framing."""
    from training.data import gather

    lab = tmp_path / "lab"
    (lab / "cells" / "lymphocyte").mkdir(parents=True)
    (lab / "field-crops" / "neutrophil").mkdir(parents=True)
    (lab / "field-crops" / FRAMED_MARKER).write_text("x\n")
    src = next((CELLS / "lymphocyte").iterdir())
    shutil.copy(src, lab / "cells" / "lymphocyte" / src.name)
    shutil.copy(next((CELLS / "neutrophil").iterdir()), lab / "field-crops" / "neutrophil" / "c.jpg")
    g = gather([lab])
    assert sorted((it.label, it.framed) for it in g.items) == [("lymphocyte", False), ("neutrophil", True)]
    assert not g.skipped


def test_the_old_command_name_still_works_but_is_not_listed():
    """``wbc reviewed`` (the name before ``export-reviewed``) keeps scripts working; ``--help`` lists one verb."""
    listed = _run("--help")
    assert listed.returncode == 0 and "export-reviewed" in listed.stdout
    assert not [line for line in listed.stdout.splitlines() if line.strip("│ ").startswith("reviewed ")]
    old = _run("reviewed", "--help")
    assert old.returncode == 0 and "--sample" in old.stdout


def test_one_option_name_per_meaning_and_the_old_names_still_run(tmp_path):
    """The laboratory's data folder is --lab-data and a report folder --reports on every command; the names
    of earlier releases are rewritten before parsing (scripts keep working) and are not in --help."""
    from flows.cli import new_option_names

    assert new_option_names(["export-reviewed", "a.xlsx", "--out", "L"]) == [
        "export-reviewed",
        "a.xlsx",
        "--lab-data",
        "L",
    ]
    assert new_option_names(["verify", "a.xlsx", "--out=R"]) == ["verify", "a.xlsx", "--reports=R"]
    assert new_option_names(["adapt", "--data", "L", "--out", "RUN"]) == ["adapt", "--lab-data", "L", "--out", "RUN"]
    assert new_option_names(["process", "S", "--out", "O"]) == ["process", "S", "--out", "O"]  # --out is right there
    assert new_option_names(["verify", "--", "--out"]) == ["verify", "--", "--out"]
    for cmd, old in (("verify", "--out"), ("export-reviewed", "--out"), ("adapt", "--data"), ("serve", "--train-data")):
        shown = _run(cmd, "--help")
        assert shown.returncode == 0 and old not in shown.stdout, (cmd, old)
    missing = tmp_path / "missing.xlsx"
    r = _run("verify", str(missing), "--out", str(tmp_path))  # the old name parses; the workbook is what fails
    assert r.returncode == 1 and "No such option" not in r.stderr and "missing.xlsx" in r.stderr
