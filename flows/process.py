"""The ``process-sample`` Prefect flow: the pipeline of ``wbcproc.pipeline`` as observable tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from wbcproc.classes import DISPLAY_NAMES
from wbcproc.config import Settings, load_settings
from wbcproc.discovery import SampleFolderError, SampleInventory, require_images, scan_sample
from wbcproc.flags import flag_label
from wbcproc.model import load_classifier
from wbcproc.pipeline import Classified, classify_candidates, summarise
from wbcproc.report import write_reports
from wbcproc.report.rows import differential_rows


def _retry_io(task, task_run, state) -> bool:
    """Retry only transient I/O errors (network shares), not a folder that does not exist."""
    try:
        state.result()
    except SampleFolderError:
        return False
    except OSError:
        return True
    except Exception:
        return False
    return False


@task(name="validate", retries=2, retry_delay_seconds=2, retry_condition_fn=_retry_io, cache_policy=NO_CACHE)
def validate(folder: str, settings: Settings) -> SampleInventory:
    inv = require_images(scan_sample(folder, settings))
    get_run_logger().info(
        "%s: %d candidate images, %d rejected, %d ignored",
        inv.sample_id,
        len(inv.candidates),
        len(inv.rejected),
        len(inv.ignored),
    )
    return inv


@task(name="classify", cache_policy=NO_CACHE)
def classify(inventory: SampleInventory, model: str | None, settings: Settings) -> tuple[Classified, Any]:
    clf = load_classifier(model, settings.threads)
    classified = classify_candidates(inventory.candidates, clf, settings, image_type=inventory.metadata.image_type)
    get_run_logger().info(
        "classified %d cells with %s %s in %.2f s of inference",
        len(classified.cells),
        clf.info.name,
        clf.info.version,
        classified.timings["inference"],
    )
    return classified, clf


@task(name="aggregate-and-flag", cache_policy=NO_CACHE)
def aggregate(inventory: SampleInventory, classified: Classified, clf: Any, settings: Settings) -> dict[str, Any]:
    return summarise(inventory, classified, clf, settings)


@task(
    name="write-reports",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_retry_io,
    cache_policy=NO_CACHE,
)
def write(result: dict[str, Any], classified: Classified, out_dir: str, version: int = 1) -> dict[str, str]:
    paths = write_reports(result, classified.thumbnails, out_dir, classified.overviews, version)
    return {k: str(v) for k, v in paths.items()}


def differential_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The UI table: the percentages and NRBC (``differential_rows``), then the platelets seen."""
    rows = []
    for row in differential_rows(result):
        if row.kind == "absolute":
            continue
        nrbc = row.kind == "nrbc"
        rows.append(
            {
                "class": "NRBC /100 WBC" if nrbc else DISPLAY_NAMES[row.cell],
                "count": row.count,
                "percent": row.value,
                "ci95": "" if row.ci95 is None else f"{row.ci95[0]:.1f}-{row.ci95[1]:.1f}",
                "reference": f"{row.interval[1]:g}" if nrbc else f"{row.interval[0]:g}-{row.interval[1]:g}",
                "flag": flag_label(row.flag) if row.flag else "",
            }
        )
    rows.append(
        {
            "class": "Platelets seen",
            "count": result["platelets_seen"],
            "percent": None,
            "ci95": "",
            "reference": "",
            "flag": "",
        }
    )
    return rows


def _run_name() -> str:
    folder = flow_run.parameters.get("folder", "sample")
    return Path(str(folder)).resolve().name or "sample"


@flow(name="process-sample", flow_run_name=_run_name, log_prints=False)
def process_sample_flow(
    folder: str, out_dir: str, model: str | None = None, config: str | None = None, report_version: int = 1
) -> dict[str, Any]:
    """Classify one sample folder and write its Excel, JSON and FHIR reports (``report_version`` > 1: a
    changed re-drop of a sample already reported, written as ``<id>.v<N>.*``)."""
    settings = load_settings(config)
    inventory = validate(folder, settings)
    classified, clf = classify(inventory, model, settings)
    result = aggregate(inventory, classified, clf, settings)
    result["report_version"] = report_version
    paths = write(result, classified, out_dir, report_version)
    key = "differential-" + "".join(ch if ch.isalnum() else "-" for ch in result["sample_id"].lower())[:40]
    create_table_artifact(
        key=key.strip("-") or "differential",
        table=differential_table(result),
        description=f"Differential of {result['sample_id']} ({result['wbc_total']} WBC)",
    )
    flags = "\n".join(f"- **{f['code']}**: {f['message']}" for f in result["flags"]) or "- none"
    if any(f["code"] == "DOMAIN_SHIFT" for f in result["flags"]):
        flags = "> **DOMAIN SHIFT: these images are unlike the model's training data. Verify manually.**\n\n" + flags
    create_markdown_artifact(
        markdown=(
            f"# {result['sample_id']}\n\nModel: {result['model']['name']} {result['model']['version']}\n\n"
            f"## Flags\n{flags}\n\n## Report\n- Excel: `{paths['xlsx']}`\n- JSON: `{paths['json']}`\n"
            f"- FHIR: `{paths['fhir']}`\n\n_{result['disclaimer']}_\n"
        ),
        description="Report location and flags",
    )
    return {"sample_id": result["sample_id"], "paths": paths, "result": result}
