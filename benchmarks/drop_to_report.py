"""Seconds from the last file of a sample written into the inbox to its report present, with `wbc serve`.

    python benchmarks/drop_to_report.py [--model M.onnx | --random-resnet50 128] [--cells 100] [--trials 5]
                                        [--quiet-seconds 2] [--marker] [--breakdown]

Starts `wbc serve` (embedded server, runner, watcher) on a free port with a fresh home, copies a
``--cells`` folder into the inbox one file at a time, and times last-file -> ``<id>.json``.  With
``--marker`` a READY file is written after the images (no quiet period to wait).  Prints p50/p95 and
checks that the served report equals `wbc process` on the same folder (all fields but times/versions).
``--breakdown`` then reads each run from the Prefect API: where the seconds go (settling, scheduling, each
task, the report file) - the served run against the pipeline it wraps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, start_serve

REPO = Path(__file__).resolve().parents[1]
WBC = str(Path(sys.executable).parent / "wbc")
VOLATILE = {"processed_at", "report_version", "report_id"}  # report_id: a fresh uuid per report


def _comparable(path: Path) -> dict:
    d = json.loads(path.read_text())
    return {k: v for k, v in d.items() if k not in VOLATILE}


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--random-resnet50", type=int, metavar="SIZE")
    ap.add_argument("--images", type=Path, default=REPO / "tests" / "fixtures" / "cells")
    ap.add_argument("--cells", type=int, default=100)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--quiet-seconds", type=float, default=2.0)
    ap.add_argument("--marker", action="store_true")
    ap.add_argument(
        "--defaults",
        action="store_true",
        help="run wbc serve with its default quiet and scan periods (ignores --quiet-seconds)",
    )
    ap.add_argument("--breakdown", action="store_true", help="per run: settle, scheduling, tasks (Prefect API)")
    ap.add_argument(
        "--slow",
        type=float,
        default=0.0,
        metavar="S",
        help="copy one file every S seconds (a slow scanner): never taken early?",
    )
    return ap.parse_args()


def _same_as_process(tmp: Path, model: Path) -> bool:
    """The first served report against `wbc process` on the same folder (all fields but times/versions)."""
    ref_out = tmp / "ref"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    r = subprocess.run(
        [WBC, "process", str(tmp / "inbox" / "D2R-0"), "--out", str(ref_out), "--model", str(model)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
    )
    if not (ref_out / "D2R-0.json").exists():
        raise SystemExit(f"wbc process failed: {r.stderr}")
    served = _comparable(tmp / "out" / "D2R-0.json")
    direct = _comparable(ref_out / "D2R-0.json")
    served["config"].pop("source", None)
    direct["config"].pop("source", None)
    return served == direct


async def _breakdown(drops: dict[str, tuple[float, float]]) -> None:
    """Each served run's phases, in seconds after the last file was written (server timestamps)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = [r for r in await client.read_flow_runs() if r.name in drops and r.start_time is not None]
        for r in sorted(runs, key=lambda r: r.created):
            drop, report = drops[r.name]
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id])))
            parts = [
                f"{t.name.rsplit('-', 1)[0]} {(t.end_time - t.start_time).total_seconds():.2f}"
                for t in sorted(tasks, key=lambda t: t.start_time)
                if t.start_time and t.end_time
            ]
            print(
                f"{r.name}: settled (run created) {r.created.timestamp() - drop:.2f} s, running "
                f"{r.start_time.timestamp() - drop:.2f}, report file {report - drop:.2f}, run completed "
                f"{r.end_time.timestamp() - drop:.2f}; flow {r.total_run_time.total_seconds():.2f} s = tasks "
                f"[{', '.join(parts)}] + Prefect state changes"
            )


def main() -> None:
    args = _parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wbc-d2r-"))
    model = args.model
    if model is None:
        from classify import random_resnet50

        model = random_resnet50(args.random_resnet50 or 128, tmp, False, args.images)[0]
    files = sorted(p for p in args.images.rglob("*.jpg"))
    timing = () if args.defaults else ("--quiet-seconds", str(args.quiet_seconds), "--scan-seconds", "0.25")
    proc, _port = start_serve(tmp, model, *timing, "--keep")
    try:
        lat, drops = [], {}
        for t in range(args.trials):
            folder = tmp / "inbox" / f"D2R-{t}"
            folder.mkdir(parents=True)
            for i in range(args.cells):
                shutil.copy(files[i % len(files)], folder / f"c{i:04d}.jpg")
                if args.slow:
                    time.sleep(args.slow)
            if args.marker:
                (folder / "READY").touch()
            t0 = time.monotonic()
            drops[f"D2R-{t}"] = time.time()
            report = tmp / "out" / f"D2R-{t}.json"
            while not report.exists():
                if time.monotonic() - t0 > 300:
                    raise SystemExit(f"no report after 300 s; log: {(tmp / 'serve.log').read_text()[-2000:]}")
                time.sleep(0.05)
            lat.append(time.monotonic() - t0)
            drops[f"D2R-{t}"] = (drops[f"D2R-{t}"], time.time())
            counted = json.loads(report.read_text())["cells_classified"]  # written atomically: complete
            early = counted != args.cells
            print(
                f"trial {t + 1}: {lat[-1]:.2f} s, {counted} of {args.cells} cells" + (" TAKEN EARLY" if early else ""),
                flush=True,
            )
        same = _same_as_process(tmp, model)
        if args.breakdown:
            import asyncio

            os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{_port}/api"
            asyncio.run(_breakdown(drops))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    lat.sort()
    p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
    print(f"machine: {machine()}")
    print(
        f"{args.cells} cells, {args.trials} trials, "
        f"{'READY marker' if args.marker else 'defaults' if args.defaults else f'quiet {args.quiet_seconds:g} s'}"
        f"{f', one file every {args.slow:g} s' if args.slow else ''}: "
        f"p50 {statistics.median(lat):.2f} s, p95 {p95:.2f} s; report identical to `wbc process`: {same}"
    )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
