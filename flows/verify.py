"""The ``verify-report`` Prefect flow: a reviewed workbook dropped into ``<inbox>/reviewed/`` becomes the
final report (``wbcproc.verify``), visible in the UI; a rejected workbook fails the run with every reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from wbcproc.verify import verify


def _run_name() -> str:
    """The run is named after the workbook (e.g. "verify S-001.xlsx"), as sample runs after their folder."""
    return "verify " + Path(str(flow_run.parameters.get("workbook", "workbook"))).name


@flow(name="verify-report", flow_run_name=_run_name, log_prints=False)
def verify_report_flow(
    workbook: str, out_dir: str, sample_roots: list[str] | None = None, lab_data: str | None = None
) -> dict[str, Any]:
    """Verify one workbook against the reports in ``out_dir``; copy the verified cells to ``lab_data``
    when the sample's images are found under ``sample_roots`` (the inbox and its archive)."""
    log = get_run_logger()
    roots = [Path(r) for r in sample_roots or []]
    done = verify(workbook, out_dir, sample_roots=roots, lab_data=lab_data)
    r = done.result
    log.info(
        "%s: final report v%d signed by %s, %d change(s): %s",
        r["sample_id"],
        done.version,
        r["verified_by"],
        len(done.changes),
        done.paths["json"].name,
    )
    lines = [
        f"# {r['sample_id']}: final report v{done.version}",
        f"Verified by **{r['verified_by']}** at {r['verified_at']}; audit entry {done.audit_entry['seq']} "
        f"(`{done.audit_entry['hash'][:16]}`).",
        "",
        "| cell | model class | verified class |",
        "|---|---|---|",
        *[f"| {c['file']} | {c['model_class']} | {c['verified_class']} |" for c in done.changes],
    ]
    if done.exported is not None:
        lines += ["", f"Verified cells copied to the laboratory data folder: {done.exported.written}"]
    lines += [f"- {n}" for n in done.notes]
    create_markdown_artifact("\n".join(lines), key="verification", description="Verification")
    return {"final": str(done.paths["json"]), "version": done.version, "changes": len(done.changes)}
