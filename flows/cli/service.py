"""``wbc serve`` and ``wbc worker``: the watched inbox, the Prefect server and its workers."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli._app import _fail, _load_settings, app
from wbcproc import defaults

# two of ``wbc serve``'s options, named once here to keep the command readable
_LabData = Annotated[
    list[Path] | None,
    typer.Option(
        "--lab-data",
        help="Data roots the weekly retrain learns from: the laboratory's data folder (default: "
        "$WBC_HOME/training-data), plus the original training set for a full retrain.",
    ),
]
_Pool = Annotated[
    str | None,
    typer.Option(help="Put runs on this process work pool for `wbc worker`s instead of running them here."),
]


_REVIEW_PORT_HELP = "Port of the review app (wbc review; needs an account: wbc accounts add); 0: not started."


@app.command()
def serve(
    inbox: Annotated[Path, typer.Option(help="Watched folder: one sub-folder per sample.")],
    out: Annotated[Path, typer.Option(help="Where reports are written.")],
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the Prefect server and UI.")] = defaults.PORT,
    host: Annotated[str, typer.Option(help="Address of the embedded server (loopback by default).")] = defaults.HOST,
    home: Annotated[Path | None, typer.Option(help="App home (SQLite, ledger, runs); default $WBC_HOME.")] = None,
    config: Annotated[Path | None, typer.Option(help="Config TOML.")] = None,
    model: Annotated[Path | None, typer.Option(help="Model .onnx (default: the model in use).")] = None,
    quiet: Annotated[
        float, typer.Option("--quiet-seconds", min=0.0, help="No change for this long = settled.")
    ] = defaults.QUIET_S,
    scan: Annotated[float, typer.Option("--scan-seconds", min=0.1, help="Scan interval.")] = defaults.SCAN_S,
    marker: Annotated[
        str, typer.Option(help="A file of this name marks a folder complete at once.")
    ] = defaults.MARKER_FILE,
    polling: Annotated[bool, typer.Option("--polling", help="Poll the inbox (SMB/NFS shares).")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="Leave processed folders in the inbox.")] = False,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Samples processed at a time on this machine.")
    ] = defaults.CONCURRENCY,
    retrain_cron: Annotated[
        str, typer.Option("--retrain-cron", help="Cron of the retrain deployment.")
    ] = defaults.RETRAIN_CRON,
    train_data: _LabData = None,
    pool: _Pool = None,
    review_port: Annotated[int, typer.Option(min=0, max=65535, help=_REVIEW_PORT_HELP)] = defaults.REVIEW_PORT,
) -> None:
    """Run the Prefect server + UI, the review app, the deployments and the inbox watcher until SIGTERM/SIGINT."""
    import logging

    from flows.serve import ServeOptions
    from flows.serve import serve as run_serve
    from wbcproc.model import ModelError, load_classifier

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API poll otherwise
    settings = _load_settings(config)
    if marker not in settings.marker_files:
        raise _fail(
            f"--marker {marker!r} is not among the config's [input] marker_files {list(settings.marker_files)}: "
            "add it there, or reports would list the marker as a rejected file",
            2,
        )
    for what, path in (("--inbox", inbox), ("--out", out)):
        if path.exists() and not path.is_dir():
            raise _fail(f"{what} {str(path)!r} is a file; give a folder (it is created if missing)", 2)
    try:
        load_classifier(model)  # refuse to start without a usable model: every run would fail
    except ModelError as exc:
        raise _fail(str(exc)) from None
    opts = ServeOptions(
        inbox=inbox,
        out=out,
        port=port,
        host=host,
        home=home,
        config=config,
        model=model,
        quiet_s=quiet,
        scan_s=scan,
        marker=marker,
        polling=polling,
        move_done=not keep,
        concurrency=concurrency,
        retrain_cron=retrain_cron,
        train_data=[str(d) for d in (train_data or [])],
        pool=pool,
        review_port=review_port or None,
    )
    try:
        code = run_serve(opts)
    except RuntimeError as exc:
        raise _fail(str(exc)) from None
    # Everything we started is stopped and flushed; leave now rather than let interpreter shutdown wait on
    # Prefect background threads that would retry a server that is gone.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@app.command()
def worker(
    pool: Annotated[str, typer.Option(help="Work pool to pull runs from (as given to `wbc serve --pool`).")] = "wbc",
    limit: Annotated[int, typer.Option(min=1, help="Runs at a time on this machine.")] = 1,
    name: Annotated[str | None, typer.Option(help="Worker name shown in the UI (default: host name).")] = None,
    poll: Annotated[float, typer.Option("--poll-seconds", min=0.5, help="How often to ask for work.")] = 1.0,
) -> None:
    """Pull sample runs from a Prefect server (PREFECT_API_URL) and run them here: scale out to N machines."""
    import socket
    import sys

    if not os.environ.get("PREFECT_API_URL"):
        raise _fail("set PREFECT_API_URL to the server's API (e.g. http://lab-server:4200/api)", 2)
    env = dict(os.environ, PREFECT_WORKER_QUERY_SECONDS=str(poll), PREFECT_WORKER_PREFETCH_SECONDS="5")
    # heartbeats let the server tell a run whose machine died from a long one (flows.serve.ensure_zombie_automation)
    from flows.serve import HEARTBEAT_S

    env.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_S))
    cmd = [
        sys.executable,
        "-m",
        "prefect",
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        "--limit",
        str(limit),
        "--name",
        name or f"wbc-{socket.gethostname()}",
    ]
    _supervise(cmd, env)


def _supervise(cmd: list[str], env: dict[str, str], pause_s: float = 5.0) -> None:
    """Run the Prefect worker and start it again when it dies of an error: a worker exits on some server
    errors (a 500 while the database restarts), and a machine's only worker must not stay down until a
    person notices.  SIGTERM / SIGINT are passed on and end the loop."""
    import signal
    import subprocess
    import time

    state: dict[str, Any] = {"child": None, "stopping": False}

    def forward(sig, _frame) -> None:
        state["stopping"] = True
        child = state["child"]
        if child is not None and child.poll() is None:
            child.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    while True:
        state["child"] = subprocess.Popen(cmd, env=env)
        code = state["child"].wait()
        if state["stopping"] or code == 0:
            raise typer.Exit(code)
        typer.echo(
            f"wbc worker: the Prefect worker exited with code {code}; starting it again in {pause_s:g} s", err=True
        )
        time.sleep(pause_s)
