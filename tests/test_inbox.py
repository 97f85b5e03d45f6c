"""Settle rule and ledger (fast, no server)."""

from __future__ import annotations

import shutil

import pytest
from helpers import copy_cells, fixture_images

from wbcproc.inbox import Ledger, SettleTracker, fingerprint, is_temporary_name


def test_settles_only_after_quiet_and_two_equal_scans(tmp_path):
    folder = tmp_path / "S"
    copy_cells(folder, 3)
    t = SettleTracker(quiet_s=5)
    assert not t.check(folder, now=0)  # first scan: nothing to compare with
    assert not t.check(folder, now=3)  # same listing, but not quiet long enough
    assert t.check(folder, now=5.1)
    shutil.copy(fixture_images()[5], folder / "late.jpg")  # a file arrives: clock restarts
    assert not t.check(folder, now=6)
    assert not t.check(folder, now=10)
    assert t.check(folder, now=11.1)
    t.touch("S", now=12)  # a file-system event (e.g. a size change within the same second)
    assert not t.check(folder, now=15)
    assert t.check(folder, now=17.1)


def test_growing_file_is_not_settled(tmp_path):
    folder = tmp_path / "S"
    folder.mkdir()
    f = folder / "a.jpg"
    t = SettleTracker(quiet_s=1)
    for i in range(5):
        f.write_bytes(b"x" * (i + 1) * 1000)
        assert not t.check(folder, now=i * 2.0)


def test_marker_settles_at_once_and_empty_never(tmp_path):
    folder = tmp_path / "S"
    folder.mkdir()
    t = SettleTracker(quiet_s=100)
    assert not t.check(folder, now=0) and not t.check(folder, now=500)  # empty folder
    copy_cells(folder, 2)
    (folder / "READY").touch()
    assert t.check(folder, now=501)


def test_fingerprint_ignores_marker_and_os_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    copy_cells(a, 3)
    copy_cells(b, 3)
    (b / "READY").touch()
    (b / ".DS_Store").write_bytes(b"junk")
    assert fingerprint(a) == fingerprint(b)
    (b / extra_name()).write_bytes(b"1")
    assert fingerprint(a) != fingerprint(b)


def extra_name() -> str:
    return "extra.jpg"


def test_ledger_versions_and_restart(tmp_path):
    db = tmp_path / "ledger.sqlite"
    led = Ledger(db)
    assert led.next_version("S") == 1
    led.record("S", "fp1", 1, "submitted", "run-1")
    led.record("S", "fp1", 1, "completed")
    assert led.get("S", "fp1").state == "completed" and led.get("S", "fp1").flow_run_id == "run-1"
    assert led.next_version("S") == 2
    led.record("S", "fp2", 2, "submitted", "run-2")
    led.close()
    again = Ledger(db)  # survives a restart
    assert [(e.folder, e.version) for e in again.pending()] == [("S", 2)]


def _watcher(tmp_path, **kw):
    """The watcher's decisions with the Prefect boundary replaced by a record of submitted runs (the real
    deployment path is tested end to end in test_serve.py)."""
    from flows.watcher import InboxWatcher

    runs: dict[str, str] = {}

    def submit(folder, fp, version, attempt):
        runs[f"run-{len(runs)}"] = f"{folder.name}:v{version}"
        return f"run-{len(runs) - 1}"

    w = InboxWatcher(
        tmp_path / "inbox", Ledger(tmp_path / "l.sqlite"), submit, lambda rid: ("COMPLETED", None), quiet_s=0, **kw
    )
    (tmp_path / "inbox").mkdir()
    return w, runs


def test_kept_folders_are_not_taken_for_duplicates(tmp_path):
    w, runs = _watcher(tmp_path, move_done=False)
    copy_cells(tmp_path / "inbox" / "K", 3)
    for _ in range(6):
        w.scan_once()
    assert list(runs.values()) == ["K:v1"]
    assert (tmp_path / "inbox" / "K").is_dir() and not (tmp_path / "inbox" / "archive").exists()
    shutil.copy(fixture_images()[10], tmp_path / "inbox" / "K" / "more.jpg")  # changed in place: new version
    for _ in range(4):
        w.scan_once()
    assert list(runs.values()) == ["K:v1", "K:v2"]


def test_done_folders_are_archived_and_duplicates_recognised(tmp_path):
    w, runs = _watcher(tmp_path)
    copy_cells(tmp_path / "inbox" / "A", 3)
    for _ in range(4):
        w.scan_once()
    assert (tmp_path / "inbox" / "archive" / "A").is_dir()
    copy_cells(tmp_path / "inbox" / "A", 3)
    for _ in range(4):
        w.scan_once()
    assert list(runs.values()) == ["A:v1"]
    assert (tmp_path / "inbox" / "archive" / "A.duplicate").is_dir()


def test_a_copy_in_one_go_settles_fast_where_the_os_reports_closes(tmp_path):
    """inotify: every file written was closed, no temporary name -> 1.2 s quiet instead of 5 s."""
    folder = tmp_path / "S1"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    t = SettleTracker(quiet_s=5, events_reliable=True)
    t.opened("S1", "S1/a.jpg", now=0.0)
    t.closed("S1", "S1/a.jpg", now=0.1)
    assert not t.check(folder, now=0.2)  # first look at this listing
    assert t.due_in(now=0.2) == pytest.approx(1.2)  # quiet counts from the later of last event and first look
    assert not t.check(folder, now=1.2)
    assert t.check(folder, now=1.4)


def test_an_open_file_or_a_temporary_name_needs_the_long_quiet(tmp_path):
    folder = tmp_path / "S2"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    t = SettleTracker(quiet_s=5, events_reliable=True)
    t.opened("S2", "S2/a.jpg", now=0.0)  # still open for writing
    t.check(folder, now=0.0)
    assert not t.check(folder, now=2.0) and t.check(folder, now=5.1)
    (folder / ".b.jpg.Xy12Ab").write_bytes(b"partial")  # rsync's temporary name
    t2 = SettleTracker(quiet_s=5, events_reliable=True)
    t2.check(folder, now=0.0)
    assert not t2.check(folder, now=2.0) and t2.check(folder, now=5.1)
    assert is_temporary_name(".b.jpg.Xy12Ab") and is_temporary_name("c.jpg.part") and not is_temporary_name("c.jpg")


def test_without_reliable_events_the_long_quiet_applies(tmp_path):
    folder = tmp_path / "S3"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    t = SettleTracker(quiet_s=5)  # polling / no open-close events
    t.check(folder, now=0.0)
    assert not t.check(folder, now=2.0) and t.check(folder, now=5.0)
