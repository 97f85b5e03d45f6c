"""The physician's workbook (openpyxl): Summary, Cells, Rejected, About.

Every string that comes from a file name, a folder name or metadata is stored as a text cell: openpyxl
would otherwise store a value starting with '=' as a formula (``=2+5.jpg``), and Excel would run it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.cell.cell import Cell
from openpyxl.chart import BarChart, Reference
from openpyxl.drawing.image import Image as XLImage
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.datavalidation import DataValidation
from openpyxl.worksheet.worksheet import Worksheet

from wbcproc.classes import CLASSES, DISPLAY_NAMES, WBC_CLASSES
from wbcproc.flags import flag_label
from wbcproc.report.rows import ResultRow, differential_rows

FILL_HIGH = PatternFill("solid", start_color="FFC7CE", end_color="FFC7CE")
FILL_LOW = PatternFill("solid", start_color="BDD7EE", end_color="BDD7EE")
FILL_WARN = PatternFill("solid", start_color="FFEB9C", end_color="FFEB9C")
FILL_POSSIBLE = PatternFill("solid", start_color="FCE4D6", end_color="FCE4D6")  # pale: a possible flag
FILL_HEAD = PatternFill("solid", start_color="D9D9D9", end_color="D9D9D9")
FILL_FINAL = PatternFill("solid", start_color="C6EFCE", end_color="C6EFCE")
BOLD = Font(bold=True)
VERIFIED_BY = "Verified by"  # the Summary sheet label whose value cell carries the verifier's name


def _marked_text(r: dict[str, Any]) -> str:
    """The Summary's count of cells to review: the same cells the Cells sheet marks REVIEW."""
    behind = sum(1 for c in r["cells"] if c.get("flag_driver"))
    low = sum(1 for c in r["cells"] if c["review"] and not c.get("flag_driver"))
    n = r["cells_for_review"]
    if r.get("status") == "final":
        return f"{n} (verified)"
    return f"{n} ({behind} behind a flag, {low} with confidence < {r['review_threshold']:.2f})"


def put(ws: Worksheet, row: int, col: int, value: Any, *, bold: bool = False) -> Cell:
    """Write a value; strings always as text, never as a formula."""
    cell = ws.cell(row=row, column=col)
    cell.value = value
    if isinstance(value, str):
        cell.data_type = "s"
    if bold:
        cell.font = BOLD
    return cell


def _header(ws: Worksheet, row: int, names: list[str]) -> None:
    for i, name in enumerate(names, start=1):
        c = put(ws, row, i, name, bold=True)
        c.fill = FILL_HEAD


def _fmt_interval(iv: list[float] | tuple[float, float] | None, unit: str = " %") -> str:
    return "" if iv is None else f"{iv[0]:g}-{iv[1]:g}{unit}"


def _flag_fill(f: dict[str, Any]) -> PatternFill:
    if f.get("grade") == "possible":
        return FILL_POSSIBLE
    return FILL_HIGH if f["direction"] == "high" else FILL_LOW


def _title(ws: Worksheet, r: dict[str, Any]) -> None:
    put(ws, 1, 1, "White-cell differential", bold=True).font = Font(bold=True, size=14)
    if any(f["code"] == "DOMAIN_SHIFT" for f in r["flags"]):  # the most important warning, where nobody misses it
        banner = put(ws, 1, 3, "DOMAIN SHIFT - images unlike the training data: verify every cell before use")
        banner.font = Font(bold=True, color="FFFFFF", size=12)
        banner.fill = PatternFill("solid", start_color="C00000", end_color="C00000")
        ws.merge_cells(start_row=1, start_column=3, end_row=1, end_column=8)


def _identity(ws: Worksheet, r: dict[str, Any], for_adaptation: int = 0) -> int:
    """Sample, status, report id, signature, model...; returns the first free row."""
    ref = r["config"]["reference_intervals"]
    final = r.get("status") == "final"
    status = (
        f"FINAL - verified by {r['verified_by']} at {r['verified_at']}"
        if final
        else "PRELIMINARY - machine pre-classification, not verified"
    )
    rows = [
        ("Sample", r["sample_id"]),
        ("Status", status),
        ("Report ID", r.get("report_id", "")),
        (VERIFIED_BY, r.get("verified_by") or ""),
        ("Processed", r["processed_at"]),
        ("Model", f"{r['model']['name']} {r['model']['version']} (sha256 {r['model']['sha256'][:12]})"),
        ("WBC counted", r["wbc_total"]),
        ("Cells classified", r["cells_classified"]),
        ("Marked for review", _marked_text(r)),
        ("Reference intervals", f"{ref['name']} v{ref['version']}"),
    ]
    if r.get("routing"):  # a routed laboratory model: which of its two models read this slide, and why
        routed = r["routing"]["routed_model"]
        rows.insert(6, ("Model routing", f"{routed['name']} {routed['version']} routed: {r['routing']['why']}"))
    if for_adaptation:  # after "Marked for review": what else the reviewer is asked to look at, and why
        where = next(i for i, (k, _) in enumerate(rows) if k == "Marked for review") + 1
        rows.insert(where, (SUGGESTED_LABEL, f"{for_adaptation} (Cells sheet: '{ADAPT_HEADER}'; About sheet)"))
    if final:
        rows.insert(4, ("Cells reclassified", f"{len(r.get('changes', []))} (Cells sheet: Class vs Model class)"))
    for i, (k, v) in enumerate(rows, start=2):
        put(ws, i, 1, k, bold=True)
        put(ws, i, 2, v)
        if k == VERIFIED_BY and not final:  # where the verifier signs: type the name, save, drop the workbook
            ws.cell(row=i, column=2).fill = FILL_WARN
            put(ws, i, 3, "<- type your name here to sign the verified report")
        if k == "Status":
            ws.cell(row=i, column=2).fill = FILL_FINAL if final else FILL_WARN
    return 2 + len(rows) + 1


def _mark(ws: Worksheet, row: int, f: dict[str, Any], label: str) -> None:
    put(ws, row, 6, label)
    for col in range(1, 7):
        ws.cell(row=row, column=col).fill = _flag_fill(f)


def _differential(ws: Worksheet, r: dict[str, Any], row: int, rows: list[ResultRow]) -> int:
    """Class / count / % / CI / reference / flag, then NRBC and platelets; returns the last row written."""
    withheld = {w["cell"] for w in r.get("withheld_flags") or []}
    _header(ws, row, ["Class", "Count", "%", "95% CI", "Reference", "Flag"])
    for res in (x for x in rows if x.kind == "percent"):
        row += 1
        ci = res.ci95
        put(ws, row, 1, DISPLAY_NAMES[res.cell])
        put(ws, row, 2, res.count)
        put(ws, row, 3, res.value)
        ws.cell(row=row, column=3).number_format = "0.0"
        put(ws, row, 4, "" if ci is None else f"{ci[0]:.1f}-{ci[1]:.1f}")
        put(ws, row, 5, _fmt_interval(res.interval))
        if res.flag:
            _mark(ws, row, res.flag, flag_label(res.flag))
        elif res.cell in withheld:
            put(ws, row, 6, "withheld: verify")
            ws.cell(row=row, column=6).fill = FILL_WARN
    nrbc = next(x for x in rows if x.kind == "nrbc")
    row += 1
    put(ws, row, 1, "NRBC per 100 WBC", bold=True)
    put(ws, row, 2, nrbc.count)
    put(ws, row, 3, nrbc.value)
    put(ws, row, 5, f"<= {nrbc.interval[1]:g}")
    if nrbc.flag:
        _mark(ws, row, nrbc.flag, "PRESENT" + (f" ({nrbc.flag['grade']})" if nrbc.flag.get("grade") else ""))
    row += 1
    put(ws, row, 1, "Platelets seen", bold=True)
    put(ws, row, 2, r["platelets_seen"])
    put(ws, row, 6, "not part of the differential")
    return row


def _absolute(ws: Worksheet, r: dict[str, Any], row: int, rows: list[ResultRow]) -> int:
    row += 2
    put(ws, row, 1, f"Absolute counts (analyser WBC {r['metadata']['wbc_count']:g} x10^9/L)", bold=True)
    row += 1
    _header(ws, row, ["Class", "x10^9/L", "", "", "Reference", "Flag"])
    for res in (x for x in rows if x.kind == "absolute"):
        row += 1
        put(ws, row, 1, DISPLAY_NAMES[res.cell])
        put(ws, row, 2, res.value)
        ws.cell(row=row, column=2).number_format = "0.00"
        put(ws, row, 5, _fmt_interval(res.interval, ""))
        if res.flag:
            _mark(ws, row, res.flag, flag_label(res.flag))
    return row


def _flag_list(ws: Worksheet, r: dict[str, Any], row: int) -> int:
    put(ws, row, 1, "Flags", bold=True)
    if not r["flags"]:
        put(ws, row, 2, "none")
    for f in r["flags"]:
        put(ws, row, 2, f["code"])
        put(ws, row, 3, f["message"])
        if f["cell"] is None:
            ws.cell(row=row, column=2).fill = FILL_WARN
        row += 1
    for w in r.get("withheld_flags") or []:
        put(ws, row, 2, "withheld")
        put(ws, row, 3, w["message"])
        row += 1
    return row


def _chart(ws: Worksheet, top: int, bottom: int) -> None:
    chart = BarChart()
    chart.type = "bar"
    chart.title = "Differential (% of WBC)"
    chart.y_axis.title = "%"
    chart.legend = None
    chart.add_data(Reference(ws, min_col=3, min_row=top, max_row=bottom), titles_from_data=True)
    chart.set_categories(Reference(ws, min_col=1, min_row=top + 1, max_row=bottom))
    chart.height, chart.width = 7.5, 14
    ws.add_chart(chart, "H2")


def _summary(ws: Worksheet, r: dict[str, Any], for_adaptation: int = 0) -> None:
    rows = differential_rows(r)
    _title(ws, r)
    top = _identity(ws, r, for_adaptation)
    row = _differential(ws, r, top, rows)
    if r["absolute"] is not None:
        row = _absolute(ws, r, row, rows)
    row = _flag_list(ws, r, row + 2) + 1
    put(ws, row, 1, r["disclaimer"], bold=True)
    ws.column_dimensions["A"].width = 26
    ws.column_dimensions["B"].width = 22
    for col, width in (("C", 10), ("D", 14), ("E", 14), ("F", 18)):
        ws.column_dimensions[col].width = width
    if r["wbc_total"]:
        _chart(ws, top, top + len(WBC_CLASSES))


SUGGESTED_LABEL = "Suggested for adaptation"  # the Summary row counting them
ADAPT_HEADER = "For adaptation"  # the Cells sheet column of the cells wbc adapt --suggest ranked for review
ADAPT_MARK = "review for adaptation #{rank}"


def adaptation_rank(mark: object) -> int | None:
    """The rank in a 'For adaptation' cell this module wrote (:data:`ADAPT_MARK`); None for anything else."""
    text = str(mark or "")
    head, _, rank = text.rpartition("#")
    return int(rank) if head == ADAPT_MARK.split("#")[0] and rank.isdigit() else None


def _cells(
    ws: Worksheet,
    r: dict[str, Any],
    thumbnails: dict[str, bytes],
    reviewed: dict[str, str] | None = None,
    for_adaptation: dict[str, int] | None = None,
) -> None:
    final = r.get("status") == "final"
    reviewed, for_adaptation = reviewed or {}, for_adaptation or {}
    names = ["File", "Image", "Class", "Confidence", "Runner-up", "Runner-up conf.", "Review", "Reviewed class"]
    if for_adaptation:
        names.append(ADAPT_HEADER)
    if final:  # Class is the verified class; confidence and runner-up stay the model's, and say so
        names = ["File", "Image", "Class", "Model confidence", "Model runner-up", "Runner-up conf.", "Verification",
                 "Reviewed class", "Model class"]  # fmt: skip
    # what decoding did to the image (padding filled, 16-bit or CMYK converted...): the reviewer sees why a
    # thumbnail looks as it does
    _header(ws, 1, [*names, "Image notes"])
    notes_col = len(names) + 1
    dv = DataValidation(type="list", formula1='"' + ",".join(CLASSES) + '"', allow_blank=True)
    dv.error = "Choose one of the canonical classes"
    dv.prompt = "Correct the class here if the model was wrong"
    ws.add_data_validation(dv)
    # the cells behind a raised flag first (e.g. the IG cells of a left shift): verification starts there;
    # the low-confidence cells next, then those suggested for adaptation (by rank), then the rest
    ordered = sorted(
        r["cells"],
        key=lambda c: (not c.get("flag_driver", False), not c["review"], for_adaptation.get(c["file"], 1 << 30)),
    )
    for i, c in enumerate(ordered, start=2):
        _cell_row(ws, i, c, final)
        dv.add(f"H{i}")
        if c["file"] in reviewed:  # the reviewer's entry so far, kept when the workbook is written again
            put(ws, i, 8, reviewed[c["file"]])
        if c["file"] in for_adaptation:
            put(ws, i, 9, ADAPT_MARK.format(rank=for_adaptation[c["file"]])).fill = FILL_LOW
        if c.get("notes"):
            put(ws, i, notes_col, "; ".join(c["notes"]))
        png = thumbnails.get(c["file"])
        if png:
            img = XLImage(io.BytesIO(png))
            img.anchor = f"B{i}"
            ws.add_image(img)
            ws.row_dimensions[i].height = 50
    ws.column_dimensions["A"].width = 30
    ws.column_dimensions["B"].width = 10
    for col in "CDEFGHI":
        ws.column_dimensions[col].width = 15
    ws.column_dimensions[get_column_letter(notes_col)].width = 45
    ws.freeze_panes = "A2"


def _cell_row(ws: Worksheet, i: int, c: dict[str, Any], final: bool) -> None:
    """One cell's model call and review mark (a final report: the verified class beside the model's)."""
    put(ws, i, 1, c["file"])
    put(ws, i, 3, c["class"])
    put(ws, i, 4, c["confidence"]).number_format = "0.000"
    put(ws, i, 5, c["runner_up"])
    put(ws, i, 6, c["runner_up_confidence"]).number_format = "0.000"
    mark = _review_mark(c, final)
    put(ws, i, 7, mark)
    if mark and not final:
        ws.cell(row=i, column=7).fill = FILL_WARN
    if final:  # Class is the verified class; the model's call beside it, changed rows highlighted
        put(ws, i, 9, c["model_class"])
        if c["model_class"] != c["class"]:
            for col in (3, 9):
                ws.cell(row=i, column=col).fill = FILL_POSSIBLE


def _rejected(ws: Worksheet, r: dict[str, Any]) -> None:
    _header(ws, 1, ["File", "Status", "Reason"])
    row = 1
    for item in r["rejected"]:
        row += 1
        put(ws, row, 1, item["file"])
        put(ws, row, 2, "rejected")
        put(ws, row, 3, item["reason"])
    for item in r["ignored"]:
        row += 1
        put(ws, row, 1, item["file"])
        put(ws, row, 2, "ignored")
        put(ws, row, 3, item["reason"])
    ws.column_dimensions["A"].width = 34
    ws.column_dimensions["C"].width = 80


def _about(ws: Worksheet, r: dict[str, Any], for_adaptation: bool = False) -> None:
    ref = r["config"]["reference_intervals"]
    meta = r["metadata"]
    lines: list[tuple[str, Any]] = [
        ("Disclaimer", r["disclaimer"]),
        ("Method", r["method"]),
        ("Confidence intervals", "95 % exact binomial (Clopper-Pearson), equivalent to Rümke's table"),
        (
            "Review mark",
            f"cells with calibrated confidence below {r['review_threshold']:.2f} (counted with the model's "
            "class until verified), and every cell of a class behind a raised or withheld high flag ('REVIEW "
            "(flag)', listed first on the Cells sheet). To sign: give each REVIEW cell a Reviewed class, type "
            "your name in 'Verified by' on the Summary sheet, save, and drop the workbook into the inbox's "
            "reviewed/ folder (or run wbc verify)",
        ),
        (
            "Flags",
            "Percentages, CIs and counts are as the model called the cells. Whether a value is beyond its "
            "reference limit is decided on the differential corrected for the model's measured confusion "
            "(maximum likelihood with the validation confusion matrix; bootstrap over cells and matrix): "
            "a value reported beyond its limit is flagged 'possible' when the corrected value is beyond it too "
            "(probability >= 0.5), 'definite' when the "
            "probability is >= 0.95. A possible flag is a prompt to verify the marked cells.",
        ),
        *(
            [
                (
                    "For adaptation",
                    "cells 'wbc adapt --suggest' chose as the most useful to review for adapting the model to "
                    "this laboratory (#1 most useful; docs/adapting.md). Giving one a Reviewed class counts as "
                    "any correction does when the report is signed; wbc export-reviewed then takes it into the "
                    "laboratory's reviewed cells. Signing does not need them.",
                )
            ]
            if for_adaptation
            else []
        ),
        ("Model", f"{r['model']['name']} {r['model']['version']}"),
        ("Model sha256", r["model"]["sha256"]),
        ("Model input size", r["model"]["input_size"]),
        ("Software", f"wbc {r['software_version']}"),
        ("Config", f"{r['config']['source']} (hash {r['config']['hash']})"),
        ("Reference intervals", f"{ref['name']} v{ref['version']} - {ref['population']}"),
        ("Reference source", ref["source"]),
    ]
    perf = r.get("flag_performance")
    if perf:
        size = min(perf["sizes"], key=lambda k: abs(int(k) - r["wbc_total"]))
        lines.append((f"How often flags are wrong ({size} cells)", perf["source"]))
        for name, v in perf["sizes"][size].items():
            lines.append((f"  {name}", v))
        lines.append(("  where measured", FLAG_RATES_CAVEAT))
    for cls in WBC_CLASSES:
        lines.append((f"  {DISPLAY_NAMES[cls]} %", _fmt_interval(ref["percent"][cls])))
    for cls, iv in ref["absolute"].items():
        lines.append((f"  {DISPLAY_NAMES[cls]} x10^9/L", _fmt_interval(iv, "")))
    lines.append(("  NRBC per 100 WBC", f"<= {ref['nrbc_max_per_100_wbc']:g}"))
    lines.append(("Sample metadata", "sample.json present" if meta["present"] else "none"))
    for k in ("wbc_count", "age_group", "notes"):
        if meta.get(k) is not None:
            lines.append((f"  {k}", meta[k]))
    for k, v in meta["unknown_keys"].items():
        lines.append((f"  {k} (unknown key)", str(v)))
    for e in meta["errors"]:
        lines.append(("  metadata error", e))
    for i, (k, v) in enumerate(lines, start=1):
        put(ws, i, 1, k, bold=not k.startswith("  "))
        c = put(ws, i, 2, v)
        c.alignment = Alignment(wrap_text=True, vertical="top")
    ws.column_dimensions["A"].width = 28
    ws.column_dimensions["B"].width = 110


FLAG_RATES_CAVEAT = (
    "on images from the laboratory the model was trained on (PBC-like: CellaVision, Hospital Clinic Barcelona); "
    "at another laboratory the rates may differ until that laboratory is validated (wbc adapt, docs/adapting.md)"
)


def _fields(ws: Worksheet, r: dict[str, Any], overviews: dict[str, bytes]) -> None:
    _header(ws, 1, ["Field image", "Red-cell diameter (px)", "Cells counted", "Cut by border (not counted)"])
    row = 2
    for f in r["fields"]:
        put(ws, row, 1, f["file"])
        put(ws, row, 2, f["rbc_diameter_px"])
        put(ws, row, 3, f["counted"])
        put(ws, row, 4, f["edge_not_counted"])
        row += 1
        png = overviews.get(f["file"])
        if png:
            img = XLImage(io.BytesIO(png))
            scale = min(1.0, 640 / max(img.width, 1))
            img.width, img.height = int(img.width * scale), int(img.height * scale)
            img.anchor = f"A{row}"
            ws.add_image(img)
            row += int(img.height / 20) + 2
    ws.column_dimensions["A"].width = 34
    for col in "BCD":
        ws.column_dimensions[col].width = 24


def _audit(ws: Worksheet, r: dict[str, Any]) -> None:
    """The verification trail of this sample (entries of ``audit.jsonl``, this verification last)."""
    _header(ws, 1, ["When", "Who", "Event", "Cell", "Model class", "Verified class", "Entry hash"])
    row = 1
    for e in r.get("audit", []):
        changes = e.get("changes") or [{"file": "", "model_class": "", "verified_class": ""}]
        for ch in changes:
            row += 1
            put(ws, row, 1, e.get("at", ""))
            put(ws, row, 2, e.get("verified_by", ""))
            put(ws, row, 3, f"{e.get('event', '')} (final v{e.get('final_version', 1)})")
            put(ws, row, 4, ch["file"])
            put(ws, row, 5, ch["model_class"])
            put(ws, row, 6, ch["verified_class"])
            put(ws, row, 7, e.get("hash", "(this verification: see audit.jsonl)"))
    row += 2
    put(ws, row, 1, "Hashes (sha256)", bold=True)
    for k, v in (r.get("hashes") or {}).items():
        row += 1
        put(ws, row, 1, k)
        put(ws, row, 2, v)
    ws.column_dimensions["A"].width = 26
    ws.column_dimensions["D"].width = 30
    ws.column_dimensions["G"].width = 66


def _print_setup(ws: Worksheet, *, landscape: bool = True) -> None:
    """Physicians print reports: every sheet fits the page width, headers repeat on each page."""
    ws.page_setup.orientation = "landscape" if landscape else "portrait"
    ws.page_setup.paperSize = ws.PAPERSIZE_A4
    ws.sheet_properties.pageSetUpPr.fitToPage = True
    ws.page_setup.fitToWidth = 1
    ws.page_setup.fitToHeight = 0
    ws.print_options.gridLines = False


def workbook_bytes(
    result: dict[str, Any],
    thumbnails: dict[str, bytes],
    overviews: dict[str, bytes] | None = None,
    *,
    reviewed: Mapping[str, str] | None = None,
    for_adaptation: Mapping[str, int] | None = None,
) -> bytes:
    """The report workbook.  A preliminary one may carry a reviewer's entries so far (``reviewed``:
    ``{file: class}`` in 'Reviewed class') and the cells ``wbc adapt --suggest`` ranked for review
    (``for_adaptation``: ``{file: rank}``, a 'For adaptation' column) - both only when a workbook is
    written again to add those marks (:mod:`wbcproc.report.marks`)."""
    final = result.get("status") == "final"
    if final and (reviewed or for_adaptation):
        raise ValueError("a final report's workbook carries no reviewer entries or adaptation marks")
    reviewed, for_adaptation = dict(reviewed or {}), dict(for_adaptation or {})
    wb = Workbook()
    ws = wb.active
    ws.title = "Summary"
    _summary(ws, result, len(for_adaptation))
    _cells(wb.create_sheet("Cells"), result, thumbnails, reviewed, for_adaptation)
    if result.get("fields"):
        _fields(wb.create_sheet("Fields"), result, overviews or {})
    _rejected(wb.create_sheet("Rejected"), result)
    _about(wb.create_sheet("About"), result, bool(for_adaptation))
    if result.get("status") == "final":
        _audit(wb.create_sheet("Audit"), result)
    for sheet in wb.worksheets:
        _print_setup(sheet, landscape=sheet.title != "About")
    wb["Cells"].print_title_rows = "1:1"
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def batch_summary_bytes(rows: list[dict[str, Any]]) -> bytes:
    """One row per sample: WBC total, percentages, NRBC, platelets, flag codes, report file or error."""
    wb = Workbook()
    ws = wb.active
    ws.title = "Batch"
    names = [
        "Sample",
        "Status",
        "WBC",
        *[f"{c} %" for c in WBC_CLASSES],
        "NRBC/100 WBC",
        "Platelets",
        "Flags",
        "Report / error",
    ]
    _header(ws, 1, names)
    for i, row in enumerate(rows, start=2):
        put(ws, i, 1, row["sample_id"])
        put(ws, i, 2, row["status"])
        res = row.get("result")
        if res is not None:
            put(ws, i, 3, res["wbc_total"])
            for j, c in enumerate(WBC_CLASSES):
                put(ws, i, 4 + j, res["percent"][c])
            put(ws, i, 10, res["nrbc_per_100_wbc"])
            put(ws, i, 11, res["platelets_seen"])
            put(ws, i, 12, ", ".join(f["code"] for f in res["flags"]))
            if any(f["cell"] is not None for f in res["flags"]):
                ws.cell(row=i, column=12).fill = FILL_HIGH
        put(ws, i, 13, row.get("report") or row.get("error") or "")
    for col in range(1, len(names) + 1):
        ws.column_dimensions[get_column_letter(col)].width = 14
    ws.column_dimensions["L"].width = 40
    ws.column_dimensions["M"].width = 50
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _review_mark(c: dict[str, Any], final: bool) -> str:
    """The Review column: what a reviewer must look at (preliminary), or what verification did (final)."""
    if final:
        if c.get("model_class", c["class"]) != c["class"]:
            return "changed"
        return "confirmed" if c.get("reviewed") else ""
    return "REVIEW (flag)" if c.get("flag_driver") else "REVIEW" if c["review"] else ""


def read_thumbnails(path: Path) -> dict[str, bytes]:
    """The cell thumbnails of a report workbook this module wrote, by file name (column A of the row each
    image is anchored to), so that a final workbook shows the same cells as its preliminary one.  The caller
    bounds the file first (``wbcproc.bounded``)."""
    from openpyxl import load_workbook

    wb = load_workbook(path, read_only=False)
    if "Cells" not in wb.sheetnames:
        return {}
    ws = wb["Cells"]
    out: dict[str, bytes] = {}
    for img in ws._images:  # openpyxl keeps a loaded sheet's pictures here, each with its anchor cell
        anchor = getattr(img.anchor, "_from", None)
        if anchor is None:
            continue
        name = ws.cell(row=anchor.row + 1, column=1).value
        if isinstance(name, str) and name:
            out[name] = img._data()
    return out
