"""``wbc serve`` end to end: a real Prefect server, a real watchdog observer on a temp inbox."""

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
from helpers import copy_cells, fixture_images

WBC = str(Path(sys.executable).parent / "wbc")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout: float, step: float = 0.25) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


class Serve:
    def __init__(self, root: Path, model: Path) -> None:
        self.root = root
        self.inbox, self.out, self.home = root / "inbox", root / "out", root / "home"
        self.port = _free_port()
        self.model = model
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(WBC_HOME=str(self.home), PREFECT_HOME=str(self.root / "prefect"), WBC_MODEL=str(self.model))
        self.log = open(self.root / f"serve-{time.time():.0f}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [WBC, "serve", "--inbox", str(self.inbox), "--out", str(self.out), "--port", str(self.port),
             "--quiet-seconds", "2", "--scan-seconds", "0.5", "--retrain-cron", "0 4 * * 1"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        assert _wait(lambda: "wbc serve: UI" in self.text(), 150), self.text()[-3000:]

    def text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("serve-*.log")))

    def api(self, path: str, body: dict | None = None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/api{path}",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST" if body is not None else "GET")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> float:
        t0 = time.monotonic()
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(60)
        return time.monotonic() - t0


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    s = Serve(tmp_path_factory.mktemp("serve"), tiny_model)
    s.start()
    yield s
    if s.proc and s.proc.poll() is None:
        s.stop()


def test_slow_copy_is_never_processed_early(served):
    src = fixture_images()[:8]
    dest = served.inbox / "SLOW-1"
    dest.mkdir()
    for p in src:  # one file every 0.8 s: never 2 s quiet until the copy ends
        shutil.copy(p, dest / p.name)
        time.sleep(0.8)
        assert not (served.out / "SLOW-1.json").exists(), "processed on a partial set"
    assert _wait(lambda: (served.out / "SLOW-1.json").exists(), 60), served.text()[-3000:]
    r = json.loads((served.out / "SLOW-1.json").read_text())
    assert r["cells_classified"] == 8
    assert _wait(lambda: (served.inbox / "archive" / "SLOW-1").is_dir(), 20)


def test_marker_file_and_ui_run(served):
    dest = served.inbox / "MARK-1"
    copy_cells(dest, 5)
    (dest / "READY").touch()
    assert _wait(lambda: (served.out / "MARK-1.json").exists(), 60)
    runs = served.api("/flow_runs/filter", {"flow_runs": {"name": {"any_": ["MARK-1"]}}})
    assert _wait(lambda: served.api("/flow_runs/filter", {"flow_runs": {"name": {"any_": ["MARK-1"]}}})[0]["state_type"]
                 == "COMPLETED", 30)
    assert runs and runs[0]["name"] == "MARK-1"
    arts = served.api("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [runs[0]["id"]]}}})
    assert {a["type"] for a in arts} == {"table", "markdown"}


def test_duplicate_and_changed_redrop(served):
    first = served.inbox / "DUP-1"
    copy_cells(first, 4)
    assert _wait(lambda: (served.out / "DUP-1.json").exists() and (served.inbox / "archive" / "DUP-1").is_dir(), 60)
    again = served.inbox / "DUP-1"
    copy_cells(again, 4)  # the same content again
    assert _wait(lambda: (served.inbox / "archive" / "DUP-1.duplicate").is_dir(), 30), served.text()[-2000:]
    assert not (served.out / "DUP-1.v2.json").exists()
    changed = served.inbox / "DUP-1"
    copy_cells(changed, 6)  # different content under the same name: a new version, never an overwrite
    assert _wait(lambda: (served.out / "DUP-1.v2.json").exists(), 60)
    assert json.loads((served.out / "DUP-1.json").read_text())["cells_classified"] == 4
    assert json.loads((served.out / "DUP-1.v2.json").read_text())["cells_classified"] == 6


def test_retrain_deployment_has_active_cron(served):
    deps = served.api("/deployments/filter", {})
    by_name = {d["name"]: d for d in deps}
    assert {"process-sample", "retrain"} <= set(by_name)
    scheds = by_name["retrain"]["schedules"]
    assert scheds and scheds[0]["active"] and scheds[0]["schedule"]["cron"] == "0 4 * * 1"
    assert by_name["retrain"]["global_concurrency_limit"]["limit"] == 1  # never two retrains at once


def test_sigterm_stops_everything_and_restart_catches_up(served):
    took = served.stop()
    assert served.proc.returncode == 0 and took < 30
    assert "wbc serve: stopped" in served.text()
    with socket.socket() as s:  # the server is gone: its port is free
        assert s.connect_ex(("127.0.0.1", served.port)) != 0
    leftovers = subprocess.run(["pgrep", "-f", str(served.home)], capture_output=True, text=True).stdout.split()
    assert leftovers == []
    copy_cells(served.inbox / "LATE-1", 3)  # arrives while the service is down
    served.start()
    assert _wait(lambda: (served.out / "LATE-1.json").exists(), 60), served.text()[-3000:]
