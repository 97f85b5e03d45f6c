"""FHIR R4 Bundle: a DiagnosticReport with one LOINC-coded Observation per result.

The resource ids are UUIDv5 derived from the sample id and processing time, so re-rendering the same
result gives the same bundle, and the final report of a sample keeps the ids of its preliminary one (the
same DiagnosticReport, its status moved on).  Status: ``preliminary`` for the machine's pre-classification,
``final`` once a person verified and signed it (``wbc verify``; the verifier is the performer),
``amended`` for a second verification of the same report.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from wbcproc.report.rows import ResultRow, differential_rows

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
INTERP = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
PANEL_CODE = ("57023-4", "Auto Differential panel - Blood")

_INTERP_DISPLAY = {"H": "High", "L": "Low", "N": "Normal"}


def _interp(code: str, flag: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """H/L/N; a *possible* flag (corrected value beyond the limit, not yet certain) says so in the text."""
    concept: dict[str, Any] = {"coding": [{"system": INTERP, "code": code, "display": _INTERP_DISPLAY[code]}]}
    if flag is not None and flag.get("grade"):
        concept["text"] = f"{_INTERP_DISPLAY[code]} ({flag['grade']}" + (
            f", probability {flag['probability']:.2f})" if flag.get("probability") is not None else ")"
        )
    return [concept]


def report_status(r: dict[str, Any]) -> str:
    """FHIR DiagnosticReport status: only a verified, signed report is final (a second verification amends)."""
    if r.get("status") != "final":
        return "preliminary"
    return "final" if r.get("final_version", 1) <= 1 else "amended"


def _qty(value: float, unit: str, code: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


LABORATORY = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]
}
HEMATOLOGY = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "HM", "display": "Hematology"}]
}


def _diagnostic_report(
    r: dict[str, Any], ns: uuid.UUID, status: str, specimen_id: str, observations: list[dict[str, Any]]
) -> dict[str, Any]:
    """The DiagnosticReport: the panel, its results, the flags as conclusion, the model and the disclaimer."""
    return {
        "resourceType": "DiagnosticReport",
        "id": str(uuid.uuid5(ns, "report")),
        "status": status,
        "category": [copy.deepcopy(HEMATOLOGY)],
        "code": {"coding": [{"system": LOINC, "code": PANEL_CODE[0], "display": PANEL_CODE[1]}]},
        "identifier": [{"system": "urn:wbc:sample-id", "value": r["sample_id"]}],
        "effectiveDateTime": r["processed_at"],
        "issued": r.get("verified_at") or r["processed_at"],
        "specimen": [{"reference": f"urn:uuid:{specimen_id}"}],
        "result": [{"reference": f"urn:uuid:{o['id']}", "display": o["code"]["text"]} for o in observations],
        "conclusion": "; ".join(f["message"] for f in r["flags"]) or "No values outside reference intervals.",
        "extension": [
            {
                "url": "urn:wbc:model",
                "valueString": f"{r['model']['name']} {r['model']['version']} sha256:{r['model']['sha256']}",
            }
        ],
        "presentedForm": [{"contentType": "text/plain", "title": "Disclaimer", "data": _b64(r["disclaimer"])}],
    }


def fhir_bundle(r: dict[str, Any]) -> dict[str, Any]:
    ns = uuid.uuid5(uuid.NAMESPACE_URL, f"wbc:{r['sample_id']}:{r['processed_at']}")
    specimen_id = str(uuid.uuid5(ns, "specimen"))
    specimen = {
        "resourceType": "Specimen",
        "id": specimen_id,
        "identifier": [{"system": "urn:wbc:sample-id", "value": r["sample_id"]}],
        "type": {"text": "Peripheral blood smear"},
    }
    method = {"text": f"Automated image classification: {r['model']['name']} {r['model']['version']}"}
    status = report_status(r)
    obs_status = "preliminary" if status == "preliminary" else status
    observations: list[dict[str, Any]] = []

    def observation(
        key: str, code: tuple[str, str], value: dict[str, Any], ref_range, interp: str, note=None, flag=None
    ):
        obs: dict[str, Any] = {
            "resourceType": "Observation",
            "id": str(uuid.uuid5(ns, key)),
            "status": obs_status,
            "category": [copy.deepcopy(LABORATORY)],
            "code": {"coding": [{"system": LOINC, "code": code[0], "display": code[1]}], "text": code[1]},
            "specimen": {"reference": f"urn:uuid:{specimen_id}"},
            "effectiveDateTime": r["processed_at"],
            "valueQuantity": value,
            "interpretation": _interp(interp, flag),
            "method": method,
        }
        if ref_range is not None:
            obs["referenceRange"] = [ref_range]
        if note:
            obs["note"] = [{"text": note}]
        observations.append(obs)

    if r["wbc_total"]:
        for row in differential_rows(r):
            _observe(observation, row, r)
    report = _diagnostic_report(r, ns, status, specimen_id, observations)
    verifier = [] if status == "preliminary" else [_sign(report, observations, r["verified_by"], ns)]
    entries = [report, specimen, *verifier, *observations]
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid5(ns, "bundle")),
        "type": "collection",
        "timestamp": r["processed_at"],
        "entry": [{"fullUrl": f"urn:uuid:{e['id']}", "resource": e} for e in entries],
    }


def _observe(observation, row: ResultRow, r: dict[str, Any]) -> None:
    """One Observation from a result row: value, reference range, H/L/N, and a note for counted results."""
    ref = r["config"]["reference_intervals"]
    unit, f = row.unit, row.flag
    message = f"; {f['message']}" if f else ""
    if row.kind == "percent":
        lo, hi = row.interval
        ci = row.ci95
        rr = {"low": _qty(lo, unit, unit), "high": _qty(hi, unit, unit), "text": f"{ref['name']} v{ref['version']}"}
        note = f"95% CI {ci[0]:.1f}-{ci[1]:.1f} % (Clopper-Pearson); {row.count} of {r['wbc_total']} WBC" + message
        observation(f"pct:{row.cell}", row.loinc, _qty(row.value, unit, unit), rr, row.interpretation, note, f)
    elif row.kind == "nrbc":
        rr = {"high": _qty(row.interval[1], unit, unit)}
        note = f"{row.count} NRBC seen" + message
        observation("nrbc", row.loinc, _qty(row.value, unit, unit), rr, row.interpretation, note, f)
    else:
        rr = (
            None
            if row.interval is None
            else {"low": _qty(row.interval[0], unit, unit), "high": _qty(row.interval[1], unit, unit)}
        )
        observation(f"abs:{row.cell}", row.loinc, _qty(row.value, unit, unit), rr, row.interpretation)


def _sign(report: dict[str, Any], observations: list[dict[str, Any]], name: str, ns: uuid.UUID) -> dict[str, Any]:
    """The verifier as a Practitioner, performer and results interpreter of the report and its results."""
    practitioner = {
        "resourceType": "Practitioner",
        "id": str(uuid.uuid5(ns, f"verifier:{name}")),
        "name": [{"text": name}],
    }
    report["performer"] = [{"reference": f"urn:uuid:{practitioner['id']}", "display": name}]
    report["resultsInterpreter"] = report["performer"]
    for o in observations:
        o["performer"] = report["performer"]
    return practitioner


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode("utf-8")).decode("ascii")


__all__ = ["fhir_bundle"]
