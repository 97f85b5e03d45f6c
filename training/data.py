"""Labelled data: gather class folders, de-duplicate by content, split deterministically by hash.

The split of a file depends only on the SHA-256 of its bytes, so identical files always land on the same
side, adding data never moves an existing file to another split, and the test split of a data set is the
same for every retrain.  Identical files filed under different classes are excluded and listed.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from wbcproc.classes import CLASSES
from wbcproc.discovery import IMAGE_EXTENSIONS, SYSTEM_FILES, display_name
from wbcproc.reviewed import FRAMED_MARKER
from wbcproc.sidecar import sha256_file

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Item:
    path: Path
    label: str
    sha256: str
    split: str
    framed: bool = False  # the root holds a FRAMED marker: images are canonical squares already (field crops)


@dataclass
class Gathered:
    items: list[Item]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (dropped path, kept path)
    conflicts: list[tuple[str, str]] = field(default_factory=list)  # (path, labels)

    def counts(self) -> dict[str, dict[str, int]]:
        out = {s: dict.fromkeys(CLASSES, 0) for s in SPLITS}
        for it in self.items:
            out[it.split][it.label] += 1
        return out

    def summary(self) -> dict:
        return {
            "n_items": len(self.items),
            "per_split_class": self.counts(),
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "duplicates_dropped": len(self.duplicates),
            "label_conflicts": [{"file": f, "labels": r} for f, r in self.conflicts],
        }


def split_of(sha256: str, val_fraction: float = 0.10, test_fraction: float = 0.15) -> str:
    """Deterministic split from the content hash (first 32 bits as a uniform number in [0, 1))."""
    u = int(sha256[:8], 16) / 2**32
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def expand_roots(roots: list[str | Path]) -> list[Path]:
    """A root holding class folders is itself; one holding none but sub-folders that do (a lab root written
    by ``wbc export-reviewed``: ``cells/`` and ``field-crops/``) stands for those sub-folders."""
    out: list[Path] = []
    for root in map(Path, roots):
        if root.is_dir() and not any((root / c).is_dir() for c in CLASSES):
            subs = [s for s in sorted(root.iterdir()) if s.is_dir() and any((s / c).is_dir() for c in CLASSES)]
            if subs:
                out += subs
                continue
        out.append(root)
    return out


def _hash_if_image(path: Path, skipped: list[tuple[str, str]]) -> str | None:
    """The file's sha256 when it may be a cell image (cheap checks: name, size), else None and why in
    ``skipped``."""
    name = path.name
    shown = display_name(str(path))
    if name.lower() in SYSTEM_FILES or name.startswith("._"):
        skipped.append((shown, "operating-system file"))
        return None
    if os.path.splitext(name.lower())[1] not in IMAGE_EXTENSIONS:
        skipped.append((shown, "not an image extension"))
        return None
    try:
        if path.stat().st_size == 0:
            skipped.append((shown, "empty file"))
            return None
        return sha256_file(path)
    except OSError as exc:
        skipped.append((shown, f"unreadable: {exc.strerror or exc}"))
        return None


def _is_class_folder(sub: Path, skipped: list[tuple[str, str]]) -> bool:
    """Whether ``sub`` of a data root is a canonical class folder; anything else is listed in ``skipped``."""
    if not sub.is_dir():
        if not sub.name.startswith(".") and sub.name != FRAMED_MARKER:
            skipped.append((str(sub), "not a class folder"))
        return False
    if sub.name not in CLASSES:
        skipped.append((str(sub), f"folder name {sub.name!r} is not a canonical class {list(CLASSES)}"))
        return False
    return True


def gather(roots: list[str | Path], *, val_fraction: float = 0.10, test_fraction: float = 0.15) -> Gathered:
    """Read ``root/<class>/*`` for each root (see ``expand_roots``).  Cheap checks only (names, size);
    decoding comes later."""
    roots = expand_roots(roots)
    by_hash: dict[str, list[tuple[Path, str]]] = {}
    framed_roots: set[Path] = set()
    skipped: list[tuple[str, str]] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"data root {str(root)!r} is not a folder of class folders")
        if (root / FRAMED_MARKER).is_file():
            framed_roots.add(root)
        for sub in sorted(root.iterdir()):
            if not _is_class_folder(sub, skipped):
                continue
            for name in sorted(os.listdir(sub)):
                digest = _hash_if_image(sub / name, skipped)
                if digest is not None:
                    by_hash.setdefault(digest, []).append((sub / name, sub.name))
    items: list[Item] = []
    duplicates: list[tuple[str, str]] = []
    conflicts: list[tuple[str, str]] = []
    for digest, entries in by_hash.items():
        labels = sorted({label for _, label in entries})
        if len(labels) > 1:
            conflicts += [(display_name(str(p)), "/".join(labels)) for p, _ in entries]
            continue
        keep = entries[0]
        duplicates += [(display_name(str(p)), display_name(str(keep[0]))) for p, _ in entries[1:]]
        framed = keep[0].parent.parent in framed_roots
        items.append(Item(keep[0], keep[1], digest, split_of(digest, val_fraction, test_fraction), framed))
    items.sort(key=lambda it: (it.label, str(it.path)))
    return Gathered(items, skipped, duplicates, conflicts)


def write_split(items: list[Item], path: str | Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["sha256", "split", "label", "path"])
        for it in sorted(items, key=lambda i: i.sha256):
            w.writerow([it.sha256, it.split, it.label, display_name(str(it.path))])


def read_split(path: str | Path, split: str | None = None) -> list[Item]:
    """The items :func:`write_split` wrote (only ``split``'s when given): what a run was tested on, read
    back by the retrain flow to score the challenger and the model in use on the same cells."""
    items: list[Item] = []
    framed: dict[Path, bool] = {}  # data root -> holds the FRAMED marker: looked up once a root
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if split is None or row["split"] == split:
                p = Path(row["path"])
                root = p.parent.parent
                if root not in framed:
                    framed[root] = (root / FRAMED_MARKER).is_file()
                items.append(Item(p, row["label"], row["sha256"], row["split"], framed[root]))
    return items
