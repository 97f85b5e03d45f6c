"""Scale-out for real: PostgreSQL behind a Prefect server, `wbc serve --pool` and two `wbc worker`s as
separate process trees with separate WBC_HOMEs (as on separate machines), the inbox and report folders
shared - and real faults: a worker killed with SIGKILL mid-sample, the Prefect server restarted
mid-batch, PostgreSQL restarted.  Every sample must get exactly one complete report.

Skipped, with the reason, only where PostgreSQL is not installed (Debian: ``postgresql``; `.ci/run`
installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from cluster import Cluster, drop, reports, wait
from helpers import fixture_images
from pg import pg_bin

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(pg_bin() is None, reason="PostgreSQL is not installed (Debian package postgresql)"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_model):
    c = Cluster(tmp_path_factory.mktemp("scale"), tiny_model)
    try:
        c.start_server()
        c.start_watcher()
        c.start_worker("w1")
        c.start_worker("w2")
        yield c
    finally:
        c.stop()


def _exactly_once(c: Cluster, names: list[str]) -> None:
    assert reports(c, names[0][0]) == sorted(f"{n}.json" for n in names)  # no .v2: nothing reported twice
    for n in names:
        r = json.loads((c.out / f"{n}.json").read_text())
        assert r["sample_id"] == n and r["cells_classified"] > 0
    leftovers = [p.name for p in c.out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []  # no half-written file anywhere
    assert wait(lambda: all((c.inbox / "archive" / n).is_dir() for n in names), 60)


def test_30_folders_at_once_each_reported_exactly_once_by_both_workers(cluster):
    names = [f"A{i:02d}" for i in range(30)]
    drop(cluster, fixture_images(), names)
    assert wait(lambda: len(reports(cluster, "A")) == 30, 600), (
        reports(cluster, "A"), cluster.log("watcher")[-2000:])  # fmt: skip
    _exactly_once(cluster, names)
    taken = cluster.runs_taken()
    assert all(v > 0 for v in taken.values()) and sum(taken.values()) >= 30, taken
    runs = cluster.post("/flow_runs/filter", {"flow_runs": {"name": {"any_": names}}})
    assert sorted(r["name"] for r in runs) == names and {r["state_type"] for r in runs} == {"COMPLETED"}


def test_postgres_restart_the_service_recovers_without_a_person(cluster):
    """The database goes away while workers run samples: a flow-run process that cannot report dies
    before it starts (its run left PENDING, no heartbeat yet) or crashes; the watcher marks a run stuck in
    PENDING as crashed after 120 s and reruns every crashed one."""
    names = [f"P{i:02d}" for i in range(6)]
    before = cluster.runs_taken()
    drop(cluster, fixture_images(), names[:3], n_images=40)
    assert wait(lambda: cluster.runs_taken() != before, 60)
    cluster.pg.restart(down_s=5)  # the database goes away mid-batch and comes back
    drop(cluster, fixture_images(), names[3:])
    assert wait(lambda: len(reports(cluster, "P")) == 6, 300), (
        reports(cluster, "P"), cluster.log("watcher")[-3000:])  # fmt: skip
    _exactly_once(cluster, names)
    assert cluster.healthy()


def test_prefect_server_restart_mid_batch_loses_nothing(cluster):
    names = [f"S{i:02d}" for i in range(8)]
    drop(cluster, fixture_images(), names)
    time.sleep(2)
    os.killpg(cluster.server.pid, signal.SIGTERM)
    cluster.server.wait(60)
    time.sleep(3)
    cluster.start_server()  # same port, same PostgreSQL database
    assert wait(lambda: len(reports(cluster, "S")) == 8, 400), (
        reports(cluster, "S"), cluster.log("watcher")[-3000:])  # fmt: skip
    _exactly_once(cluster, names)


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    kids = [int(k) for k in out]
    return kids + [d for k in kids for d in _descendants(k)]


def _kill_tree(pid: int) -> None:
    """The machine dies: the worker and every process under it (the flow run's own process too, whatever
    its session) are frozen, then killed - none gets to report anything."""
    tree = [pid, *_descendants(pid)]
    for p in tree:
        os.kill(p, signal.SIGSTOP)
    for p in tree:
        os.kill(p, signal.SIGKILL)


def test_worker_killed_mid_sample_the_sample_still_gets_one_report(cluster):
    """SIGKILL to a worker's whole process tree (its machine died) while it runs a sample: the run stays
    RUNNING and stops sending heartbeats, the zombie automation marks it CRASHED after three missed ones
    (90 s), the watcher resubmits it and the other worker writes the one report."""
    big = fixture_images()
    name = "K01"
    stage = cluster.root / "stage" / name
    stage.mkdir(parents=True)
    n_cells = 1200  # long enough to be caught in the middle (400 cells can finish within a polling step)
    for i in range(n_cells):
        shutil.copy(big[i % len(big)], stage / f"c{i:04d}.jpg")
    (stage / "READY").touch()
    before = cluster.runs_taken()
    stage.rename(cluster.inbox / name)
    assert wait(lambda: cluster.runs_taken() != before, 60)
    victim = next(n for n in cluster.workers if cluster.runs_taken()[n] > before[n])

    def running() -> bool:
        runs = cluster.post("/flow_runs/filter", {"flow_runs": {"name": {"any_": [name]}}})
        return bool(runs) and runs[0]["state_type"] == "RUNNING"

    assert wait(running, 60)  # the flow itself has started (a run killed while PENDING: see the PG test)
    time.sleep(1.0)
    assert not (cluster.out / f"{name}.json").exists(), "finished before it could be killed"
    _kill_tree(cluster.workers[victim].pid)
    assert wait(lambda: (cluster.out / f"{name}.json").exists(), 400), cluster.log("watcher")[-3000:]
    _exactly_once(cluster, [name])
    assert json.loads((cluster.out / f"{name}.json").read_text())["cells_classified"] == n_cells
    runs = cluster.post("/flow_runs/filter", {"flow_runs": {"name": {"any_": [name]}}})
    assert sorted(r["state_type"] for r in runs) == ["COMPLETED", "CRASHED"]
    assert "no heartbeat for 90 s" in cluster.log("watcher")  # the automation, not the process, said so
    cluster.start_worker(victim)  # the machine comes back for later tests
