"""Half-reviewed slides: the reviewed classes saved as a person goes, merged when two people save at once.

One draft per preliminary report, ``<reports>/.review/<report id>.draft.json``, written atomically under a
lock.  Every cell's reviewed class carries the draft version that set it and the account that set it.
A save names the version it started from: changes to cells nobody else touched since are merged (both
people's work is kept); a change to a cell someone else has since set to another class is refused as a
conflict naming the cell and the other person, and nothing of that save is written - the person sees the
other's class and decides.  A draft survives reloads and server restarts; signing leaves it as the record
of the work that led to the signature.
"""

from __future__ import annotations

import fcntl
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from wbcproc.atomic import atomic_write_json
from wbcproc.classes import CLASSES

DRAFTS_DIR = ".review"
ACTIVE = timedelta(minutes=5)  # someone seen on a slide this recently is shown as reviewing it


class DraftConflict(Exception):
    """Cells another person set since the save's starting version; nothing was written."""

    def __init__(self, cells: dict[str, dict[str, Any]], draft: dict[str, Any]) -> None:
        self.cells = cells
        self.draft = draft
        who = sorted({c["by"] for c in cells.values()})
        super().__init__(
            f"{len(cells)} cell(s) were changed meanwhile by {', '.join(who)}: "
            + ", ".join(f"{f} -> {c['class']}" for f, c in list(cells.items())[:5])
        )


@dataclass(frozen=True)
class Save:
    draft: dict[str, Any]
    merged: int  # cells others changed since the starting version, kept beside this save's


def draft_path(reports: Path, report_id: str) -> Path:
    return Path(reports) / DRAFTS_DIR / f"{report_id}.draft.json"


def _empty(report_id: str) -> dict[str, Any]:
    return {"report_id": report_id, "version": 0, "cells": {}, "seen": {}}


def load_draft(reports: Path, report_id: str) -> dict[str, Any]:
    p = draft_path(reports, report_id)
    if not p.is_file():
        return _empty(report_id)
    return json.loads(p.read_text(encoding="utf-8"))


def reviewed_classes(draft: dict[str, Any]) -> dict[str, str]:
    """``{file: class}`` of the draft: what signing it verifies."""
    return {f: c["class"] for f, c in draft["cells"].items()}


def active_reviewers(draft: dict[str, Any], now: datetime | None = None) -> list[str]:
    now = now or datetime.now(UTC)
    return sorted(a for a, t in draft.get("seen", {}).items() if now - datetime.fromisoformat(t) <= ACTIVE)


class _Locked:
    """The draft file's lock: one save (or visit) at a time per report, across processes."""

    def __init__(self, reports: Path, report_id: str) -> None:
        self.path = draft_path(reports, report_id)

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path.with_name(self.path.name + ".lock"), "a")
        fcntl.flock(self._fh, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def touch(reports: Path, report_id: str, account: str) -> dict[str, Any]:
    """Record that ``account`` has the slide open; the draft as it now stands."""
    with _Locked(reports, report_id):
        draft = load_draft(reports, report_id)
        draft.setdefault("seen", {})[account] = _now()
        atomic_write_json(draft_path(reports, report_id), draft)
    return draft


def save(
    reports: Path, report_id: str, changes: dict[str, str | None], base_version: int, account: str, files: set[str]
) -> Save:
    """Apply ``changes`` (``{file: class}``; None takes a cell's reviewed class away) made from draft version
    ``base_version`` by ``account``; ``files``: the report's cells.  Raises :class:`DraftConflict` or
    ValueError (an unknown cell or class) and writes nothing then."""
    bad = [f"{f!r}" for f in changes if f not in files]
    bad += [f"{c!r} for {f!r}" for f, c in changes.items() if c is not None and c not in CLASSES]
    if bad:
        raise ValueError(f"not a cell of this report or not a class ({', '.join(CLASSES)}): {', '.join(bad[:5])}")
    with _Locked(reports, report_id):
        draft = load_draft(reports, report_id)
        cells = draft["cells"]
        clash = {
            f: cells[f]
            for f, c in changes.items()
            if f in cells
            and cells[f]["version"] > base_version
            and cells[f]["by"] != account
            and cells[f]["class"] != c
        }
        clash |= {  # a cell someone else took back since (its removal is also work)
            f: {"class": None, "by": by, "version": v}
            for f, (by, v) in draft.get("removed", {}).items()
            if f in changes and f not in cells and v > base_version and by != account and changes[f] is not None
        }
        if clash:
            raise DraftConflict(clash, draft)
        merged = sum(1 for c in cells.values() if c["version"] > base_version and c["by"] != account)
        version = draft["version"] + 1
        removed = draft.setdefault("removed", {})
        for f, c in changes.items():
            if c is None:
                if cells.pop(f, None) is not None:
                    removed[f] = [account, version]
            else:
                cells[f] = {"class": c, "by": account, "version": version, "at": _now()}
                removed.pop(f, None)
        draft.update(version=version, saved_by=account, saved_at=_now())
        draft.setdefault("seen", {})[account] = _now()
        atomic_write_json(draft_path(reports, report_id), draft)
    return Save(draft, merged)
