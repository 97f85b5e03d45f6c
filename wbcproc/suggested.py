"""The cells ``wbc adapt --suggest`` chose for review, as the report workbooks and the review app mark them.

``wbc adapt --suggest N`` writes ``suggested.csv`` (rank, source file, the model's call...).  A source file
lies in a sample folder named after its sample (``S-1``, or ``S-1.2`` for a re-dropped one, as the
service's archive names them), so a report's suggested cells are its cells of that file name in a folder
of that name.  Both readers of the list - the workbook marks (:mod:`wbcproc.report.marks`) and the review
app - find them here, so both mark the same cells.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from wbcproc.bounded import TooLarge
from wbcproc.discovery import safe_stem

SUGGESTED_MAX_BYTES = 5 * 1024 * 1024  # a suggestions list of tens of thousands of cells

Suggested = dict[str, dict[str, int]]  # sample folder name -> {file name: rank in the list, 1 first}


def read_suggested(path: Path) -> Suggested:
    """``suggested.csv`` as ranks of file names by sample folder name.  Refuses a file over
    :data:`SUGGESTED_MAX_BYTES` or without the ``rank`` and ``source`` columns ``wbc adapt --suggest`` writes."""
    size = path.stat().st_size
    if size > SUGGESTED_MAX_BYTES:
        raise TooLarge(f"{path}: {size} bytes, at most {SUGGESTED_MAX_BYTES} expected for a suggestions list")
    by_folder: Suggested = {}
    with path.open(newline="", encoding="utf-8") as fh:
        rows = csv.DictReader(fh)
        missing = {"rank", "source"} - set(rows.fieldnames or ())
        if missing:
            raise ValueError(
                f"{path}: no {' / '.join(sorted(missing))} column: not a suggestions list of wbc adapt --suggest "
                f"(columns found: {rows.fieldnames})"
            )
        for i, row in enumerate(rows, start=1):
            src = Path(row.get("source") or "")
            if not src.name:
                continue
            try:
                rank = int(row.get("rank") or i)
            except ValueError:
                rank = i
            by_folder.setdefault(src.parent.name, {})[src.name] = rank
    return by_folder


def suggested_in(report: dict[str, Any], suggested: Suggested) -> dict[str, int]:
    """The report's cells among the suggestions, ``{file: rank}``: by file name, in a sample folder named
    after the sample (``S-1``, or ``S-1.2`` for a re-dropped one)."""
    sid = safe_stem(str(report["sample_id"]))
    ranks: dict[str, int] = {}
    for folder, files in suggested.items():
        if folder == sid or folder.startswith(sid + "."):
            for name, rank in files.items():
                ranks[name] = min(rank, ranks.get(name, rank))
    return {c["file"]: ranks[c["file"]] for c in report["cells"] if c["file"] in ranks}
