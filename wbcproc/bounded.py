"""Files that arrive from a person, sized up before anything parses them.

A reviewed workbook dropped into ``inbox/reviewed/`` (or given to ``wbc verify``) and a sample's
``sample.json`` are read by parsers that hold the whole file in memory: openpyxl builds every cell of every
sheet, ``json`` every value.  A physician's workbook is a few hundred rows and well under 50 MB with its
thumbnails; a file far beyond that is a mistake (a scanner's export dropped in the wrong folder) or an
attack (a zip bomb, an XML entity expansion), and either must cost seconds and a small, fixed memory -
the service keeps serving.  So the checks here read only a workbook's zip directory and stream its XML
parts in small chunks; every refusal is one line naming what was too large and the limit.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

# A wbc report workbook: a Cells sheet of one row per cell plus small Summary/About sheets and thumbnails.
# 2,000 cells with thumbnails are ~16 MB; the limits leave room for the largest slides a field scanner makes.
MAX_WORKBOOK_BYTES = 100 * 1024**2
MAX_WORKBOOK_UNCOMPRESSED = 400 * 1024**2  # all parts together, images included
MAX_SHEET_XML_BYTES = 32 * 1024**2  # one worksheet's XML: ~30,000 cell rows of a report
MAX_WORKBOOK_PARTS = 10_000
MAX_COMPRESSION_RATIO = 200  # XML compresses ~10-30x; a zip bomb by thousands
MAX_SHEET_ROWS, MAX_SHEET_COLUMNS = 100_000, 200
MAX_METADATA_BYTES = 1024**2  # sample.json: a few keys


class TooLarge(ValueError):
    """A file refused before parsing; ``str()`` is the one-line reason."""


def _column_number(letters: str) -> int:
    n = 0
    for ch in letters:
        n = n * 26 + ord(ch) - 64
    return n


def _dimension(head: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a worksheet's ``<dimension ref="A1:K201"/>`` (None: absent or unreadable)."""
    m = re.search(rb'<(?:\w+:)?dimension\s+ref="([A-Z]+)?(\d+)?(?::([A-Z]+)(\d+))?"', head)
    if m is None or m.group(3) is None:
        return None
    return int(m.group(4)), _column_number(m.group(3).decode())


def _scan_xml(zf: zipfile.ZipFile, info: zipfile.ZipInfo, sheet: bool) -> str | None:
    """Stream one XML part: no DTD or entity declaration anywhere, and a worksheet's declared size bounded."""
    tail, head = b"", b""
    with zf.open(info) as fh:
        while chunk := fh.read(1 << 16):
            window = tail + chunk
            if b"<!DOCTYPE" in window or b"<!ENTITY" in window:
                return f"part {info.filename!r} declares a DTD or XML entities (not something Excel writes)"
            if sheet and len(head) < 4096:
                head += chunk[: 4096 - len(head)]
            tail = window[-16:]
    dim = _dimension(head) if sheet else None
    if dim and (dim[0] > MAX_SHEET_ROWS or dim[1] > MAX_SHEET_COLUMNS):
        return (
            f"sheet part {info.filename!r} spans {dim[0]:,} rows x {dim[1]:,} columns "
            f"(at most {MAX_SHEET_ROWS:,} x {MAX_SHEET_COLUMNS} are read)"
        )
    return None


def check_workbook_size(path: str | Path) -> None:
    """Raise :class:`TooLarge` unless ``path`` is an .xlsx whose size, parts, compression and sheets are
    within the limits above.  Reads the zip directory and streams the XML parts; never the whole file."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_WORKBOOK_BYTES:
        raise TooLarge(f"{size / 1024**2:.0f} MB: a report workbook is at most {MAX_WORKBOOK_BYTES // 1024**2} MB")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise TooLarge(f"not an Excel workbook (.xlsx is a zip file): {exc}") from None
    with zf:
        parts = zf.infolist()
        if len(parts) > MAX_WORKBOOK_PARTS:
            raise TooLarge(f"{len(parts):,} parts in the workbook (at most {MAX_WORKBOOK_PARTS:,})")
        total = sum(p.file_size for p in parts)
        if total > MAX_WORKBOOK_UNCOMPRESSED:
            raise TooLarge(
                f"{total / 1024**2:,.0f} MB uncompressed (at most {MAX_WORKBOOK_UNCOMPRESSED // 1024**2} MB)"
            )
        for p in parts:
            sheet = p.filename.startswith("xl/worksheets/") and p.filename.endswith(".xml")
            if sheet and p.file_size > MAX_SHEET_XML_BYTES:
                raise TooLarge(
                    f"sheet part {p.filename!r} is {p.file_size / 1024**2:,.0f} MB of XML "
                    f"(at most {MAX_SHEET_XML_BYTES // 1024**2} MB)"
                )
            if p.file_size > 1024**2 and p.file_size > MAX_COMPRESSION_RATIO * max(p.compress_size, 1):
                raise TooLarge(
                    f"part {p.filename!r} expands {p.file_size // max(p.compress_size, 1):,}-fold "
                    f"(at most {MAX_COMPRESSION_RATIO}): a zip bomb, not a workbook"
                )
            if p.filename.endswith((".xml", ".rels")):
                problem = _scan_xml(zf, p, sheet)
                if problem:
                    raise TooLarge(problem)


def read_small(path: str | Path, limit: int = MAX_METADATA_BYTES) -> bytes:
    """The bytes of a small user file (``sample.json``), or :class:`TooLarge` when it is over ``limit``
    - read with the limit, so a file that grows while it is read is still bounded."""
    with Path(path).open("rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"{Path(path).name} is over {limit // 1024} KB (it holds a few keys)")
    return data
