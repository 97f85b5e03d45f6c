"""HL7 v2.5.1 ``ORU^R01`` for the laboratory information system, built and validated with hl7apy.

Most LIS take results as HL7 v2, not FHIR.  The message carries the same LOINC-coded results as the FHIR
bundle (``wbcproc.report.fhir``): one OBX per percentage, NRBC per 100 WBC and - when the analyser WBC
count is known - absolute count, each with units (UCUM), reference range, abnormal flag (H / L / N) and
result status: **P** for the preliminary report, **F** once verified and signed, **C** for a second
verification (a correction of a final result).  A flag's grade and message, the method and the
disclaimer travel as NTE notes.  The verifier is OBR-32 (principal result interpreter) and OBX-16.

The LIS matches results to its order by the filler order number (OBR-3 / ORC-3 = the sample id); PID-3
carries the sample's ``patient_id`` from sample.json when there is one, else the sample id (type SID).
Written only when ``[outputs] hl7 = true`` in the config.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from wbcproc.report.rows import ResultRow, differential_rows

VERSION = "2.5.1"
PANEL = ("57023-4", "Auto Differential panel - Blood")
_ESCAPE = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\", "\r": " ", "\n": " "}


def _esc(text: Any) -> str:
    """HL7 escape sequences for the delimiters; line breaks become spaces."""
    return "".join(_ESCAPE.get(ch, ch) for ch in str(text))


def _ts(iso: str) -> str:
    """ISO 8601 -> HL7 TS (YYYYMMDDHHMMSS+ZZZZ)."""
    dt = datetime.fromisoformat(iso)
    out = dt.strftime("%Y%m%d%H%M%S")
    return out + (dt.strftime("%z") if dt.tzinfo else "")


def result_status(r: dict[str, Any]) -> str:
    """P preliminary, F final (verified and signed), C a corrected final (second verification)."""
    if r.get("status") != "final":
        return "P"
    return "F" if r.get("final_version", 1) <= 1 else "C"


def _header(m, r: dict[str, Any], sending_facility: str, receiving_application: str) -> None:
    m.msh.msh_3 = "WBC"
    m.msh.msh_4 = _esc(sending_facility)
    m.msh.msh_5 = _esc(receiving_application)
    m.msh.msh_7 = _ts(r.get("verified_at") or r["processed_at"])
    m.msh.msh_9 = "ORU^R01^ORU_R01"
    m.msh.msh_10 = r["report_id"][:20]  # ST(20): unique per message, the report id
    m.msh.msh_11 = "P"
    m.msh.msh_12 = VERSION


def _patient(group, r: dict[str, Any]) -> None:
    pid = group.add_group("ORU_R01_PATIENT").add_segment("PID")
    meta = r.get("metadata") or {}
    patient = meta.get("patient_id") or (meta.get("unknown_keys") or {}).get("patient_id")
    pid.pid_3 = f"{_esc(patient)}^^^WBC^PI" if patient else f"{_esc(r['sample_id'])}^^^WBC^SID"
    pid.pid_5 = "^^^^^^U"  # name not known to wbc (type U: unspecified)


def _order(oo, r: dict[str, Any], status: str) -> None:
    """ORC, OBR (the panel, its status and interpreter) and the report-level notes."""
    signer = r.get("verified_by")
    orc = oo.add_segment("ORC")
    orc.orc_1 = "RE"
    orc.orc_3 = f"{_esc(r['sample_id'])}^WBC"
    obr = oo.add_segment("OBR")
    obr.obr_1 = "1"
    obr.obr_3 = f"{_esc(r['sample_id'])}^WBC"
    obr.obr_4 = f"{PANEL[0]}^{PANEL[1]}^LN"
    obr.obr_7 = _ts(r["processed_at"])
    obr.obr_22 = _ts(r.get("verified_at") or r["processed_at"])
    obr.obr_24 = "HM"
    obr.obr_25 = status
    notes = [r["disclaimer"], r["method"]]
    notes += [f"{f['code']}: {f['message']}" for f in r["flags"] if f["cell"] is None]
    if signer:
        obr.obr_32 = _esc(signer)
        notes.append(f"Verified by {signer} at {r['verified_at']}")
    for i, text in enumerate(notes, start=1):
        nte = oo.add_segment("NTE")
        nte.nte_1 = str(i)
        nte.nte_3 = _esc(text)[:65536]


_HL7_UNITS = {"percent": "%^%^UCUM", "nrbc": "/100{WBCs}^/100 WBC^UCUM", "absolute": "10*9/L^10*9/L^UCUM"}


def _range(row: ResultRow) -> str:
    if row.interval is None:
        return ""
    return f"{row.interval[0]:g}-{row.interval[1]:g}"


def _observation(oo, i: int, res: ResultRow, r: dict[str, Any], status: str) -> None:
    group = oo.add_group("ORU_R01_OBSERVATION")
    obx = group.add_segment("OBX")
    obx.obx_1 = str(i)
    obx.obx_2 = "NM"
    obx.obx_3 = f"{res.loinc[0]}^{_esc(res.loinc[1])}^LN"
    obx.obx_5 = f"{res.value:g}"
    obx.obx_6 = _HL7_UNITS[res.kind]
    if _range(res):
        obx.obx_7 = _range(res)
    obx.obx_8 = res.interpretation
    obx.obx_11 = status
    obx.obx_14 = _ts(r["processed_at"])
    if r.get("verified_by"):
        obx.obx_16 = _esc(r["verified_by"])
    obx.obx_17 = f"^{_esc(r['model']['name'] + ' ' + r['model']['version'])}"
    if res.flag is not None:
        nte = group.add_segment("NTE")
        nte.nte_1 = "1"
        nte.nte_3 = _esc(res.flag["message"])


def oru_r01(r: dict[str, Any], *, sending_facility: str = "LAB", receiving_application: str = "LIS") -> str:
    """The report ``r`` (a wbc JSON report) as an ER7-encoded ORU^R01 message (segments joined by CR)."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import Message

    status = result_status(r)
    m = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    _header(m, r, sending_facility, receiving_application)
    pr = m.add_group("ORU_R01_PATIENT_RESULT")
    _patient(pr, r)
    oo = pr.add_group("ORU_R01_ORDER_OBSERVATION")
    _order(oo, r, status)
    for i, res in enumerate(differential_rows(r) if r["wbc_total"] else [], start=1):
        _observation(oo, i, res, r, status)
    m.validate()
    return m.to_er7()


def parse(er7: str):
    """Parse an ER7 ORU^R01 strictly (hl7apy); raises on a malformed message.  Segments may end in CR (the
    standard) or LF / CRLF (a file opened in text mode)."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    er7 = er7.replace("\r\n", "\r").replace("\n", "\r").rstrip("\r")
    return parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
