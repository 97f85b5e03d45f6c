"""The inbox: when has a sample folder fully arrived, has it been seen before, and what became of it.

Pure logic and a small SQLite ledger; the watchdog observer and Prefect wiring live in ``flows/``.

*Settled*: a folder is ready when it holds a marker file (``READY`` by default), or when nothing in it
changed for a quiet period *and* two scans saw the same names, sizes and mtimes.  The quiet period is
short (``fast_quiet_s``) where the OS reports opens and closes and every file written has been closed
without a temporary name, else ``quiet_s`` (see :class:`SettleTracker`).  A scanner copying file by file
over a network share keeps changing sizes and mtimes, so a partial folder is never taken.

*Exactly once*: the ledger is keyed by (folder name, content fingerprint).  The same content dropped
again is recognised and not processed a second time; changed content under the same name gets the next
version number, so its report is written as a new version, never over the old one.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wbcproc.defaults import MARKER_FILE, QUIET_S
from wbcproc.discovery import SYSTEM_FILES

Listing = tuple[tuple[str, int, int], ...]


def listing(folder: Path) -> Listing:
    """Names, sizes and mtimes (ns) of a folder's entries; hidden/OS files included (they can be partial)."""
    out = []
    with os.scandir(folder) as it:
        for e in it:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            out.append((e.name, st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


def fingerprint(folder: Path, marker: str = MARKER_FILE) -> str:
    """SHA-256 over the names and contents of the folder's files (not the marker, not OS clutter)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name == marker or name.lower() in SYSTEM_FILES:
            continue
        p = folder / name
        if not p.is_file() or p.is_symlink():
            h.update(f"{name}\0-\n".encode("utf-8", "surrogateescape"))
            continue
        h.update(name.encode("utf-8", "surrogateescape") + b"\0")
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\n")
    return h.hexdigest()


# names copy tools give a file while it is being written (rsync ".name.XXXXXX", browsers, editors, shares)
_TEMP_SUFFIXES = (".part", ".partial", ".crdownload", ".tmp", ".temp", ".download", ".filepart", "~")


def is_temporary_name(name: str) -> bool:
    """A name that says its file is still being written (it is renamed when done)."""
    low = name.lower()
    if low.endswith(_TEMP_SUFFIXES) or low.startswith((".~lock", "~$")):
        return True
    # rsync writes ".<name>.<6 random characters>" and renames it at the end
    parts = name.split(".")
    return name.startswith(".") and len(parts) >= 3 and len(parts[-1]) == 6 and parts[-1].isalnum()


@dataclass
class Quiet:
    """When each watched thing (a sample folder's listing, a reviewed workbook's size and time) last changed:
    the one rule by which the inbox and the reviewed-workbook folder decide that something has finished
    arriving."""

    _since: dict[str, tuple[Any, float]] = field(default_factory=dict)

    def since(self, name: str, signature: Any, now: float) -> float | None:
        """When ``name`` last changed; None when it changes now (first seen, or ``signature`` differs)."""
        previous = self._since.get(name)
        if previous is None or previous[0] != signature:
            self._since[name] = (signature, now)
            return None
        return previous[1]

    def forget(self, name: str) -> None:
        self._since.pop(name, None)

    def items(self) -> list[tuple[str, tuple[Any, float]]]:
        return list(self._since.items())


@dataclass
class SettleTracker:
    """Per-folder state of the settle rule.  ``touch``/``opened``/``closed`` on file-system events,
    ``check`` on each scan.

    Two quiet periods.  Where the operating system reports when files are opened and closed (inotify:
    ``events_reliable``), a folder in which every opened file has been closed again, none has a temporary
    name, and nothing changed for ``fast_quiet_s`` is complete: a copy in one go (``cp -r``, a file manager,
    ``rsync``) is taken about a second after its last file closes.  Otherwise - polling, another OS, a file
    still open, a temporary name - the folder must be quiet for ``quiet_s``.  ``fast_quiet_s`` (1.2 s) is
    longer than the pause of a scanner writing a file every 0.8 s, so such a folder is not taken early.
    """

    quiet_s: float = QUIET_S
    marker: str = MARKER_FILE
    fast_quiet_s: float = 1.2
    events_reliable: bool = False
    _last: Quiet = field(default_factory=Quiet)
    _event: dict[str, float] = field(default_factory=dict)
    _open: dict[str, dict[str, int]] = field(default_factory=dict)

    def touch(self, name: str, now: float | None = None) -> None:
        self._event[name] = time.monotonic() if now is None else now

    def opened(self, name: str, path: str, now: float | None = None) -> None:
        files = self._open.setdefault(name, {})
        files[path] = files.get(path, 0) + 1
        self.touch(name, now)

    def closed(self, name: str, path: str, now: float | None = None) -> None:
        files = self._open.get(name, {})
        if files.get(path, 0) > 1:
            files[path] -= 1
        else:
            files.pop(path, None)  # also a close whose open came before we watched
        self.touch(name, now)

    def forget(self, name: str) -> None:
        self._last.forget(name)
        self._event.pop(name, None)
        self._open.pop(name, None)

    def _needed(self, name: str, current: Listing) -> float:
        if self.events_reliable and not self._open.get(name) and not any(is_temporary_name(e[0]) for e in current):
            return min(self.quiet_s, self.fast_quiet_s)
        return self.quiet_s

    def check(self, folder: Path, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        name = folder.name
        if (folder / self.marker).exists():
            return True
        try:
            current = listing(folder)
        except FileNotFoundError:
            self.forget(name)
            return False
        since = self._last.since(name, current, now)
        if since is None:
            return False
        quiet_since = max(since, self._event.get(name, 0.0))
        return bool(current) and now - quiet_since >= self._needed(name, current)

    def due_in(self, now: float | None = None) -> float | None:
        """Seconds until the earliest watched folder could settle (None: none is waiting), so the watcher
        checks then instead of at its next periodic scan."""
        now = time.monotonic() if now is None else now
        waits = [
            max(seen, self._event.get(name, 0.0)) + self._needed(name, lst) - now
            for name, (lst, seen) in self._last.items()
            if lst
        ]
        waits = [w for w in waits if w > 0]  # one already due was checked by the scan just made
        return min(waits) if waits else None


@dataclass(frozen=True)
class LedgerEntry:
    folder: str
    fingerprint: str
    version: int
    state: str  # submitted | completed | failed
    flow_run_id: str | None
    updated_at: str
    message: str | None


class Ledger:
    """SQLite ledger of every folder taken from the inbox (WAL; safe across restarts and kill -9)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS runs (folder TEXT NOT NULL, fingerprint TEXT NOT NULL, version INTEGER NOT NULL,"
            " state TEXT NOT NULL, flow_run_id TEXT, updated_at TEXT NOT NULL, message TEXT,"
            " PRIMARY KEY (folder, fingerprint))"
        )

    def close(self) -> None:
        self._db.close()

    def _row(self, r) -> LedgerEntry:
        return LedgerEntry(*r)

    def get(self, folder: str, fp: str) -> LedgerEntry | None:
        r = self._db.execute(
            "SELECT folder, fingerprint, version, state, flow_run_id, updated_at, message FROM runs"
            " WHERE folder=? AND fingerprint=?",
            (folder, fp),
        ).fetchone()
        return None if r is None else self._row(r)

    def next_version(self, folder: str) -> int:
        r = self._db.execute("SELECT MAX(version) FROM runs WHERE folder=?", (folder,)).fetchone()
        return (r[0] or 0) + 1

    def record(
        self, folder: str, fp: str, version: int, state: str, flow_run_id: str | None = None, message: str | None = None
    ) -> None:
        self._db.execute(
            "INSERT INTO runs VALUES (?,?,?,?,?,?,?) ON CONFLICT(folder, fingerprint) DO UPDATE SET"
            " state=excluded.state, flow_run_id=COALESCE(excluded.flow_run_id, runs.flow_run_id),"
            " updated_at=excluded.updated_at, message=excluded.message",
            (folder, fp, version, state, flow_run_id, datetime.now(UTC).isoformat(timespec="seconds"), message),
        )

    def pending(self) -> list[LedgerEntry]:
        rows = self._db.execute(
            "SELECT folder, fingerprint, version, state, flow_run_id, updated_at, message FROM runs"
            " WHERE state='submitted'"
        ).fetchall()
        return [self._row(r) for r in rows]

    def all(self) -> list[LedgerEntry]:
        rows = self._db.execute(
            "SELECT folder, fingerprint, version, state, flow_run_id, updated_at, message FROM runs ORDER BY folder, version"
        ).fetchall()
        return [self._row(r) for r in rows]
