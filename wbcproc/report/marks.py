"""The cells ``wbc adapt --suggest`` chose, marked "review for adaptation" in the preliminary workbooks.

A sample's workbook is written when the sample is processed, before any suggestion exists, so marking is
a second writing of it: the same report (its JSON), the same thumbnails and field overviews, the entries
a reviewer has already typed in 'Reviewed class' kept, and a 'For adaptation' column with each suggested
cell's rank.  A workbook is never written over what a person put in it:

- one that is signed ('Verified by' filled in) or whose sample is verified already is left as it is;
- one whose values differ from what this module would write back anywhere but in 'Reviewed class'
  (a note typed in a cell, a column added, another version's layout) is left as it is, and the
  reason names the first difference.

A new list replaces the old one: a workbook marked for an earlier list that has none of the new list's
cells is written again without its marks (``cleared``), by the same rules.  Each left workbook is listed
with its reason; the suggestions stay in ``suggested.csv`` and in the review app either way.  A workbook
is written atomically (the whole new file or the old one).
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wbcproc.atomic import atomic_write_bytes
from wbcproc.bounded import TooLarge, check_workbook_size
from wbcproc.report import read_report_json
from wbcproc.report.excel import (
    ADAPT_HEADER,
    VERIFIED_BY,
    adaptation_rank,
    read_thumbnails,
    workbook_bytes,
)
from wbcproc.suggested import Suggested, suggested_in

Values = dict[str, dict[tuple[int, int], Any]]  # sheet -> {(row, column): value} of its non-empty cells


@dataclass
class Marked:
    """What :func:`mark_workbooks` did."""

    marked: list[tuple[Path, int]] = field(default_factory=list)  # (workbook, cells marked in it)
    cleared: list[Path] = field(default_factory=list)  # an earlier list's marks taken out: none of its cells now
    left: list[tuple[Path, str]] = field(default_factory=list)  # (workbook, why it was left as it is)
    cells: int = 0  # suggested cells found in the folder's preliminary reports


def mark_workbooks(reports: Path, suggested: Suggested) -> Marked:
    """Mark the suggested cells in the preliminary workbooks of the report folder ``reports``."""
    out = Marked()
    for path in sorted(Path(reports).glob("*.json")):
        if path.name.endswith(".fhir.json") or ".final" in path.name:
            continue
        report = read_report_json(path)
        if report is None or report.get("status") != "preliminary":
            continue
        ranks = suggested_in(report, suggested)
        xlsx = path.with_suffix(".xlsx")
        if not ranks and not _has_marks(xlsx):
            continue
        out.cells += len(ranks)
        why = _mark(path, report, xlsx, ranks)
        if why:
            out.left.append((xlsx, why))
        elif ranks:
            out.marked.append((xlsx, len(ranks)))
        else:
            out.cleared.append(xlsx)
    return out


def _has_marks(xlsx: Path) -> bool:
    """Whether a workbook has a 'For adaptation' column (written only where a cell is marked): its Cells
    sheet's first row alone is read, so a folder of thousands of unmarked workbooks is passed over quickly."""
    from openpyxl import load_workbook

    try:
        check_workbook_size(xlsx)
        wb = load_workbook(xlsx, read_only=True)
    except (OSError, TooLarge, ValueError, KeyError, zipfile.BadZipFile):
        return False  # not a workbook this module wrote: nothing of ours to take out
    try:
        ws = wb["Cells"] if "Cells" in wb.sheetnames else None
        header = next(ws.iter_rows(max_row=1, values_only=True), ()) if ws is not None else ()
        return ADAPT_HEADER in header
    finally:
        wb.close()


def _mark(path: Path, report: dict[str, Any], xlsx: Path, ranks: dict[str, int]) -> str | None:
    """Write ``xlsx`` again with ``ranks`` marked; the reason it was left as it is, or None."""
    stem = path.name[: -len(".json")]
    finals = sorted(p.name for p in path.parent.glob(f"{stem}.final*.json") if not p.name.endswith(".fhir.json"))
    if finals:
        return f"the sample is verified already ({finals[-1]})"
    if not xlsx.is_file():
        return "no workbook beside the JSON report"
    try:
        check_workbook_size(xlsx)
        found = _values(xlsx.read_bytes())
    except (OSError, TooLarge, ValueError, KeyError) as exc:
        return f"not readable as a wbc report workbook: {exc}"
    entries = _entries(found)
    if isinstance(entries, str):
        return entries
    reviewed, previous, signed = entries
    if signed:
        return f"signed in the workbook ({VERIFIED_BY!r}: {signed!r}): a signed workbook stays as it was signed"
    expected = _values(workbook_bytes(report, {}, {}, reviewed=reviewed, for_adaptation=previous))
    diff = _first_difference(expected, found)
    if diff:
        return f"it holds more than this version writes and 'Reviewed class' ({diff}); nothing in it is overwritten"
    thumbnails = read_thumbnails(xlsx)
    overviews = _overviews(path.parent, report)
    atomic_write_bytes(xlsx, workbook_bytes(report, thumbnails, overviews, reviewed=reviewed, for_adaptation=ranks))
    return None


def _values(blob: bytes) -> Values:
    from openpyxl import load_workbook

    wb = load_workbook(io.BytesIO(blob), read_only=True)
    try:
        return {
            ws.title: {
                (r, c): v
                for r, row in enumerate(ws.iter_rows(values_only=True), start=1)
                for c, v in enumerate(row, start=1)
                if v not in (None, "")
            }
            for ws in wb.worksheets
        }
    finally:
        wb.close()


def _entries(values: Values) -> tuple[dict[str, str], dict[str, int], str] | str:
    """A workbook's 'Reviewed class' entries (as typed), its adaptation marks and its signature; or why it
    is not a preliminary wbc workbook."""
    cells, summary = values.get("Cells"), values.get("Summary")
    if cells is None or summary is None:
        return "no Cells or Summary sheet: not a wbc report workbook"
    header = {v: c for (r, c), v in cells.items() if r == 1}
    if "File" not in header or "Reviewed class" not in header:
        return "its Cells sheet lacks the File / Reviewed class columns"
    i_file, i_rev, i_adapt = header["File"], header["Reviewed class"], header.get(ADAPT_HEADER)
    rows = {r for r, _ in cells if r > 1}
    reviewed, previous = {}, {}
    for r in rows:
        name = cells.get((r, i_file))
        if not isinstance(name, str):
            continue
        if (r, i_rev) in cells:
            reviewed[name] = cells[(r, i_rev)]
        rank = adaptation_rank(cells.get((r, i_adapt))) if i_adapt else None
        if rank is not None:
            previous[name] = rank
    signed = next((str(summary.get((r, 2), "")) for (r, c), v in summary.items() if c == 1 and v == VERIFIED_BY), "")
    return reviewed, previous, signed


def _same(a: Any, b: Any) -> bool:
    """Values equal as a spreadsheet keeps them (a number saved by Excel may differ in its last digits)."""
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _first_difference(expected: Values, found: Values) -> str | None:
    """Where ``found`` first differs from ``expected`` (written with ``found``'s own 'Reviewed class' entries
    and adaptation marks, so only anything else a person changed shows)."""
    if set(expected) != set(found):
        return f"sheets {sorted(found)}, expected {sorted(expected)}"
    for sheet, want in expected.items():
        got = found[sheet]
        for key in sorted(set(want) | set(got)):
            if not _same(want.get(key), got.get(key)):
                col = _column(key[1])
                return f"sheet {sheet}, cell {col}{key[0]}: {got.get(key)!r}, written {want.get(key)!r}"
    return None


def _column(i: int) -> str:
    from openpyxl.utils import get_column_letter

    return get_column_letter(i)


def _overviews(reports: Path, report: dict[str, Any]) -> dict[str, bytes]:
    """The field overview images the report's workbook shows (the PNG files written beside the reports)."""
    out = {}
    for f in report.get("fields") or []:
        rel = f.get("overview")
        if not rel:
            continue
        p = (reports / rel).resolve()
        if p.is_file() and p.is_relative_to(reports.resolve()):
            out[f["file"]] = p.read_bytes()
    return out
