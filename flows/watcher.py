"""The inbox watcher: watchdog events + periodic scans -> settled folders -> deployment runs.

Runs in a thread beside the Prefect runner.  Each settled folder is fingerprinted, looked up in the
ledger and, when new, started as a run of the ``process-sample`` deployment (named after the sample,
with an idempotency key) so it appears in the UI.  Finished folders move to ``archive/``, failed ones to
``failed/`` with the error beside them.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_OPENED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from wbcproc.defaults import MARKER_FILE, QUIET_S, SCAN_S
from wbcproc.inbox import Ledger, Listing, Quiet, SettleTracker, fingerprint, listing

log = logging.getLogger("wbc.watcher")
# watchdog's inotify backend warns when a watched sub-folder is moved away and a new one of the same name
# arrives (exactly what an inbox does); it re-registers the watch, so the warning carries no information.
warnings.filterwarnings("ignore", message="Callback with id .* already exists", category=RuntimeWarning)
SPECIAL = {"archive", "failed", "reviewed"}  # reviewed/: workbooks to verify (ReviewedWatcher)
DONE_STATES = {"COMPLETED"}
FAILED_STATES = {"FAILED", "CRASHED", "CANCELLED"}
STALE_STATES = {"RUNNING", "PENDING", "CANCELLING"}
ORPHAN_GRACE_S = 10.0


CRASH_RERUNS = 2  # a run that crashed (its worker died) is run again this many times before failed/


@dataclass
class InFlight:
    fingerprint: str
    version: int
    run_id: str
    crashes: int = 0


class _Handler(FileSystemEventHandler):
    def __init__(self, inbox: Path, tracker: SettleTracker, wake: threading.Event) -> None:
        self.inbox, self.tracker, self.wake = inbox, tracker, wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            rel = Path(str(event.src_path)).relative_to(self.inbox)
        except ValueError:
            return
        if rel.parts and rel.parts[0] not in SPECIAL:
            name = rel.parts[0]
            if event.event_type == EVENT_TYPE_OPENED and not event.is_directory:
                self.tracker.opened(name, str(rel))
            elif event.event_type in (EVENT_TYPE_CLOSED, EVENT_TYPE_CLOSED_NO_WRITE) and not event.is_directory:
                self.tracker.closed(name, str(rel))
            else:
                self.tracker.touch(name)
            self.wake.set()


def _unique(dest: Path, *, keep_suffix: bool = False) -> Path:
    """``dest``, or the first free ``dest.2``, ``dest.3``... beside it; with ``keep_suffix`` the number goes
    before the extension (``book.2.xlsx``), so a moved workbook still opens in Excel / Calc."""
    stem, suffix = (dest.stem, dest.suffix) if keep_suffix else (dest.name, "")
    n, free = 2, dest
    while free.exists():
        free, n = dest.with_name(f"{stem}.{n}{suffix}"), n + 1
    return free


class InboxWatcher:
    def __init__(
        self,
        inbox: Path,
        ledger: Ledger,
        submit: Callable[[Path, str, int, str], str],
        state_of: Callable[[str], tuple[str | None, str | None]],
        *,
        quiet_s: float = QUIET_S,
        scan_s: float = SCAN_S,
        marker: str = MARKER_FILE,
        polling: bool = False,
        move_done: bool = True,
        crash: Callable[[str, str], None] | None = None,
        finished_locally: Callable[[str], bool] | None = None,
        pooled: bool = False,
        stuck_pending_s: float = 120.0,
    ) -> None:
        self.inbox = inbox
        self.ledger = ledger
        self.submit = submit
        self.state_of = state_of
        self.scan_s = scan_s
        self.marker = marker
        self.move_done = move_done
        # marks a run CRASHED.  Embedded mode: runs found RUNNING/PENDING at start belonged to a dead runner.
        # Work-pool mode (``pooled``): those runs are the workers'; instead, a run a worker took (PENDING)
        # whose process never started - e.g. it died on a database outage before it could report - is marked
        # CRASHED after ``stuck_pending_s`` and, as every crash, run again.  No heartbeat covers it:
        # heartbeats begin when the flow starts.
        self.crash = crash
        self.pooled = pooled
        # set: tells whether an in-process execution of a run has returned; a run that has returned but whose
        # state never became final (the API was down at the end, e.g. a server restart) is run again
        self.finished_locally = finished_locally
        self.stuck_pending_s = stuck_pending_s
        self._pending_since: dict[str, float] = {}
        self._orphan_since: dict[str, float] = {}
        self.tracker = SettleTracker(quiet_s=quiet_s, marker=marker)
        self.in_flight: dict[str, InFlight] = {}
        self.kept: dict[str, Listing] = {}  # processed folders left in place (move_done=False), as last seen
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._observer = PollingObserver(timeout=scan_s) if polling else Observer()
        # only inotify reports opens and closes: elsewhere (polling, FSEvents, Windows) the long quiet applies
        self.tracker.events_reliable = "inotify" in type(self._observer).__name__.lower()
        self._thread = threading.Thread(target=self._loop, name="wbc-watcher", daemon=True)

    # --- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.inbox.mkdir(parents=True, exist_ok=True)
        for entry in self.ledger.pending():  # restart: runs submitted before we went down
            folder = self.inbox / entry.folder
            if not folder.is_dir() or not entry.flow_run_id:
                continue
            run_id = entry.flow_run_id
            state, _ = self.state_of(run_id)
            if self.crash is not None and not self.pooled and state in STALE_STATES:
                # the process that ran it died with us (kill -9, power loss): mark it and run the sample again
                self.crash(run_id, "the wbc serve process running it stopped; the sample is run again")
                new = self._resubmit(entry.folder, entry.fingerprint, entry.version, f"restart-{int(time.time())}")
                log.info(
                    "%s: run %s was left %s by a stopped service; resubmitted as %s", entry.folder, run_id, state, new
                )
            else:
                self.in_flight[entry.folder] = InFlight(entry.fingerprint, entry.version, run_id)
        self._observer.schedule(_Handler(self.inbox, self.tracker, self._wake), str(self.inbox), recursive=True)
        self._observer.start()
        self._thread.start()
        log.info("watching %s (catch-up scan included)", self.inbox)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._observer.stop()
        self._observer.join(timeout)
        self._thread.join(timeout)

    # --- the loop ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan_once()
            except Exception:  # the watcher must outlive any single bad folder
                log.exception("inbox scan failed")
            due = self.tracker.due_in()
            self._wake.wait(self.scan_s if due is None else min(self.scan_s, due + 0.02))
            self._wake.clear()

    def scan_once(self) -> None:
        for folder in sorted(p for p in self.inbox.iterdir() if p.is_dir()):
            if self._waiting(folder) and self.tracker.check(folder):
                self._take(folder)
        for name, inf in list(self.in_flight.items()):
            self._follow(name, inf)

    def _waiting(self, folder: Path) -> bool:
        """A folder that may be new work: not special, not in flight, not a kept folder unchanged since."""
        name = folder.name
        if name in SPECIAL or name.startswith(".") or name in self.in_flight:
            return False
        if name in self.kept:
            try:
                if listing(folder) == self.kept[name]:
                    return False  # already reported and unchanged
            except FileNotFoundError:
                return False
            del self.kept[name]
        return True

    def _follow(self, name: str, inf: InFlight) -> None:
        """Act on the state of a submitted run: archive, rerun after a crash, fail, or watch for a stuck one."""
        state, message = self.state_of(inf.run_id)
        if state != "PENDING":
            self._pending_since.pop(inf.run_id, None)
        if state in DONE_STATES:
            self.ledger.record(name, inf.fingerprint, inf.version, "completed", inf.run_id)
            self._finish(name, "archive", None)
        elif state == "CRASHED" and inf.crashes < CRASH_RERUNS:
            # the infrastructure's failure, not the sample's (a worker machine died): run it again
            run_id = self._resubmit(name, inf.fingerprint, inf.version, f"crash-{inf.crashes + 1}", inf.crashes + 1)
            log.warning("%s: run %s crashed (%s); resubmitted as %s", name, inf.run_id, message or "", run_id)
        elif state in FAILED_STATES:
            self.ledger.record(name, inf.fingerprint, inf.version, "failed", inf.run_id, message)
            self._finish(name, "failed", f"run {inf.run_id} ended {state}: {message or ''}".strip())
        elif state == "PENDING" and self.pooled and self.crash is not None:
            self._check_stuck(name, inf)
        elif self.finished_locally is not None and self.finished_locally(inf.run_id):
            since = self._orphan_since.setdefault(inf.run_id, time.monotonic())
            if time.monotonic() - since > ORPHAN_GRACE_S:
                self._rerun(name, inf, state)

    def _check_stuck(self, name: str, inf: InFlight) -> None:
        since = self._pending_since.setdefault(inf.run_id, time.monotonic())
        if time.monotonic() - since > self.stuck_pending_s and self.crash is not None:
            self._pending_since.pop(inf.run_id, None)
            self.crash(inf.run_id, f"taken by a worker but not started within {self.stuck_pending_s:g} s")
            log.warning("%s: run %s stuck in PENDING; marked crashed", name, inf.run_id)

    def _resubmit(self, name: str, fingerprint: str, version: int, attempt: str, crashes: int = 0) -> str:
        """Submit a folder's run again (same content and report version, a new attempt key) and follow it."""
        run_id = self.submit(self.inbox / name, fingerprint, version, attempt)
        self.ledger.record(name, fingerprint, version, "submitted", run_id)
        self.in_flight[name] = InFlight(fingerprint, version, run_id, crashes)
        return run_id

    def _rerun(self, name: str, inf: InFlight, state: str | None) -> None:
        """A run whose execution ended here without a final state: mark it crashed and run the sample again."""
        self._orphan_since.pop(inf.run_id, None)
        if self.crash is not None:
            self.crash(inf.run_id, f"its execution ended while its state was {state}; the sample is run again")
        run_id = self._resubmit(name, inf.fingerprint, inf.version, f"rerun-{int(time.time())}")
        log.warning("%s: run %s ended without a final state (%s); resubmitted as %s", name, inf.run_id, state, run_id)

    def _take(self, folder: Path) -> None:
        name = folder.name
        fp = fingerprint(folder, self.marker)
        seen = self.ledger.get(name, fp)
        if seen is not None and seen.state == "completed":
            log.info("%s: same content already reported (version %d); not processed again", name, seen.version)
            if self.move_done:
                self._move(folder, "archive", f"{name}.duplicate", None)
            else:
                self.kept[name] = listing(folder)
            self.tracker.forget(name)
            return
        if seen is not None and seen.state == "submitted" and seen.flow_run_id:
            self.in_flight[name] = InFlight(fp, seen.version, seen.flow_run_id)
            return
        version = seen.version if seen is not None else self.ledger.next_version(name)
        run_id = self.submit(folder, fp, version, "")
        self.ledger.record(name, fp, version, "submitted", run_id)
        self.in_flight[name] = InFlight(fp, version, run_id)
        self.tracker.forget(name)  # settled and taken: nothing to wait for while it runs
        log.info("%s: submitted as run %s (report version %d)", name, run_id, version)

    def _finish(self, name: str, where: str, error: str | None) -> None:
        self.in_flight.pop(name, None)
        self.tracker.forget(name)
        folder = self.inbox / name
        if folder.is_dir() and (self.move_done or where == "failed"):
            self._move(folder, where, name, error)
        elif folder.is_dir():
            self.kept[name] = listing(folder)

    def _move(self, folder: Path, where: str, dest_name: str, error: str | None) -> None:
        target_dir = self.inbox / where
        target_dir.mkdir(exist_ok=True)
        dest = _unique(target_dir / dest_name)
        shutil.move(str(folder), str(dest))
        if error:
            (dest.parent / f"{dest.name}.error.txt").write_text(error + "\n", encoding="utf-8")


class ReviewedWatcher:
    """``<inbox>/reviewed/``: each report workbook saved there is verified once it has settled.

    A workbook is taken when its size and modification time have not changed for ``quiet_s`` and no office
    lock file (``.~lock.<name>#`` from LibreOffice, ``~$<name>`` from Excel) says it is still open.  After
    ``handle`` it moves to ``reviewed/done/``, or to ``reviewed/rejected/`` with ``<name>.reason.txt`` -
    it is never deleted and never verified twice.
    """

    def __init__(
        self, folder: Path, handle: Callable[[Path], None], *, quiet_s: float = 1.5, scan_s: float = 1.0
    ) -> None:
        self.folder, self.handle, self.quiet_s, self.scan_s = folder, handle, quiet_s, scan_s
        self._quiet = Quiet()  # name -> (size, mtime_ns) and since when
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="wbc-reviewed", daemon=True)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan_once()
            except Exception:  # one bad file must not stop verification of the others
                log.exception("scan of %s failed", self.folder)
            self._stop.wait(self.scan_s)

    def _open_elsewhere(self, name: str) -> bool:
        return (self.folder / f".~lock.{name}#").exists() or (self.folder / f"~${name}").exists()

    def scan_once(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for p in sorted(self.folder.glob("*.xlsx")):
            name = p.name
            if name.startswith((".", "~$")) or self._open_elsewhere(name):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            since = self._quiet.since(name, (st.st_size, st.st_mtime_ns), now)
            if since is None or now - since < self.quiet_s:
                continue
            self._quiet.forget(name)
            self._take(p)

    def _take(self, path: Path) -> None:
        try:
            self.handle(path)
        except Exception as exc:
            dest = self._move(path, "rejected")
            dest.with_name(dest.name + ".reason.txt").write_text(f"{exc}\n", encoding="utf-8")
            log.warning("%s: not verified: %s", path.name, exc)
            return
        self._move(path, "done")

    def _move(self, path: Path, where: str) -> Path:
        target = self.folder / where
        target.mkdir(exist_ok=True)
        dest = _unique(target / path.name, keep_suffix=True)
        shutil.move(str(path), str(dest))
        return dest
