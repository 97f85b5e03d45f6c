"""Report writers: JSON (machine), FHIR R4 and - when enabled - HL7 v2 (interfaces), Excel (physicians).

Each file is written atomically (temp file in the same folder, fsync, rename), so a reader or a crash
never sees a half file under the final name.  The JSON is written last: its presence means the whole
report set for the sample is complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wbcproc.atomic import atomic_write_bytes, atomic_write_json
from wbcproc.discovery import safe_stem
from wbcproc.report.excel import batch_summary_bytes, workbook_bytes
from wbcproc.report.fhir import fhir_bundle

__all__ = ["atomic_write_bytes", "atomic_write_json", "report_paths", "write_batch_summary", "write_reports"]


def report_stem(sample_id: str, version: int = 1) -> str:
    """File stem of a sample's reports; a changed re-drop of the same sample is written as ``.v2``, ``.v3``..."""
    stem = safe_stem(sample_id)
    return stem if version <= 1 else f"{stem}.v{version}"


def read_report_json(path: Path) -> dict[str, Any] | None:
    """A sample's report JSON as ``write_reports`` wrote it; None for a file that cannot be read or is not a
    wbc report (no ``report_id`` or no ``cells`` list) - the callers skip such files, they do not fail on them."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and "report_id" in data and isinstance(data.get("cells"), list)
    return data if ok else None


def report_paths(sample_id: str, out_dir: str | Path, version: int = 1) -> dict[str, Path]:
    out = Path(out_dir)
    stem = report_stem(sample_id, version)
    return {
        "xlsx": out / f"{stem}.xlsx",
        "fhir": out / f"{stem}.fhir.json",
        "hl7": out / f"{stem}.hl7",
        "json": out / f"{stem}.json",
    }


def hl7_bytes(result: dict[str, Any]) -> bytes | None:
    """The ORU^R01 message of a report when its config enables HL7 output (``[outputs] hl7``), else None."""
    outputs = result.get("config", {}).get("outputs") or {}
    if not outputs.get("hl7"):
        return None
    from wbcproc.report.hl7 import oru_r01

    er7 = oru_r01(
        result,
        sending_facility=outputs.get("hl7_sending_facility", "LAB"),
        receiving_application=outputs.get("hl7_receiving_application", "LIS"),
    )
    return er7.encode("utf-8")


def write_reports(
    result: dict[str, Any],
    thumbnails: dict[str, bytes],
    out_dir: str | Path,
    overviews: dict[str, bytes] | None = None,
    version: int = 1,
) -> dict[str, Path]:
    """Write field overviews, ``<id>.xlsx``, ``<id>.fhir.json`` and finally ``<id>.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = report_paths(result["sample_id"], out, version)
    overviews = overviews or {}
    if overviews:
        folder = out / f"{report_stem(result['sample_id'], version)}.fields"
        folder.mkdir(exist_ok=True)
        for f in result.get("fields", []):
            png = overviews.get(f["file"])
            if png:
                target = folder / f"{safe_stem(f['file'])}.png"
                atomic_write_bytes(target, png)
                f["overview"] = str(target.relative_to(out))
    xlsx = workbook_bytes(result, thumbnails, overviews)
    fhir = fhir_bundle(result)
    hl7 = hl7_bytes(result)
    atomic_write_bytes(paths["xlsx"], xlsx)
    atomic_write_json(paths["fhir"], fhir)
    if hl7 is None:
        del paths["hl7"]
    else:
        atomic_write_bytes(paths["hl7"], hl7)
    atomic_write_json(paths["json"], result)
    return paths


def write_batch_summary(rows: list[dict[str, Any]], out_dir: str | Path) -> Path:
    path = Path(out_dir) / "batch-summary.xlsx"
    atomic_write_bytes(path, batch_summary_bytes(rows))
    return path
