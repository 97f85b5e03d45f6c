"""Disk full and read-only output: a clear error, nothing half-written under a final name.

Uses a small tmpfs mounted by the test (needs root and mount permission; CI runs as root)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import copy_cells

WBC = str(Path(sys.executable).parent / "wbc")


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _process(sample: Path, out: Path, model: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [WBC, "process", str(sample), "--out", str(out), "--model", str(model)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _finals(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_disk_full(tmp_path, small_fs, tiny_model):
    sample = tmp_path / "FULL-1"
    copy_cells(sample)
    (small_fs / "filler").write_bytes(b"\0" * (200 * 1024))  # leaves ~56 KiB: less than the workbook needs
    r = _process(sample, small_fs, tiny_model)
    assert r.returncode == 1
    assert "No space left on device" in r.stderr
    assert _finals(small_fs) == ["filler"]  # no report, complete or partial, under a final name
    assert [p.name for p in small_fs.iterdir() if p.name.endswith(".tmp")] == []


def test_read_only_output(tmp_path, small_fs, tiny_model):
    sample = tmp_path / "RO-1"
    copy_cells(sample, 4)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    r = _process(sample, small_fs, tiny_model)
    assert r.returncode == 1
    assert "Read-only file system" in r.stderr
    assert os.listdir(small_fs) == []
