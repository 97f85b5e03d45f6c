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


def test_compose_commands_are_accepted_by_the_cli_and_its_auth_string_reaches_the_server(monkeypatch):
    """The watcher's and the worker's command lines parse with ``wbc``'s own options (an option the CLI
    lost or renamed fails here), and the auth string the compose file gives them is what the service's
    requests to the server carry."""
    import base64

    import typer

    from flows.cli import app
    from flows.serve import _auth_header

    services = _compose()["services"]
    wbc = typer.main.get_command(app)
    for role in ("watcher", "worker"):
        name, *args = _cmd(services[role])[1:]
        command = wbc.get_command(wbc.make_context("wbc", [name, "--help"], resilient_parsing=True), name)
        assert command is not None, f"compose's {role} runs `wbc {name}`, which the CLI does not have"
        ctx = command.make_context(name, list(args))  # raises on an unknown option or a missing required one
        assert ctx.params, role
    assert "${WBC_AUTH}" in services["watcher"]["environment"]["PREFECT_API_AUTH_STRING"]
    monkeypatch.delenv("PREFECT_SERVER_API_AUTH_STRING", raising=False)
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "lab:secret")
    assert _auth_header() == {"Authorization": "Basic " + base64.b64encode(b"lab:secret").decode()}
    monkeypatch.delenv("PREFECT_API_AUTH_STRING")
    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", "lab:other")  # the server's variable, as on its machine
    assert _auth_header() == {"Authorization": "Basic " + base64.b64encode(b"lab:other").decode()}
