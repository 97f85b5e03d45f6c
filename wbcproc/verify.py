"""Verification: the physician's corrections become the final report, signed, with an audit trail.

Every digital-morphology system works this way: the machine pre-classifies (the *preliminary* report), a
qualified person confirms or reclassifies cells, the differential is recalculated from the verified
classes, the person signs, and only then is the result final.  Here the person edits the *Reviewed class*
column of the report workbook (Excel or LibreOffice), types a name in the Summary sheet's *Verified by*
cell (or passes ``--by``), and hands the saved workbook back (``wbc verify`` or ``<inbox>/reviewed/``).

What this module guarantees:

- **Nothing changes unless everything checks.**  The workbook must be a wbc report workbook of the same
  sample and report id as a report in the output folder, made by the same model; no cell row added,
  removed or renamed; the model's own *Class* column unedited; every reviewed value a canonical class;
  every cell the preliminary report marked for review (low confidence, or behind a flag) given a reviewed
  class - the final report has no unverified uncertain cell; and a name to sign with.  Otherwise
  :class:`VerificationRejected` lists every problem and no file is written.
- **The preliminary report is never overwritten.**  The final set is ``<stem>.final.xlsx/.fhir.json/
  .json``; a second verification of the same report writes ``<stem>.final.v2.*`` and both stay in the trail.
- **The differential is recomputed** from the verified classes (cells without a reviewed class keep the
  model's class) with the preliminary report's reference intervals and analyser WBC count; flags are
  decided on the verified counts (a person, not the model, now stands behind each class, so the
  correction for the model's confusion no longer applies).
- **Audit**: one entry per verification in ``<out>/audit.jsonl`` (``wbcproc.audit``, hash-chained): who,
  when, each changed cell (model class -> verified class) and the sha256 of the preliminary JSON, the
  workbook read and the final JSON/workbook/FHIR.  The final workbook carries the trail on an *Audit* sheet.
- **The verified cells feed adaptation**: the cells with a reviewed class are copied into the
  laboratory's data folder in ``wbc export-reviewed``'s format, where the retrain flow finds them.

Write order: final workbook and FHIR (each atomic), then the audit entry, then the final JSON last - its
presence means the final set is complete (as for preliminary reports).
"""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wbcproc.aggregate import differential
from wbcproc.atomic import atomic_write_bytes
from wbcproc.audit import LOG_NAME, append, read_entries
from wbcproc.bounded import TooLarge, check_workbook_size
from wbcproc.classes import CLASSES
from wbcproc.config import ReferenceIntervals
from wbcproc.flags import decide_flags, wbc_count_flags
from wbcproc.method import method_text
from wbcproc.report import hl7_bytes
from wbcproc.report.excel import VERIFIED_BY, workbook_bytes
from wbcproc.report.fhir import fhir_bundle
from wbcproc.reviewed import Exported, export_cells
from wbcproc.sidecar import sha256_file

_RECOMPUTED_SAMPLE_FLAGS = {"NO_WBC", "LOW_WBC_COUNT", "REVIEW_SHARE_HIGH"}


class VerificationRejected(ValueError):
    """The workbook cannot be verified; nothing was written.  ``problems`` lists every reason."""

    def __init__(self, workbook: str | Path, problems: list[str]) -> None:
        self.workbook = str(workbook)
        self.problems = problems
        head = f"{self.workbook}: not verified, nothing changed:"
        if len(problems) == 1:  # one reason: one line (a reviewed/rejected/*.reason.txt, a log line)
            super().__init__(f"{head} {problems[0]}")
        else:
            super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Row:
    number: int  # the row in the Cells sheet (for messages a person can find)
    file: str
    model_class: str
    reviewed: str | None  # as typed (stripped); None when blank


@dataclass(frozen=True)
class ReviewedWorkbook:
    path: Path
    sha256: str
    sample_id: str
    report_id: str
    model_sha256: str
    verified_by: str
    verified_by_cell: str  # e.g. "B5": where the name goes
    rows: list[Row]


@dataclass
class Verified:
    paths: dict[str, Path]
    result: dict[str, Any]
    version: int
    changes: list[dict[str, str]]
    audit_entry: dict[str, Any]
    exported: Exported | None = None
    notes: list[str] = field(default_factory=list)


def _labelled(ws, label: str) -> tuple[Any, str] | None:
    for row in ws.iter_rows(min_col=1, max_col=2):
        if row[0].value is not None and str(row[0].value).strip() == label:
            return row[1].value, row[1].coordinate
    return None


def _open_workbook(path: Path):
    """The workbook, loaded only once its size, parts and sheets are known to be within bounds."""
    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        check_workbook_size(path)
    except TooLarge as exc:
        raise VerificationRejected(path, [str(exc)]) from None
    except OSError as exc:
        raise VerificationRejected(path, [f"the workbook cannot be read: {exc}"]) from None
    try:
        return load_workbook(path, read_only=False, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise VerificationRejected(path, [f"not an Excel workbook (.xlsx) that can be read: {exc}"]) from None


def read_workbook(path: str | Path) -> ReviewedWorkbook:
    """The identity, signature and cell rows of an edited report workbook (raises VerificationRejected
    when it is not a wbc report workbook)."""
    path = Path(path)
    wb = _open_workbook(path)
    missing = [s for s in ("Summary", "Cells", "About") if s not in wb.sheetnames]
    if missing:
        raise VerificationRejected(path, [f"not a wbc report workbook: sheet(s) {missing} missing"])
    summary, about = wb["Summary"], wb["About"]
    problems = []
    ident = {}
    for label, ws in (("Sample", summary), ("Report ID", summary), (VERIFIED_BY, summary), ("Model sha256", about)):
        got = _labelled(ws, label)
        if got is None:
            problems.append(f"the {ws.title} sheet has no {label!r} row: not a report of this wbc version")
        ident[label] = got
    if problems:
        raise VerificationRejected(path, problems)
    cells = wb["Cells"]
    it = cells.iter_rows(values_only=True)
    header = [str(h or "").strip() for h in next(it, ())]
    need = ("File", "Class", "Reviewed class")
    if any(h not in header for h in need):
        raise VerificationRejected(path, [f"the Cells sheet lacks column(s) {[h for h in need if h not in header]}"])
    i_file, i_cls, i_rev = (header.index(h) for h in need)
    rows = []
    for n, values in enumerate(it, start=2):
        values = tuple(values) + (None,) * (len(header) - len(values))
        if all(v in (None, "") for v in values):
            continue
        rev = values[i_rev]
        rev = None if rev is None or str(rev).strip() == "" else str(rev).strip()
        rows.append(Row(n, str(values[i_file] or ""), str(values[i_cls] or ""), rev))
    name = ident[VERIFIED_BY][0]
    wb.close()
    return ReviewedWorkbook(
        path=path,
        sha256=sha256_file(path),
        sample_id=str(ident["Sample"][0] or ""),
        report_id=str(ident["Report ID"][0] or ""),
        model_sha256=str(ident["Model sha256"][0] or ""),
        verified_by="" if name is None else str(name).strip(),
        verified_by_cell=ident[VERIFIED_BY][1],
        rows=rows,
    )


def find_report(out_dir: str | Path, report_id: str, sample_id: str) -> Path | None:
    """The JSON report (preliminary or final) with this report id in ``out_dir``."""
    from wbcproc.discovery import safe_stem

    out = Path(out_dir)
    named = sorted(out.glob(f"{safe_stem(sample_id)}*.json"))  # the sample's own reports first
    first = set(named)
    for p in [*named, *(q for q in sorted(out.glob("*.json")) if q not in first)]:
        if p.name.endswith(".fhir.json"):
            continue
        try:
            if json.loads(p.read_text(encoding="utf-8")).get("report_id") == report_id:
                return p
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
    return None


def _final_paths(prelim_json: Path) -> tuple[int, dict[str, Path]]:
    stem = prelim_json.name[: -len(".json")]

    def final_stem(version: int) -> str:  # <stem>.final, <stem>.final.v2, ...
        return f"{stem}.final" if version == 1 else f"{stem}.final.v{version}"

    version = 1
    while (prelim_json.parent / f"{final_stem(version)}.json").exists():
        version += 1
    names = {"xlsx": ".xlsx", "fhir": ".fhir.json", "hl7": ".hl7", "json": ".json"}
    return version, {k: prelim_json.parent / f"{final_stem(version)}{ext}" for k, ext in names.items()}


def _identity_problems(wbk: ReviewedWorkbook, base: dict[str, Any]) -> list[str]:
    problems = []
    if wbk.sample_id != base["sample_id"]:
        problems.append(f"the workbook is for sample {wbk.sample_id!r}, the report for {base['sample_id']!r}")
    if wbk.report_id != base.get("report_id"):
        problems.append(
            f"the workbook belongs to report {wbk.report_id!r}, not {base.get('report_id')!r} (another report version)"
        )
    if wbk.model_sha256 != base["model"]["sha256"]:
        problems.append(
            f"model sha256 {wbk.model_sha256[:12]}... in the workbook differs from the report's "
            f"{base['model']['sha256'][:12]}..."
        )
    return problems


def _row_problems(r: Row, cell: dict[str, Any] | None, seen: set[str]) -> list[str]:
    if cell is None:
        return [f"Cells row {r.number}: cell {r.file!r} is not in the report (rows must not be added or renamed)"]
    problems = []
    if r.file in seen:
        problems.append(f"Cells row {r.number}: cell {r.file!r} appears twice")
    if r.model_class != cell["class"]:
        problems.append(
            f"Cells row {r.number}: the Class of {r.file!r} was changed from {cell['class']!r} to "
            f"{r.model_class!r}; corrections go in 'Reviewed class'"
        )
    if r.reviewed is not None and r.reviewed.lower() not in CLASSES:
        problems.append(
            f"Cells row {r.number}: {r.reviewed!r} for {r.file!r} is not a canonical class (one of {', '.join(CLASSES)})"
        )
    return problems


def check_workbook(wbk: ReviewedWorkbook, base: dict[str, Any], by: str | None) -> list[str]:
    """Every reason the workbook cannot become a final report of ``base`` (empty: it can)."""
    problems = _identity_problems(wbk, base)
    cells = {c["file"]: c for c in base["cells"]}
    seen: set[str] = set()
    for r in wbk.rows:
        problems += _row_problems(r, cells.get(r.file), seen)
        if r.file in cells:
            seen.add(r.file)
    gone = [f for f in cells if f not in seen]
    if gone:
        problems.append(f"{len(gone)} cell row(s) missing from the workbook: {', '.join(gone[:10])}")
    reviewed = {r.file for r in wbk.rows if r.reviewed is not None}
    marked = [f for f, c in cells.items() if (c.get("review") or c.get("flag_driver")) and f in seen]
    open_cells = [f for f in marked if f not in reviewed]
    if base.get("status") != "final" and open_cells:
        problems.append(
            f"{len(open_cells)} cell(s) marked REVIEW have no reviewed class (type the class, or the same class to "
            f"confirm it): {', '.join(open_cells[:10])}" + (" ..." if len(open_cells) > 10 else "")
        )
    if not (by or wbk.verified_by):
        problems.append(
            f"nothing is signed without a name: type the verifier's name in the Summary sheet's '{VERIFIED_BY}' "
            f"cell ({wbk.verified_by_cell}) or pass --by NAME"
        )
    return problems


def final_result(base: dict[str, Any], verified: dict[str, str], *, by: str, at: str, version: int) -> dict[str, Any]:
    """The final report's content: ``base`` (the report the workbook came from) with every cell's class
    replaced by ``verified`` (``{file: class}``, the reviewed cells) and everything derived recomputed."""
    r = copy.deepcopy(base)
    prelim_id = base.get("preliminary", {}).get("report_id", base.get("report_id"))
    cells = []
    for c in r["cells"]:
        model_class = c.get("model_class", c["class"])
        cls = verified.get(c["file"], c["class"])
        cells.append(
            {
                **c,
                "class": cls,
                "model_class": model_class,
                "reviewed": c["file"] in verified or c.get("reviewed", False),
            }
        )
    ref = ReferenceIntervals.from_dict(r["config"]["reference_intervals"])
    wbc_count = (r.get("metadata") or {}).get("wbc_count")
    diff = differential((c["class"] for c in cells), (False for _ in cells), wbc_count)
    carried = [f for f in base["flags"] if f["cell"] is None and f["code"] not in _RECOMPUTED_SAMPLE_FLAGS]
    sample = carried + wbc_count_flags(diff.wbc_total, r["config"].get("min_wbc", 100))
    decision = decide_flags(diff, ref, sample=sample)
    drivers = decision.drivers
    r.update(
        {
            "status": "final",
            "report_id": uuid.uuid4().hex,
            "final_version": version,
            "verified_by": by,
            "verified_at": at,
            "preliminary": {"report_id": prelim_id},
            **diff.report_fields(),
            "cells_for_review": 0,
            "flags": decision.flags,
            "corrected": None,
            "withheld_flags": decision.withheld,
            "flag_drivers": sorted(drivers),
            "cells": [c | {"flag_driver": c["class"] in drivers} for c in cells],
            "method": method_text(base["model"], base.get("routing"), final=True),
        }
    )
    r["changes"] = [
        {"file": c["file"], "model_class": c["model_class"], "verified_class": c["class"]}
        for c in r["cells"]
        if c["class"] != c["model_class"]
    ]
    return r


def verify(
    workbook: str | Path,
    out_dir: str | Path,
    *,
    by: str | None = None,
    sample_dir: str | Path | None = None,
    sample_roots: list[Path] = (),
    lab_data: str | Path | None = None,
    now: datetime | None = None,
) -> Verified:
    """Verify one edited workbook against the reports in ``out_dir`` and write the final report set.

    ``sample_dir``: the sample's images (for copying the verified cells into ``lab_data``), or found under
    ``sample_roots`` (``find_sample_dir``: the inbox and its archive); without it, or without ``lab_data``,
    no cells are exported and the result says so."""
    out = Path(out_dir)
    wbk = read_workbook(workbook)
    base_path = find_report(out, wbk.report_id, wbk.sample_id) if wbk.report_id else None
    if base_path is None:
        raise VerificationRejected(
            workbook,
            [
                f"no report with id {wbk.report_id!r} for sample {wbk.sample_id!r} in {str(out)!r} (the workbook "
                "belongs to another report, or the report folder is another one)"
            ],
        )
    base = json.loads(base_path.read_text(encoding="utf-8"))
    problems = check_workbook(wbk, base, by)
    if problems:
        raise VerificationRejected(workbook, problems)
    verified = {r.file: r.reviewed.lower() for r in wbk.rows if r.reviewed is not None}
    return sign(
        out, base_path, base, verified, signer=(by or wbk.verified_by).strip(), channel="workbook",
        read={"workbook_read": wbk.sha256}, sample_dir=sample_dir, sample_roots=sample_roots, lab_data=lab_data,
        now=now,
    )  # fmt: skip


def check_corrections(base: dict[str, Any], verified: dict[str, str], by: str | None) -> list[str]:
    """Every reason ``verified`` (``{file: class}``, from the review app) cannot sign ``base`` (empty: it can):
    the workbook's rules without the workbook - known cells, canonical classes, every marked cell given a class,
    a name to sign with."""
    cells = {c["file"]: c for c in base["cells"]}
    problems = [f"cell {f!r} is not in the report" for f in verified if f not in cells]
    problems += [
        f"{v!r} for {f!r} is not a canonical class (one of {', '.join(CLASSES)})"
        for f, v in verified.items()
        if v not in CLASSES
    ]
    open_cells = [f for f, c in cells.items() if (c.get("review") or c.get("flag_driver")) and f not in verified]
    if base.get("status") != "final" and open_cells:
        problems.append(
            f"{len(open_cells)} cell(s) marked REVIEW have no reviewed class (reclassify or confirm each): "
            + ", ".join(open_cells[:10])
            + (" ..." if len(open_cells) > 10 else "")
        )
    if not (by or "").strip():
        problems.append("nothing is signed without a name")
    return problems


def sign(
    out_dir: str | Path,
    base_path: Path,
    base: dict[str, Any],
    verified: dict[str, str],
    *,
    signer: str,
    channel: str,
    read: dict[str, str],
    account: str | None = None,
    sample_dir: str | Path | None = None,
    sample_roots: list[Path] = (),
    lab_data: str | Path | None = None,
    now: datetime | None = None,
) -> Verified:
    """The final report set of ``base`` (read from ``base_path``) with the ``verified`` classes, signed by
    ``signer``: the one path every verification takes, from a workbook (``channel="workbook"``) or the review
    app (``"browser"``, with the signing ``account``).  ``read``: hashes of what the corrections came from."""
    out = Path(out_dir)
    prelim_path = base_path
    if base.get("status") == "final":
        prelim_path = out / base["preliminary"]["file"]
    at = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    version, paths = _final_paths(prelim_path)
    result = final_result(base, verified, by=signer, at=at, version=version)
    result["preliminary"] = {"report_id": result["preliminary"]["report_id"], "file": prelim_path.name}
    hashes = {"preliminary_json": sha256_file(prelim_path), **read}
    if base_path != prelim_path:
        hashes["previous_final_json"] = sha256_file(base_path)
    log = out / LOG_NAME
    trail = [e for e in read_entries(log) if e.get("preliminary_report_id") == result["preliminary"]["report_id"]]
    event: dict[str, Any] = {
        "event": "verify",
        "sample_id": result["sample_id"],
        "preliminary_report_id": result["preliminary"]["report_id"],
        "final_report_id": result["report_id"],
        "final_version": version,
        "verified_by": signer,
        "verified_at": at,
        "channel": channel,
        **({"account": account} if account else {}),
        "model_sha256": result["model"]["sha256"],
        "changes": result["changes"],
        "reviewed_cells": len(verified),
    }
    result["hashes"] = dict(hashes)
    result["audit"] = [*trail, {**event, "at": at}]
    thumbnails, why_none = _thumbnails(prelim_path.with_name(prelim_path.name[: -len(".json")] + ".xlsx"))
    entry = _write_final(result, paths, log, event, hashes, now, thumbnails)
    done = Verified(paths=paths, result=result, version=version, changes=result["changes"], audit_entry=entry)
    if why_none:
        done.notes.append(f"the final workbook has no cell thumbnails: {why_none}")
    if lab_data is not None and verified and sample_dir is not None:
        done.exported = export_cells(result, verified, sample_dir, lab_data)
    elif lab_data is not None and verified and sample_roots:
        done.exported = _export_found(result, verified, list(sample_roots), lab_data)
    if verified and done.exported is None:
        done.notes.append(
            "the verified cells were not copied to the laboratory data folder (sample folder or data folder unknown)"
        )
    return done


def _export_found(
    result: dict[str, Any], verified: dict[str, str], roots: list[Path], lab_data: str | Path
) -> Exported | None:
    """Export the verified cells from the sample folder found under ``roots``; ``None`` if there is none.

    The watcher moves a finished folder from the inbox to ``archive/`` while a reviewer may already be signing
    its report, so a folder can vanish between being found and being copied: the cells it took with it are
    looked for once more, where the folder went."""
    done: Exported | None = None
    todo = dict(verified)
    for _ in range(2):
        sample_dir = find_sample_dir(result, roots)
        if sample_dir is None:
            continue
        got = export_cells(result, todo, sample_dir, lab_data)
        if done is None:
            done = got
        else:
            for label, n in got.written.items():
                done.written[label] = done.written.get(label, 0) + n
            done.skipped = got.skipped
        if sample_dir.is_dir():
            break
        todo = {name: todo[name] for name, _ in done.skipped if name in todo}
        if not todo:
            break
    return done


def _write_final(
    result: dict[str, Any],
    paths: dict[str, Path],
    log: Path,
    event: dict[str, Any],
    hashes: dict[str, str],
    now: datetime | None,
    thumbnails: dict[str, bytes],
) -> dict[str, Any]:
    """Workbook, FHIR and HL7 (each atomic), then the audit entry with their hashes, then the JSON last;
    the files already written are removed if the audit entry cannot be.  Returns the audit entry."""
    final_json = (json.dumps(result, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    fhir = (json.dumps(fhir_bundle(result), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    blobs = {"xlsx": workbook_bytes(result, thumbnails, {}), "fhir": fhir}
    hl7 = hl7_bytes(result)
    if hl7 is None:
        del paths["hl7"]
    else:
        blobs["hl7"] = hl7
    hashes |= {f"final_{k}": hashlib.sha256(v).hexdigest() for k, v in (*blobs.items(), ("json", final_json))}
    for k, blob in blobs.items():
        atomic_write_bytes(paths[k], blob)
    try:
        entry = append(log, {**event, "files": {k: p.name for k, p in paths.items()}, "hashes": hashes}, now=now)
    except BaseException:
        for k in blobs:
            paths[k].unlink(missing_ok=True)
        raise
    atomic_write_bytes(paths["json"], final_json)
    return entry


def _thumbnails(prelim_xlsx: Path) -> tuple[dict[str, bytes], str | None]:
    """The preliminary workbook's cell thumbnails for the final one, or none and why (the final report is
    still written: the thumbnails are a convenience, the images are in the sample folder)."""
    from wbcproc.report.excel import read_thumbnails

    try:
        check_workbook_size(prelim_xlsx)
        found = read_thumbnails(prelim_xlsx)
    except FileNotFoundError:
        return {}, f"{prelim_xlsx.name} is not in the report folder"
    except (TooLarge, OSError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        return {}, f"{prelim_xlsx.name} cannot be read ({exc})"
    return found, None if found else f"{prelim_xlsx.name} holds none"


def _holds(folder: Path, report: dict[str, Any]) -> bool:
    names = {c.get("field") or c["file"] for c in report["cells"]}
    return bool(names) and all((folder / n).is_file() for n in names)


def _mtime(d: Path) -> float:
    """A folder's modification time; a folder moved (archived) since it was listed comes last."""
    try:
        return d.stat().st_mtime
    except OSError:
        return float("-inf")


def find_sample_dir(report: dict[str, Any], roots: list[Path], *, limit: int = 500) -> Path | None:
    """The folder holding a report's images: under ``roots`` (e.g. the inbox and its ``archive/``), first
    the folders named after the sample (``S-1``, ``S-1.2``... - a re-dropped sample is archived beside its
    first drop), then the most recent others.  A folder qualifies only if every cell's image (or field
    image) is in it; among those, the one last written before the report was made (a folder is filled,
    then processed), so a changed re-drop under the same file names is not mistaken for the first."""
    from wbcproc.discovery import safe_stem

    sid = safe_stem(str(report["sample_id"]))
    named: list[Path] = []
    rest: list[Path] = []
    for root in roots:
        if not root.is_dir():
            continue
        for d in root.iterdir():
            if d.is_dir():
                (named if d.name == sid or d.name.startswith(sid + ".") else rest).append(d)
    try:
        made = datetime.fromisoformat(report["processed_at"]).timestamp()
    except (KeyError, ValueError):
        made = float("inf")

    def order(d: Path) -> tuple[bool, float]:  # written before the report first, the closest first
        m = _mtime(d)
        return (m > made + 1.0, abs(made - m))

    rest.sort(key=_mtime, reverse=True)
    for d in [*sorted(named, key=order), *sorted(rest[:limit], key=order)]:
        if _holds(d, report):
            return d
    return None
