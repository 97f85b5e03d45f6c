"""deploy/docker-compose.yml says what tests/test_scale_out.py runs: the same roles, commands and
environment names (no Docker engine here, so the file is checked, not started)."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "deploy" / "docker-compose.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _cmd(service: dict) -> list[str]:
    c = service["command"]
    return shlex.split(c) if isinstance(c, str) else list(c)


def _opt(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_compose_has_the_roles_the_scale_out_test_runs():
    services = _compose()["services"]
    assert {"postgres", "server", "watcher", "worker"} <= set(services)
    server, watcher, worker = services["server"], services["watcher"], services["worker"]
    assert _cmd(server)[:3] == ["prefect", "server", "start"]
    url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://"), url  # what tests/pg.py's Postgres.url gives the server
    wcmd, kcmd = _cmd(watcher), _cmd(worker)
    assert wcmd[:2] == ["wbc", "serve"] and kcmd[:2] == ["wbc", "worker"]
    assert _opt(wcmd, "--pool") and _opt(wcmd, "--pool") == _opt(kcmd, "--pool")  # one work pool
    for svc in (watcher, worker):  # clients reach the server by PREFECT_API_URL, as in tests/cluster.py
        assert svc["environment"]["PREFECT_API_URL"].endswith(":4200/api")
    assert _opt(server["command"].split(), "--port") == "4200"
    # the inbox and the reports are one shared volume for the watcher; workers mount the same one
    assert set(watcher["volumes"]) == set(worker["volumes"])
    assert _opt(wcmd, "--inbox").startswith("/data/") and _opt(wcmd, "--out").startswith("/data/")


def test_compose_names_the_environment_variables_the_code_reads():
    from flows import cli, serve

    text = COMPOSE.read_text()
    code = Path(serve.__file__).read_text() + Path(cli.__file__).read_text()
    for name in ("PREFECT_API_URL", "PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING"):
        assert name in text and name in code, name
