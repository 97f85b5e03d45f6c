"""A scale-out cluster on one machine, for tests and benchmarks: PostgreSQL, a Prefect server on it, the
watcher (`wbc serve --pool`) and workers (`wbc worker`) - each its own process group with its own home,
sharing only the inbox/report folders and the server's URL, as separate machines with a network share would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from pg import Postgres
from procs import free_port, stop, wait_until

BIN = Path(sys.executable).parent


def wait(pred, timeout: float, step: float = 0.5) -> bool:
    """:func:`procs.wait_until`, an OSError (a server restarting) counting as "not yet"."""
    return wait_until(pred, timeout, step, retry_on=(OSError,))


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "WBC_"))}


class Cluster:
    """PostgreSQL, a Prefect server on it, the watcher (`wbc serve --pool`) and workers: each its own
    process group, each with its own home, sharing only the inbox/out folders and the server's URL."""

    def __init__(self, root: Path, model: Path, pool: str = "wbc-pg") -> None:
        self.pool = pool
        self.root, self.model = root, model
        self.inbox, self.out = root / "share" / "inbox", root / "share" / "reports"
        self.pg = Postgres().init().start()
        self.pg.create_db()
        self.port = free_port()
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
        assert wait(self.healthy, 120), self.log("server")[-3000:]

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
        cmd = [str(BIN / "wbc"), "serve", "--inbox", str(self.inbox), "--out", str(self.out), "--pool", self.pool,
               "--quiet-seconds", "1", "--scan-seconds", "0.5"]  # fmt: skip
        self.watcher = self._spawn("watcher", cmd, self.client_env("watcher-home"))
        assert wait(lambda: "wbc serve: UI" in self.log("watcher"), 120), self.log("watcher")[-3000:]

    def start_worker(self, name: str) -> None:
        cmd = [str(BIN / "wbc"), "worker", "--pool", self.pool, "--name", name, "--limit", "1", "--poll-seconds", "0.5"]
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
            if p is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):  # a straggler is killed, not reported
                    stop(p, 30, group_signal=True)
        self.pg.cleanup()


def drop(c: Cluster, images: list[Path], names: list[str], n_images: int = 3) -> None:
    """Folders built beside the inbox, then renamed into it at once (as a scanner's batch arrives)."""
    stage = c.root / "stage"
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


def reports(c: Cluster, prefix: str) -> list[str]:
    """Preliminary JSON reports of the folders named ``prefix*`` (each sample's completeness marker)."""
    return sorted(p.name for p in c.out.glob(f"{prefix}*.json") if ".fhir" not in p.name and ".final" not in p.name)
