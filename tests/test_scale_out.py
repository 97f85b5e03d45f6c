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
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import fixture_images
from pg import Postgres, pg_bin

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(pg_bin() is None, reason="PostgreSQL is not installed (Debian package postgresql)"),
]
BIN = Path(sys.executable).parent
POOL = "wbc-pg"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout: float, step: float = 0.5) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return True
        except OSError:
            pass
        time.sleep(step)
    return pred()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "WBC_"))}


class Cluster:
    """PostgreSQL, a Prefect server on it, the watcher (`wbc serve --pool`) and workers: each its own
    process group, each with its own home, sharing only the inbox/out folders and the server's URL."""

    def __init__(self, root: Path, model: Path) -> None:
        self.root, self.model = root, model
        self.inbox, self.out = root / "share" / "inbox", root / "share" / "reports"
        self.pg = Postgres().init().start()
        self.pg.create_db()
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.server: subprocess.Popen | None = None
        self.watcher: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "a")  # noqa: SIM115 - the child keeps it
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self, name: str) -> str:
        p = self.root / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def start_server(self) -> None:
        env = _clean_env() | {
            "PREFECT_HOME": str(self.root / "server-home"),
            "PREFECT_API_DATABASE_CONNECTION_URL": self.pg.url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        self.server = self._spawn("server", cmd, env)
        assert _wait(self.healthy, 120), self.log("server")[-3000:]

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def client_env(self, home: str) -> dict[str, str]:
        return _clean_env() | {
            "PREFECT_API_URL": self.api,
            "PREFECT_HOME": str(self.root / home / "prefect"),
            "WBC_HOME": str(self.root / home),
            "WBC_MODEL": str(self.model),
        }

    def start_watcher(self) -> None:
        cmd = [str(BIN / "wbc"), "serve", "--inbox", str(self.inbox), "--out", str(self.out), "--pool", POOL,
               "--quiet-seconds", "1", "--scan-seconds", "0.5"]  # fmt: skip
        self.watcher = self._spawn("watcher", cmd, self.client_env("watcher-home"))
        assert _wait(lambda: "wbc serve: UI" in self.log("watcher"), 120), self.log("watcher")[-3000:]

    def start_worker(self, name: str) -> None:
        cmd = [str(BIN / "wbc"), "worker", "--pool", POOL, "--name", name, "--limit", "1", "--poll-seconds", "0.5"]
        self.workers[name] = self._spawn(name, cmd, self.client_env(f"{name}-home"))

    def runs_taken(self) -> dict[str, int]:
        return {n: self.log(n).count("submitted to infrastructure") for n in self.workers}

    def post(self, path: str, body: dict) -> list:
        req = urllib.request.Request(
            f"{self.api}{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        for p in [*self.workers.values(), self.watcher, self.server]:
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in [*self.workers.values(), self.watcher, self.server]:
            if p is None:
                continue
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        self.pg.cleanup()


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


def _drop(c: Cluster, names: list[str], n_images: int = 3) -> None:
    """Folders built beside the inbox, then renamed into it at once (as a scanner's batch arrives)."""
    stage = c.root / "stage"
    images = fixture_images()
    for i, name in enumerate(names):
        d = stage / name
        d.mkdir(parents=True)
        for k in range(n_images):
            p = images[(i + k) % len(images)]
            shutil.copy(p, d / f"{k:03d}_{p.name}")
        (d / "READY").touch()
    c.inbox.mkdir(parents=True, exist_ok=True)
    for name in names:
        (stage / name).rename(c.inbox / name)


def _reports(c: Cluster, prefix: str) -> list[str]:
    """Preliminary JSON reports of the folders named ``prefix*`` (each sample's completeness marker)."""
    return sorted(p.name for p in c.out.glob(f"{prefix}*.json") if ".fhir" not in p.name and ".final" not in p.name)


def _exactly_once(c: Cluster, names: list[str]) -> None:
    assert _reports(c, names[0][0]) == sorted(f"{n}.json" for n in names)  # no .v2: nothing reported twice
    for n in names:
        r = json.loads((c.out / f"{n}.json").read_text())
        assert r["sample_id"] == n and r["cells_classified"] > 0
    leftovers = [p.name for p in c.out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []  # no half-written file anywhere
    assert _wait(lambda: all((c.inbox / "archive" / n).is_dir() for n in names), 60)


def test_30_folders_at_once_each_reported_exactly_once_by_both_workers(cluster):
    names = [f"A{i:02d}" for i in range(30)]
    _drop(cluster, names)
    assert _wait(lambda: len(_reports(cluster, "A")) == 30, 600), (
        _reports(cluster, "A"), cluster.log("watcher")[-2000:])  # fmt: skip
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
    _drop(cluster, names[:3], n_images=40)
    assert _wait(lambda: cluster.runs_taken() != before, 60)
    cluster.pg.restart(down_s=5)  # the database goes away mid-batch and comes back
    _drop(cluster, names[3:])
    assert _wait(lambda: len(_reports(cluster, "P")) == 6, 300), (
        _reports(cluster, "P"), cluster.log("watcher")[-3000:])  # fmt: skip
    _exactly_once(cluster, names)
    assert cluster.healthy()


def test_prefect_server_restart_mid_batch_loses_nothing(cluster):
    names = [f"S{i:02d}" for i in range(8)]
    _drop(cluster, names)
    time.sleep(2)
    os.killpg(cluster.server.pid, signal.SIGTERM)
    cluster.server.wait(60)
    time.sleep(3)
    cluster.start_server()  # same port, same PostgreSQL database
    assert _wait(lambda: len(_reports(cluster, "S")) == 8, 400), (
        _reports(cluster, "S"), cluster.log("watcher")[-3000:])  # fmt: skip
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
    for i in range(400):  # long enough to be caught in the middle
        shutil.copy(big[i % len(big)], stage / f"c{i:03d}.jpg")
    (stage / "READY").touch()
    before = cluster.runs_taken()
    stage.rename(cluster.inbox / name)
    assert _wait(lambda: cluster.runs_taken() != before, 60)
    victim = next(n for n in cluster.workers if cluster.runs_taken()[n] > before[n])

    def running() -> bool:
        runs = cluster.post("/flow_runs/filter", {"flow_runs": {"name": {"any_": [name]}}})
        return bool(runs) and runs[0]["state_type"] == "RUNNING"

    assert _wait(running, 60)  # the flow itself has started (a run killed while PENDING: see the PG test)
    time.sleep(1.0)
    assert not (cluster.out / f"{name}.json").exists(), "finished before it could be killed"
    _kill_tree(cluster.workers[victim].pid)
    assert _wait(lambda: (cluster.out / f"{name}.json").exists(), 400), cluster.log("watcher")[-3000:]
    _exactly_once(cluster, [name])
    assert json.loads((cluster.out / f"{name}.json").read_text())["cells_classified"] == 400
    runs = cluster.post("/flow_runs/filter", {"flow_runs": {"name": {"any_": [name]}}})
    assert sorted(r["state_type"] for r in runs) == ["COMPLETED", "CRASHED"]
    assert "no heartbeat for 90 s" in cluster.log("watcher")  # the automation, not the process, said so
    cluster.start_worker(victim)  # the machine comes back for later tests
