"""Load and soak of `wbc serve`: 200 folders dropped at once, then periodic drops for N minutes.

    python benchmarks/soak.py [--burst 200] [--minutes 30] [--every 20] [--model M.onnx]

Checks that every folder gets exactly one report (and none twice), and samples the resident memory of
the serve process (its own RSS, and with the Prefect server child) before, after the burst, and during
the soak.  Prints the growth over the soak; the target is < 10 %.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, start_serve

REPO = Path(__file__).resolve().parents[1]
WBC = str(Path(sys.executable).parent / "wbc")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree(pid: int) -> list[int]:
    out = [pid]
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out += tree(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--burst", type=int, default=200)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--every", type=float, default=20)
    ap.add_argument("--cells", type=int, default=10)
    return ap.parse_args()


def _wait_for(reports, n: int, t0: float) -> float:
    """Seconds from ``t0`` until ``n`` reports exist (an hour at most)."""
    while len(reports()) < n:
        if time.monotonic() - t0 > 3600:
            raise SystemExit(f"burst: only {len(reports())} of {n} reports after an hour")
        time.sleep(1)
    return time.monotonic() - t0


def main() -> None:
    args = _parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wbc-soak-"))
    model = args.model
    if model is None:
        from classify import random_resnet50

        model = random_resnet50(128, tmp, False, REPO / "tests" / "fixtures" / "cells")[0]
    files = sorted((REPO / "tests" / "fixtures" / "cells").rglob("*.jpg"))
    proc, _port = start_serve(tmp, model, "--quiet-seconds", "1", "--scan-seconds", "0.5")
    n_dropped = 0

    def drop(name: str, stage: Path) -> None:
        nonlocal n_dropped
        d = stage / name
        d.mkdir(parents=True)
        for i in range(args.cells):
            shutil.copy(files[(n_dropped + i) % len(files)], d / f"c{i}.jpg")
        (d / "READY").touch()
        n_dropped += 1

    def reports() -> list[str]:
        return sorted(p.name for p in (tmp / "out").glob("*.json") if not p.name.endswith(".fhir.json"))

    try:
        base = rss_mib(proc.pid)
        stage = tmp / "stage"
        for i in range(args.burst):
            drop(f"L{i:04d}", stage)
        t0 = time.monotonic()
        for d in sorted(stage.iterdir()):
            d.rename(tmp / "inbox" / d.name)
        burst_s = _wait_for(reports, args.burst, t0)
        after_burst = rss_mib(proc.pid)
        print(
            f"burst: {args.burst} folders -> {len(reports())} reports in {burst_s:.0f} s; "
            f"serve RSS {base:.0f} -> {after_burst:.0f} MiB",
            flush=True,
        )
        samples = []
        end = time.monotonic() + args.minutes * 60
        k = 0
        while time.monotonic() < end:
            drop(f"S{k:04d}", stage)
            (stage / f"S{k:04d}").rename(tmp / "inbox" / f"S{k:04d}")
            k += 1
            time.sleep(args.every)
            samples.append(rss_mib(proc.pid))
        time.sleep(10)
        total = args.burst + k
        got = reports()
        dupes = [r for r in got if ".v" in r]
        first = statistics.median(samples[: max(1, len(samples) // 10)])
        last = statistics.median(samples[-max(1, len(samples) // 10) :])
        print(f"machine: {machine()}")
        print(
            f"soak: {args.minutes:g} min, {k} drops every {args.every:g} s; reports {len(got)} of {total}, "
            f"second versions {len(dupes)}; serve RSS {first:.0f} -> {last:.0f} MiB "
            f"({100 * (last - first) / first:+.1f} %); tree RSS now {sum(rss_mib(p) for p in tree(proc.pid)):.0f} MiB"
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


if __name__ == "__main__":
    main()
