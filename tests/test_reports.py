"""Reports read back: Excel with openpyxl, JSON and FHIR structure and codes."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import fixture_images
from openpyxl import load_workbook

from wbcproc.classes import CLASSES, LOINC_PERCENT, WBC_CLASSES
from wbcproc.pipeline import process_sample
from wbcproc.report import report_paths, write_batch_summary


@pytest.fixture
def report(tmp_path, sample, tiny_model):
    shutil.copy(fixture_images()[0], sample / "=2+5.jpg")
    (sample / "+SUM(1,2).jpg").write_text("text, not an image")
    (sample / "@x.jpg").write_bytes(b"")
    (sample / "sample.json").write_text(json.dumps({"wbc_count": 6.0, "notes": '=HYPERLINK("x")', "ward": "=1+1"}))
    paths = process_sample(sample, tmp_path / "out", model=tiny_model)
    return paths, json.loads(paths["json"].read_text())


def test_json_report(report):
    paths, r = report
    assert set(r["counts"]) == set(CLASSES)
    assert r["wbc_total"] == sum(r["counts"][c] for c in WBC_CLASSES)
    assert r["cells_classified"] == 25 and len(r["cells"]) == 25
    assert {x["file"] for x in r["rejected"]} == {"+SUM(1,2).jpg", "@x.jpg"}
    assert {x["file"] for x in r["ignored"]} == {"sample.json"}
    assert r["absolute"] is not None and r["metadata"]["unknown_keys"] == {"ward": "=1+1"}
    assert r["model"]["name"] == "tiny-test-model" and len(r["model"]["sha256"]) == 64
    assert r["config"]["reference_intervals"]["name"] == "adult-default"
    assert "qualified person" in r["disclaimer"]
    cell = r["cells"][0]
    assert set(cell) >= {"file", "class", "confidence", "runner_up", "review"}
    assert {f["code"] for f in r["flags"]} >= {"REJECTED_FILES", "LOW_WBC_COUNT"}
    base = {"cell", "direction", "code", "kind", "value", "interval", "ci_outside", "grade", "message"}
    corrected = {"corrected_value", "corrected_ci95", "probability"}
    for f in r["flags"]:
        assert base <= set(f) <= base | corrected, f
        assert f["kind"] in ("percent", "absolute", "nrbc", "sample")
        assert (f["grade"] in ("definite", "possible")) == (f["kind"] != "sample")
    # nothing but the three reports, no temp files left behind
    assert sorted(p.name for p in paths["json"].parent.iterdir()) == [
        "S-001.fhir.json",
        "S-001.json",
        "S-001.xlsx",
    ]


def test_excel_read_back(report):
    paths, r = report
    wb = load_workbook(paths["xlsx"])
    assert wb.sheetnames == ["Summary", "Cells", "Rejected", "About"]
    summary = wb["Summary"]
    values: dict = {}
    for i in range(1, 80):  # first occurrence: the percent table comes before the absolute one
        values.setdefault(summary.cell(row=i, column=1).value, i)
    assert summary.cell(row=values["Sample"], column=2).value == "S-001"
    row = values["Neutrophils"]
    assert summary.cell(row=row, column=2).value == r["counts"]["neutrophil"]
    assert summary.cell(row=row, column=3).value == pytest.approx(r["percent"]["neutrophil"])
    # every flagged percentage row is filled red (high) or blue (low)
    for f in r["flags"]:
        if (f["cell"] in WBC_CLASSES and "_PCT_" in f["code"]) or f["code"] == "LEFT_SHIFT":
            from wbcproc.classes import DISPLAY_NAMES

            fill = summary.cell(row=values[DISPLAY_NAMES[f["cell"]]], column=1).fill.start_color.rgb
            definite = "FFC7CE" if f["direction"] == "high" else "BDD7EE"
            assert fill.endswith(definite if f["grade"] == "definite" else "FCE4D6"), f  # possible: pale
    assert summary._charts, "the differential chart is missing"
    cells = wb["Cells"]
    files = [cells.cell(row=i, column=1).value for i in range(2, cells.max_row + 1)]
    assert "=2+5.jpg" in files
    for col in cells.iter_cols(min_row=1):
        for c in col:
            assert c.data_type != "f", f"formula in Cells!{c.coordinate}: {c.value!r}"
    assert len(cells._images) == 25
    dv = cells.data_validations.dataValidation[0]
    assert dv.type == "list" and all(c in dv.formula1 for c in CLASSES)
    assert "H2" in str(dv.sqref)
    rejected = wb["Rejected"]
    rows = {
        rejected.cell(row=i, column=1).value: rejected.cell(row=i, column=3).value
        for i in range(2, rejected.max_row + 1)
    }
    assert rows["@x.jpg"] == "empty file (0 bytes)" and "not an image" in rows["+SUM(1,2).jpg"]
    about = wb["About"]
    text = " ".join(str(c.value) for row in about.iter_rows() for c in row if c.value is not None)
    assert "qualified person" in text and "Clopper-Pearson" in text and "Dacie and Lewis" in text
    assert "tiny-test-model 0.0.1-test" in text
    for ws in wb.worksheets:
        for row in ws.iter_rows():
            for c in row:
                assert c.data_type != "f", f"formula in {ws.title}!{c.coordinate}"


def test_the_flag_error_rates_say_where_they_were_measured(tmp_path, sample):
    """The About sheet's flag error rates come from the model's sidecar (measured on PBC-like images) and say
    that they may differ at another laboratory."""
    from helpers import make_tiny_model

    from wbcproc.report.excel import FLAG_RATES_CAVEAT
    from wbcproc.resolve import resolve_model_path
    from wbcproc.sidecar import read_sidecar

    perf = read_sidecar(resolve_model_path(None)).sidecar.flag_performance
    model = make_tiny_model(tmp_path / "model", flag_performance=perf)
    paths = process_sample(sample, tmp_path / "out", model=model)
    about = load_workbook(paths["xlsx"])["About"]
    rows = {r[0]: r[1] for r in about.iter_rows(values_only=True)}
    assert any(str(k).startswith("How often flags are wrong") for k in rows)
    assert rows["  where measured"] == FLAG_RATES_CAVEAT and "another laboratory" in FLAG_RATES_CAVEAT


def test_the_cells_sheet_says_what_decoding_did_to_an_image(tmp_path, sample, tiny_model):
    """A cell cropped past the camera edge (black padding) is filled and noted: the note is in the JSON and
    in the workbook's Image notes column, beside that cell only."""
    import cv2
    import numpy as np

    bgr = cv2.imread(str(fixture_images()[0]))
    k = bgr.shape[1] // 5
    padded = np.zeros_like(bgr)
    padded[:, k:] = bgr[:, :-k]
    cv2.imwrite(str(sample / "edge.png"), padded)
    paths = process_sample(sample, tmp_path / "out", model=tiny_model)
    r = json.loads(paths["json"].read_text())
    noted = {c["file"]: c.get("notes", []) for c in r["cells"]}
    assert [n for n in noted["edge.png"] if n.startswith("black border outside the camera image")]
    assert not any(v for f, v in noted.items() if f != "edge.png")
    cells = load_workbook(paths["xlsx"])["Cells"]
    header = [c.value for c in cells[1]]
    assert header[-1] == "Image notes" and "Reviewed class" in header
    col = header.index("Image notes") + 1
    by_file = {
        cells.cell(row=i, column=1).value: cells.cell(row=i, column=col).value for i in range(2, cells.max_row + 1)
    }
    assert by_file["edge.png"] == "; ".join(noted["edge.png"])
    assert all(v is None for f, v in by_file.items() if f != "edge.png")


def test_fhir_bundle(report):
    paths, r = report
    b = json.loads(paths["fhir"].read_text())
    assert b["resourceType"] == "Bundle" and b["type"] == "collection"
    resources = [e["resource"] for e in b["entry"]]
    dr = resources[0]
    assert dr["resourceType"] == "DiagnosticReport" and dr["status"] in {"final", "preliminary"}
    obs = {o["code"]["coding"][0]["code"]: o for o in resources if o["resourceType"] == "Observation"}
    for cls, (code, _) in LOINC_PERCENT.items():
        assert code in obs, f"{cls} observation missing"
    neut = obs["770-8"]
    assert neut["valueQuantity"]["value"] == r["percent"]["neutrophil"]
    assert neut["valueQuantity"]["system"] == "http://unitsofmeasure.org"
    assert neut["referenceRange"][0]["low"]["value"] == 40.0
    assert neut["interpretation"][0]["coding"][0]["code"] in {"H", "L", "N"}
    assert "751-8" in obs  # absolute neutrophils, since sample.json gives the WBC count
    refs = {x["reference"] for x in dr["result"]}
    assert refs == {e["fullUrl"] for e in b["entry"] if e["resource"]["resourceType"] == "Observation"}
    flagged_high = {f["cell"] for f in r["flags"] if f["direction"] == "high" and "_PCT_" in f["code"]}
    for cls in flagged_high:
        assert obs[LOINC_PERCENT[cls][0]]["interpretation"][0]["coding"][0]["code"] == "H"


def test_batch_summary(tmp_path, report):
    _, r = report
    rows = [
        {"sample_id": "=evil", "status": "processed", "result": r, "report": "x.xlsx"},
        {"sample_id": "broken", "status": "failed", "error": "folder missing"},
    ]
    path = write_batch_summary(rows, tmp_path)
    ws = load_workbook(path)["Batch"]
    assert ws["A2"].value == "=evil" and ws["A2"].data_type == "s"
    assert ws["B3"].value == "failed" and ws["M3"].value == "folder missing"


def test_output_names_never_escape(tmp_path):
    p = report_paths("../../etc/passwd", tmp_path)
    for v in p.values():
        assert v.parent == tmp_path


def test_one_list_of_result_rows_feeds_every_writer(tmp_path, sample, tiny_model):
    """differential_rows: six percentages, NRBC, six absolute counts (sample.json has the WBC count), each
    carrying the flag raised on it - the rows the Summary sheet, FHIR, HL7 and the UI table show."""
    from flows.process import differential_table
    from wbcproc.pipeline import process_sample
    from wbcproc.report.fhir import fhir_bundle
    from wbcproc.report.rows import differential_rows

    (sample / "sample.json").write_text('{"wbc_count": 7.2}')
    r = json.loads(process_sample(sample, tmp_path / "o", model=tiny_model)["json"].read_text())
    rows = differential_rows(r)
    assert [x.kind for x in rows] == ["percent"] * 6 + ["nrbc"] + ["absolute"] * 6
    flagged = {(f["cell"], f["kind"]) for f in r["flags"] if f["cell"]}
    assert {(x.cell, x.kind) for x in rows if x.flag} == flagged
    obs = [e["resource"] for e in fhir_bundle(r)["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert [o["code"]["coding"][0]["code"] for o in obs] == [x.loinc[0] for x in rows]
    assert [o["interpretation"][0]["coding"][0]["code"] for o in obs] == [x.interpretation for x in rows]
    assert [t["percent"] for t in differential_table(r)[:7]] == [x.value for x in rows[:7]]
