"""The verification audit trail: an append-only JSON-lines log whose entries are chained by sha256.

Why a chain: a laboratory must be able to show who changed which cell and when, and that nobody edited
the record afterwards.  Each entry carries ``prev`` (the previous entry's ``hash``) and its own ``hash``
(sha256 of the entry's canonical JSON without ``hash``), so changing, removing or reordering any entry
breaks every hash after it; :func:`check` finds the first break.  (Evidence, not prevention: whoever can
rewrite the whole file can rebuild the chain - copy the last hash somewhere else, e.g. the LIS, to pin it.)

Appends take an exclusive lock on a ``.lock`` file beside the log, so two verifications at once (two
workers on a shared folder) cannot fork the chain, and each entry is written with one ``write`` and
fsync'ed.  A log that does not end with a complete line is never appended to: it is reported, not repaired.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
LOG_NAME = "audit.jsonl"


class AuditError(RuntimeError):
    """The audit log cannot be appended to (it is damaged); nothing was written."""


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def read_entries(path: str | Path) -> list[dict[str, Any]]:
    """Every entry of the log (no check; see :func:`check`).  A missing log has none."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def append(path: str | Path, event: dict[str, Any], *, now: datetime | None = None) -> dict[str, Any]:
    """Append one entry (``event`` plus ``seq``, ``at``, ``prev``, ``hash``) and return it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p.with_name(p.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = p.read_bytes() if p.is_file() else b""
        if data and not data.endswith(b"\n"):
            raise AuditError(
                f"audit log {str(p)!r} ends in an incomplete entry: run 'wbc audit check'; nothing appended"
            )
        lines = [ln for ln in data.decode("utf-8").splitlines() if ln.strip()]
        last = json.loads(lines[-1]) if lines else None
        entry = {
            "seq": (last["seq"] + 1) if last else 1,
            "at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
            **event,
            "prev": last["hash"] if last else GENESIS,
        }
        entry["hash"] = entry_hash(entry)
        line = (json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    return entry


@dataclass
class ChainReport:
    entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(path: str | Path) -> ChainReport:
    """Verify the chain: every line parses, ``seq`` counts up from 1, ``prev`` is the previous entry's
    hash and ``hash`` matches the entry's content."""
    p = Path(path)
    rep = ChainReport()
    if not p.is_file():
        rep.problems.append(f"no audit log at {str(p)!r}")
        return rep
    data = p.read_bytes()
    if data and not data.endswith(b"\n"):
        rep.problems.append("the log ends in an incomplete line (a write was cut off or the file was edited)")
    prev, seq = GENESIS, 0
    for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
        except json.JSONDecodeError as exc:
            rep.problems.append(f"line {n}: not JSON ({exc})")
            return rep
        rep.entries += 1
        if e.get("seq") != seq + 1:
            rep.problems.append(f"line {n}: seq {e.get('seq')!r}, expected {seq + 1} (an entry removed or moved)")
        if e.get("prev") != prev:
            rep.problems.append(f"line {n}: prev does not match the hash of the entry before it")
        if e.get("hash") != entry_hash(e):
            rep.problems.append(f"line {n}: hash does not match its content (the entry was edited)")
        prev, seq = e.get("hash"), e.get("seq") if isinstance(e.get("seq"), int) else seq + 1
    return rep
