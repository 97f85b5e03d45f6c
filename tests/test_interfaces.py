"""LIS interfaces: HL7 v2.5.1 ORU^R01 (parsed back strictly with hl7apy) and FHIR R4 bundles validated with
a maintained model library (fhir.resources), for preliminary and verified final reports."""

from __future__ import annotations

import json

import pytest
from fhir.resources.R4B.bundle import Bundle
from helpers import edit_workbook, review_plan

from wbcproc.config import ConfigError, load_settings
from wbcproc.pipeline import process_sample
from wbcproc.report.hl7 import parse
from wbcproc.verify import verify


@pytest.fixture
def hl7_settings(tmp_path):
    cfg = tmp_path / "wbc.toml"
    cfg.write_text('[outputs]\nhl7 = true\nhl7_sending_facility = "HAEM-LAB"\nhl7_receiving_application = "LIS1"\n')
    return load_settings(cfg)


def _observations(msg) -> list:
    return list(msg.oru_r01_patient_result.oru_r01_order_observation.oru_r01_observation)


def _fhir_results(bundle: dict) -> dict[str, tuple[float, str, str]]:
    """LOINC code -> (value, H/L/N, status) of every Observation."""
    out = {}
    for e in bundle["entry"]:
        r = e["resource"]
        if r["resourceType"] == "Observation":
            out[r["code"]["coding"][0]["code"]] = (
                r["valueQuantity"]["value"],
                r["interpretation"][0]["coding"][0]["code"],
                r["status"],
            )
    return out


def _hl7_results(msg) -> dict[str, tuple[float, str, str]]:
    out = {}
    for o in _observations(msg):
        obx = o.obx
        out[obx.obx_3.obx_3_1.value] = (float(obx.obx_5.value), obx.obx_8.value, obx.obx_11.value)
    return out


def test_preliminary_hl7_carries_the_fhir_results_with_status_p(tmp_path, sample, tiny_model, hl7_settings):
    paths = process_sample(sample, tmp_path / "out", model=tiny_model, settings=hl7_settings)
    assert paths["hl7"].name == "S-001.hl7"
    msg = parse(paths["hl7"].read_text())
    assert msg.msh.msh_4.value == "HAEM-LAB" and msg.msh.msh_5.value == "LIS1"
    assert msg.msh.msh_9.to_er7() == "ORU^R01^ORU_R01" and msg.msh.msh_12.value == "2.5.1"
    obr = msg.oru_r01_patient_result.oru_r01_order_observation.obr
    assert obr.obr_25.value == "P" and obr.obr_3.obr_3_1.value == "S-001"
    fhir = json.loads(paths["fhir"].read_text())
    Bundle.model_validate(fhir)  # raises on a structurally invalid bundle
    hl7, fh = _hl7_results(msg), _fhir_results(fhir)
    assert set(hl7) == set(fh) and len(hl7) >= 7  # six percentages and NRBC, same LOINC codes
    for code, (value, interp, status) in fh.items():
        assert hl7[code][0] == pytest.approx(value)
        assert hl7[code][1] == interp  # H / L / N agree
        assert status == "preliminary" and hl7[code][2] == "P"
    assert fhir["entry"][0]["resource"]["status"] == "preliminary"


def test_final_and_corrected_hl7_and_fhir_after_verification(tmp_path, sample, tiny_model, hl7_settings):
    out = tmp_path / "out"
    paths = process_sample(sample, out, model=tiny_model, settings=hl7_settings)
    prelim = json.loads(paths["json"].read_text())
    done = verify(edit_workbook(paths["xlsx"], tmp_path / "a.xlsx", review_plan(prelim)), out)
    assert done.paths["hl7"].name == "S-001.final.hl7"
    msg = parse(done.paths["hl7"].read_text())
    obr = msg.oru_r01_patient_result.oru_r01_order_observation.obr
    assert obr.obr_25.value == "F" and obr.obr_32.to_er7() == "Dr A. Example"
    assert {o.obx.obx_11.value for o in _observations(msg)} == {"F"}
    final = json.loads(done.paths["json"].read_text())
    hl7 = _hl7_results(msg)
    fhir = json.loads(done.paths["fhir"].read_text())
    Bundle.model_validate(fhir)
    for code, (value, interp, status) in _fhir_results(fhir).items():
        assert hl7[code][:2] == (pytest.approx(value), interp) and status == "final"
    assert hl7["770-8"][0] == pytest.approx(final["percent"]["neutrophil"])
    assert done.audit_entry["hashes"]["final_hl7"]
    cell = final["cells"][0]
    again = verify(edit_workbook(done.paths["xlsx"], tmp_path / "b.xlsx", {cell["file"]: "platelet"}, "Dr B"), out)
    msg2 = parse(again.paths["hl7"].read_text())
    assert msg2.oru_r01_patient_result.oru_r01_order_observation.obr.obr_25.value == "C"
    Bundle.model_validate(json.loads(again.paths["fhir"].read_text()))


def test_hl7_is_off_by_default_and_its_switch_is_checked(tmp_path, sample, tiny_model):
    paths = process_sample(sample, tmp_path / "out", model=tiny_model)
    assert "hl7" not in paths and not list((tmp_path / "out").glob("*.hl7"))
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[outputs]\nhl7 = "yes"\n')
    with pytest.raises(ConfigError, match=r"\[outputs\] hl7 = 'yes'; expected true or false"):
        load_settings(cfg)


def test_delimiters_in_names_are_escaped(tmp_path, tiny_model, hl7_settings):
    from helpers import copy_cells

    folder = tmp_path / "S|2^x&y"
    copy_cells(folder, 6)
    paths = process_sample(folder, tmp_path / "out", model=tiny_model, settings=hl7_settings)
    msg = parse(paths["hl7"].read_text())
    assert msg.oru_r01_patient_result.oru_r01_order_observation.obr.obr_3.obr_3_1.value == "S\\F\\2\\S\\x\\T\\y"
