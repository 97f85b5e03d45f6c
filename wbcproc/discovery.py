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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

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


def read_metadata(path: Path) -> SampleMetadata:
    """Parse ``sample.json``.  Problems are recorded in ``errors``, never raised: metadata is optional."""
    meta = SampleMetadata(present=True)
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        meta.errors.append(f"{METADATA_FILE} could not be read as UTF-8 JSON: {exc}")
        return meta
    if not isinstance(raw, dict):
        meta.errors.append(f"{METADATA_FILE} must hold a JSON object, got {type(raw).__name__}")
        return meta
    for key, value in raw.items():
        if key == "wbc_count":
            if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1000:
                meta.wbc_count = float(value)
            else:
                meta.errors.append(f"wbc_count {value!r} is not a number in (0, 1000) x10^9/L; absolute counts omitted")
        elif key == "age_group":
            if isinstance(value, str) and value.strip():
                meta.age_group = value.strip()
            else:
                meta.errors.append(f"age_group {value!r} is not a non-empty string")
        elif key == "image_type":
            if value in ("cell", "field", "auto"):
                meta.image_type = value
            else:
                meta.errors.append(f"image_type {value!r} is not one of 'cell', 'field', 'auto'; 'auto' used")
        elif key == "notes":
            meta.notes = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        else:
            meta.unknown[str(key)] = value
    return meta


def _is_within(path: Path, folder_real: Path) -> bool:
    try:
        path.relative_to(folder_real)
    except ValueError:
        return False
    return True


def check_image_header(path: Path, name: str, settings: Settings) -> Candidate | Rejected:
    """Every check that needs only the file's size and header."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return Rejected(name, "file vanished before it could be read", "vanished")
    except PermissionError:
        return Rejected(name, "permission denied", "unreadable")
    if size == 0:
        return Rejected(name, "empty file (0 bytes)", "empty")
    try:
        with Image.open(path) as im:
            fmt = im.format or "unknown"
            width, height = im.size
            mode = im.mode
            n_frames = getattr(im, "n_frames", 1)
    except PermissionError:
        return Rejected(name, "permission denied", "unreadable")
    except FileNotFoundError:
        return Rejected(name, "file vanished before it could be read", "vanished")
    except UnidentifiedImageError:
        return Rejected(name, "not an image: content is not JPEG, PNG, BMP or TIFF", "not_image")
    except (OSError, ValueError, SyntaxError) as exc:
        return Rejected(name, f"image header is damaged: {exc}", "corrupt")
    if fmt not in SUPPORTED_FORMATS:
        return Rejected(name, f"content is {fmt}, not a supported image type (JPEG/PNG/BMP/TIFF)", "format")
    if width * height > settings.max_pixels:
        return Rejected(
            name,
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {settings.max_pixels:,}; not decoded",
            "too_large",
        )
    if min(width, height) < settings.min_side_px:
        return Rejected(
            name,
            f"{width}x{height} is too small to hold a cell (shorter side under {settings.min_side_px} px)",
            "too_small",
        )
    if n_frames > 1:
        return Rejected(name, f"multi-page image ({n_frames} pages); save one cell per file", "multipage")
    if mode in GREY_MODES:
        return Rejected(
            name,
            f"greyscale image (mode {mode}): the classifier needs the stain colours; save in colour",
            "greyscale",
        )
    if mode not in COLOUR_MODES:
        return Rejected(name, f"unsupported colour mode {mode}", "colour_mode")
    return Candidate(name, path, width, height, fmt, mode)


def scan_sample(folder: str | Path, settings: Settings) -> SampleInventory:
    """List a sample folder (not recursively) and sort each entry into candidates/rejected/ignored."""
    folder = Path(folder)
    if not folder.exists():
        raise SampleFolderError(f"sample folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise SampleFolderError(f"{str(folder)!r} is not a folder; a sample is a folder of cell images")
    try:
        names = sorted(os.listdir(folder))
    except PermissionError:
        raise SampleFolderError(f"sample folder {str(folder)!r} cannot be listed: permission denied") from None
    folder_real = folder.resolve()
    sample_id = display_name(folder_real.name)
    candidates: list[Candidate] = []
    rejected: list[Rejected] = []
    ignored: list[Ignored] = []
    metadata = SampleMetadata()
    for raw_name in names:
        name = display_name(raw_name)
        path = folder / raw_name
        lower = raw_name.lower()
        if path.is_symlink():
            target = Path(os.path.realpath(path))
            if not _is_within(target, folder_real):
                rejected.append(Rejected(name, "symbolic link to a file outside the sample folder", "symlink"))
                continue
            if target.parent == folder_real:
                rejected.append(
                    Rejected(
                        name,
                        f"symbolic link to {display_name(target.name)!r} in the same folder "
                        "(that file is counted once)",
                        "symlink",
                    )
                )
                continue
        if lower == METADATA_FILE and path.is_file():
            metadata = read_metadata(path)
            ignored.append(Ignored(name, "sample metadata"))
            continue
        if raw_name in settings.marker_files:
            ignored.append(Ignored(name, "completion marker"))
            continue
        if lower in SYSTEM_FILES or lower.startswith("._"):
            ignored.append(Ignored(name, "operating-system file"))
            continue
        if raw_name.startswith("."):
            ignored.append(Ignored(name, "hidden file"))
            continue
        if path.is_dir():
            ignored.append(Ignored(name, "sub-folder (sample folders are not searched recursively)"))
            continue
        if not path.exists():
            rejected.append(Rejected(name, "file vanished before it could be read", "vanished"))
            continue
        if not path.is_file():
            rejected.append(Rejected(name, "not a regular file", "not_file"))
            continue
        ext = os.path.splitext(lower)[1]
        if ext not in IMAGE_EXTENSIONS:
            rejected.append(
                Rejected(
                    name,
                    f"extension {ext or '(none)'!r} is not an image type ({', '.join(sorted(IMAGE_EXTENSIONS))})",
                    "extension",
                )
            )
            continue
        result = check_image_header(path, name, settings)
        (candidates if isinstance(result, Candidate) else rejected).append(result)  # type: ignore[arg-type]
    return SampleInventory(sample_id, folder, candidates, rejected, ignored, metadata)
