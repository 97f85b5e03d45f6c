"""Find what a sample folder holds and decide, before decoding anything, what can be classified.

Every directory entry ends up in exactly one of three lists: ``candidates`` (will be decoded and
classified; a decode failure later moves it to ``rejected``), ``rejected`` (with a specific reason), or
``ignored`` (operating-system clutter, hidden files, the ``sample.json`` metadata, sub-folders).

Header checks use Pillow's lazy ``Image.open``, which reads only the header: dimensions and mode are
known without decoding the pixels, so a decompression bomb never reaches the decoder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from wbcproc.bounded import TooLarge, read_small
from wbcproc.config import Settings

# We enforce our own pixel limit (Settings.max_pixels) from the header before any decode; Pillow's
# global bomb check would otherwise refuse to even read the header of a large image.
Image.MAX_IMAGE_PIXELS = None

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
SYSTEM_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", ".localized", "icon\r"})
METADATA_FILE = "sample.json"
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "TIFF"})
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"})
COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "CMYK", "YCbCr"})

#: Known keys of sample.json.  Others are kept and listed as unknown in the report.
METADATA_KEYS = {
    "wbc_count": "analyser WBC count, x10^9/L (enables absolute counts)",
    "age_group": "patient age group, e.g. 'adult' (selects reference intervals when configured)",
    "notes": "free text",
    "image_type": "'cell' (single-cell crops), 'field' (smear fields) or 'auto' (by image size; default)",
}


def display_name(name: str) -> str:
    """A file name as text that JSON and Excel can hold (undecodable bytes shown as U+FFFD)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)


def safe_stem(sample_id: str) -> str:
    """A file-name stem for outputs that cannot escape the output folder or hit reserved names."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", display_name(sample_id)).strip("._ -")
    if not stem:
        stem = "sample"
    if _RESERVED.match(stem):
        stem = "_" + stem
    return stem[:120]


@dataclass(frozen=True)
class Rejected:
    file: str
    reason: str
    code: str


@dataclass(frozen=True)
class Ignored:
    file: str
    reason: str


@dataclass(frozen=True)
class Candidate:
    """An image whose header passed every check; it still has to decode cleanly."""

    file: str
    path: Path
    width: int
    height: int
    format: str
    mode: str


@dataclass
class SampleMetadata:
    wbc_count: float | None = None
    age_group: str | None = None
    notes: str | None = None
    image_type: str = "auto"
    unknown: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    present: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "present": self.present,
            "wbc_count": self.wbc_count,
            "age_group": self.age_group,
            "notes": self.notes,
            "image_type": self.image_type,
            "unknown_keys": self.unknown,
            "errors": self.errors,
        }


@dataclass
class SampleInventory:
    sample_id: str
    folder: Path
    candidates: list[Candidate]
    rejected: list[Rejected]
    ignored: list[Ignored]
    metadata: SampleMetadata

    @property
    def n_entries(self) -> int:
        return len(self.candidates) + len(self.rejected) + len(self.ignored)


class SampleFolderError(Exception):
    """The folder itself cannot be processed (missing, not a directory, unreadable)."""


def _meta_wbc_count(meta: SampleMetadata, value: Any) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1000:
        meta.wbc_count = float(value)
    else:
        meta.errors.append(f"wbc_count {value!r} is not a number in (0, 1000) x10^9/L; absolute counts omitted")


def _meta_age_group(meta: SampleMetadata, value: Any) -> None:
    if isinstance(value, str) and value.strip():
        meta.age_group = value.strip()
    else:
        meta.errors.append(f"age_group {value!r} is not a non-empty string")


def _meta_image_type(meta: SampleMetadata, value: Any) -> None:
    if value in ("cell", "field", "auto"):
        meta.image_type = value
    else:
        meta.errors.append(f"image_type {value!r} is not one of 'cell', 'field', 'auto'; 'auto' used")


def _meta_notes(meta: SampleMetadata, value: Any) -> None:
    meta.notes = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


_META_KEYS = {"wbc_count": _meta_wbc_count, "age_group": _meta_age_group, "image_type": _meta_image_type,
              "notes": _meta_notes}  # fmt: skip


def read_metadata(path: Path) -> SampleMetadata:
    """Parse ``sample.json``.  Problems are recorded in ``errors``, never raised: metadata is optional."""
    meta = SampleMetadata(present=True)
    try:
        raw = json.loads(read_small(path).decode("utf-8"))
    except TooLarge as exc:
        meta.errors.append(str(exc))
        return meta
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        meta.errors.append(f"{METADATA_FILE} could not be read as UTF-8 JSON: {exc or 'nested too deeply'}")
        return meta
    if not isinstance(raw, dict):
        meta.errors.append(f"{METADATA_FILE} must hold a JSON object, got {type(raw).__name__}")
        return meta
    for key, value in raw.items():
        parse = _META_KEYS.get(key)
        if parse is None:
            meta.unknown[str(key)] = value
        else:
            parse(meta, value)
    return meta


def _is_within(path: Path, folder_real: Path) -> bool:
    try:
        path.relative_to(folder_real)
    except ValueError:
        return False
    return True


def _read_header(path: Path, name: str) -> tuple[str, int, int, str, int] | Rejected:
    """(format, width, height, mode, frames) from the file's header, or why it cannot be read."""
    try:
        if path.stat().st_size == 0:
            return Rejected(name, "empty file (0 bytes)", "empty")
        with Image.open(path) as im:
            return im.format or "unknown", im.size[0], im.size[1], im.mode, getattr(im, "n_frames", 1)
    except FileNotFoundError:
        return Rejected(name, "file vanished before it could be read", "vanished")
    except PermissionError:
        return Rejected(name, "permission denied", "unreadable")
    except UnidentifiedImageError:
        return Rejected(name, "not an image: content is not JPEG, PNG, BMP or TIFF", "not_image")
    except (OSError, ValueError, SyntaxError) as exc:
        return Rejected(name, f"image header is damaged: {exc}", "corrupt")


def _header_problem(
    fmt: str, width: int, height: int, mode: str, frames: int, settings: Settings
) -> tuple[str, str] | None:
    """(reason, code) when a readable header describes an image wbc does not take."""
    if fmt not in SUPPORTED_FORMATS:
        return f"content is {fmt}, not a supported image type (JPEG/PNG/BMP/TIFF)", "format"
    if width * height > settings.max_pixels:
        pixels = f"{width}x{height} = {width * height:,} pixels"
        return f"{pixels} exceeds the limit of {settings.max_pixels:,}; not decoded", "too_large"
    if min(width, height) < settings.min_side_px:
        return (
            f"{width}x{height} is too small to hold a cell (shorter side under {settings.min_side_px} px)",
            "too_small",
        )
    if frames > 1:
        return f"multi-page image ({frames} pages); save one cell per file", "multipage"
    if mode in GREY_MODES:
        return f"greyscale image (mode {mode}): the classifier needs the stain colours; save in colour", "greyscale"
    if mode not in COLOUR_MODES:
        return f"unsupported colour mode {mode}", "colour_mode"
    return None


def check_image_header(path: Path, name: str, settings: Settings) -> Candidate | Rejected:
    """Every check that needs only the file's size and header."""
    header = _read_header(path, name)
    if isinstance(header, Rejected):
        return header
    problem = _header_problem(*header, settings)
    if problem is not None:
        return Rejected(name, *problem)
    fmt, width, height, mode, _ = header
    return Candidate(name, path, width, height, fmt, mode)


def header_checked(files: Iterable[tuple[Path, str]], settings: Settings) -> tuple[list[Candidate], list[Rejected]]:
    """``(path, name)`` pairs through the header checks: the candidates to decode and the rejected, in
    order (``wbc classify``'s files, ``wbc evaluate``'s data set; a sample folder uses ``scan_sample``)."""
    candidates: list[Candidate] = []
    rejected: list[Rejected] = []
    for path, name in files:
        res = check_image_header(path, name, settings)
        (candidates if isinstance(res, Candidate) else rejected).append(res)  # type: ignore[arg-type]
    return candidates, rejected


def _symlink_problem(path: Path, name: str, folder_real: Path) -> Rejected | None:
    target = Path(os.path.realpath(path))
    if not _is_within(target, folder_real):
        return Rejected(name, "symbolic link to a file outside the sample folder", "symlink")
    if target.parent == folder_real:
        same = f"symbolic link to {display_name(target.name)!r} in the same folder (that file is counted once)"
        return Rejected(name, same, "symlink")
    return None


def _ignored_reason(path: Path, raw_name: str, settings: Settings) -> str | None:
    """Why an entry is not a cell image at all (listed as ignored, not rejected), or None."""
    lower = raw_name.lower()
    if raw_name in settings.marker_files:
        return "completion marker"
    if lower in SYSTEM_FILES or lower.startswith("._"):
        return "operating-system file"
    if raw_name.startswith("."):
        return "hidden file"
    if path.is_dir():
        return "sub-folder (sample folders are not searched recursively)"
    return None


def _entry(path: Path, raw_name: str, settings: Settings) -> Candidate | Rejected | Ignored:
    """A (non-metadata) folder entry, its symbolic link already checked: ignored, rejected or a candidate."""
    name = display_name(raw_name)
    why = _ignored_reason(path, raw_name, settings)
    if why is not None:
        return Ignored(name, why)
    if not path.exists():
        return Rejected(name, "file vanished before it could be read", "vanished")
    if not path.is_file():
        return Rejected(name, "not a regular file", "not_file")
    ext = os.path.splitext(raw_name.lower())[1]
    if ext not in IMAGE_EXTENSIONS:
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
        return Rejected(name, f"extension {ext or '(none)'!r} is not an image type ({kinds})", "extension")
    return check_image_header(path, name, settings)


def _list_folder(folder: Path) -> list[str]:
    if not folder.exists():
        raise SampleFolderError(f"sample folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise SampleFolderError(f"{str(folder)!r} is not a folder; a sample is a folder of cell images")
    try:
        return sorted(os.listdir(folder))
    except PermissionError:
        raise SampleFolderError(f"sample folder {str(folder)!r} cannot be listed: permission denied") from None


def scan_sample(folder: str | Path, settings: Settings) -> SampleInventory:
    """List a sample folder (not recursively) and sort each entry into candidates/rejected/ignored."""
    folder = Path(folder)
    names = _list_folder(folder)
    folder_real = folder.resolve()
    inv = SampleInventory(display_name(folder_real.name), folder, [], [], [], SampleMetadata())
    for raw_name in names:
        path = folder / raw_name
        got: Candidate | Rejected | Ignored | None = None
        if path.is_symlink():
            got = _symlink_problem(path, display_name(raw_name), folder_real)
        if got is None and raw_name.lower() == METADATA_FILE and path.is_file():
            inv.metadata = read_metadata(path)
            got = Ignored(display_name(raw_name), "sample metadata")
        if got is None:
            got = _entry(path, raw_name, settings)
        {Candidate: inv.candidates, Rejected: inv.rejected, Ignored: inv.ignored}[type(got)].append(got)  # type: ignore[attr-defined]
    return inv


def require_images(inv: SampleInventory) -> SampleInventory:
    """``inv``, or SampleFolderError when the folder holds no image at all (empty, or only files of other
    types): a mistyped folder must not become a report of a sample with no white cells.  A folder whose
    images were all rejected (unreadable, too large) still gets its report: it says why each was rejected."""
    if inv.candidates or any(r.code != "extension" for r in inv.rejected):
        return inv
    where = f"sample folder {str(inv.folder)!r}"
    if not inv.n_entries:
        raise SampleFolderError(f"{where} is empty: no report written")
    kinds = " ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
    others = sorted(x.file for x in [*inv.rejected, *inv.ignored])
    shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
    raise SampleFolderError(f"{where} holds no image ({kinds}), only {shown}: no report written")
