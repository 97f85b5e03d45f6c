"""Scale-out throughput: folders per minute with 1 and 2 workers on PostgreSQL, queue latency, and the
Prefect server's own overhead per run.

    python benchmarks/scale_out.py --data ../shared/data/pbc --folders 20 --cells 20 --workers 1 2

For each worker count a fresh cluster is started as `tests/test_scale_out.py` runs it (tests/cluster.py:
PostgreSQL, a Prefect server on it, `wbc serve --pool`, N `wbc worker --limit 1` process trees with their
own homes), then ``--folders`` sample folders of ``--cells`` images each (drawn from ``--data``, a root of
class folders or any folder of images) are dropped at once.  Printed: the time from the drop to the last
report and folders/min; per run, from the API, the queue latency (created -> flow started: watcher,
server, worker poll and flow-process start-up) and the server's overhead (the flow run's own time minus
the time its tasks ran: state round trips, result and log traffic).  On a 2-core machine a second worker
competes with the first for the same cores: this shows the coordination works and what it costs, not the
gain on two machines.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _machine import machine
from cluster import Cluster, drop, reports, wait

from wbcproc.discovery import IMAGE_EXTENSIONS

HERE = Path(__file__).resolve().parent


def _t(s: str | None) -> float | None:
    return None if s is None else datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def run(n_workers: int, images: list[Path], folders: int, cells: int, model: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="wbc-scale-") as tmp:
        c = Cluster(Path(tmp), model, pool=f"bench-{n_workers}")
        try:
            c.start_server()
            c.start_watcher()
            for i in range(n_workers):
                c.start_worker(f"w{i + 1}")
            time.sleep(3)  # workers polling
            names = [f"B{i:03d}" for i in range(folders)]
            t0 = time.time()
            drop(c, images, names, n_images=cells)
            ok = wait(lambda: len(reports(c, "B")) == folders, 1800, step=0.2)
            wall = time.time() - t0
            if not ok:
                raise RuntimeError(f"only {len(reports(c, 'B'))} of {folders} reports; see {tmp}")
            runs = c.post("/flow_runs/filter", {"flow_runs": {"name": {"any_": names}}})
            queue, overhead, flow_s = [], [], []
            for r in runs:
                tasks = c.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [r["id"]]}}})
                task_s = sum(t["total_run_time"] for t in tasks)
                start = _t(r["start_time"])
                created = _t(r["created"])
                if start and created:
                    queue.append(start - created)
                flow_s.append(r["total_run_time"])
                overhead.append(r["total_run_time"] - task_s)
            return {
                "workers": n_workers,
                "wall_s": wall,
                "folders_per_min": 60 * folders / wall,
                "queue_p50": statistics.median(queue),
                "queue_max": max(queue),
                "flow_p50": statistics.median(flow_s),
                "overhead_p50": statistics.median(overhead),
                "taken": c.runs_taken(),
            }
        finally:
            c.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE.parent / "tests" / "fixtures" / "cells")
    ap.add_argument("--model", type=Path, default=HERE.parent / "models" / "model.onnx")
    ap.add_argument("--folders", type=int, default=20)
    ap.add_argument("--cells", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    pool = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    random.Random(args.seed).shuffle(pool)
    images = pool[: args.folders * args.cells]
    print(machine())
    print(
        f"model {args.model}; {args.folders} folders x {args.cells} cells from {args.data}; PostgreSQL + Prefect server"
    )
    print(
        "| workers | drop -> last report | folders/min | queue latency p50 / max | flow run p50 | server overhead p50 | runs per worker |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in args.workers:
        r = run(n, images, args.folders, args.cells, args.model)
        print(
            f"| {n} | {r['wall_s']:.1f} s | {r['folders_per_min']:.1f} | {r['queue_p50']:.2f} / {r['queue_max']:.2f} s "
            f"| {r['flow_p50']:.2f} s | {r['overhead_p50']:.2f} s | {r['taken']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
