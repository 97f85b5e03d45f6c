"""``wbc serve``: the embedded default - Prefect server + UI, deployments, runner and inbox watcher.

One process tree:  wbc serve ── prefect server (own process group, SQLite under the app's home)
                             ├─ Prefect Runner (polls every second, runs flow runs as child processes)
                             └─ InboxWatcher thread (watchdog + scans, starts deployment runs)
SIGTERM/SIGINT stop the watcher, the runner (its runs are cancelled and re-run after a restart) and the
server, then any child left, within 30 s.  With ``PREFECT_API_URL`` set, no server is started and the
existing one is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wbcproc.defaults import (
    CONCURRENCY,
    HOST,
    MARKER_FILE,
    PORT,
    QUIET_S,
    RETRAIN_CRON,
    REVIEW_PORT,
    SCAN_S,
    TRAINING_DATA,
)
from wbcproc.paths import app_home

log = logging.getLogger("wbc.serve")
PROCESS_DEPLOYMENT = "process-sample/process-sample"
RETRAIN_DEPLOYMENT = "retrain/retrain"


@dataclass
class ServeOptions:
    inbox: Path
    out: Path
    port: int = PORT
    host: str = HOST
    home: Path | None = None
    config: Path | None = None
    model: Path | None = None
    quiet_s: float = QUIET_S
    scan_s: float = SCAN_S
    marker: str = MARKER_FILE
    polling: bool = False
    move_done: bool = True
    concurrency: int = CONCURRENCY
    retrain_cron: str = RETRAIN_CRON
    train_data: list[str] = field(default_factory=list)
    pool: str | None = None  # work pool: runs are executed by `wbc worker`s (any machine), not in-process
    review_port: int | None = REVIEW_PORT  # the review app beside the UI (None: not started)
    accounts: Path | None = None  # the review app's accounts file (default: <home>/accounts.json)


def _auth_header() -> dict[str, str]:
    auth = os.environ.get("PREFECT_API_AUTH_STRING") or os.environ.get("PREFECT_SERVER_API_AUTH_STRING")
    if not auth:
        return {}
    import base64

    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def _healthy(url: str) -> bool:
    try:
        req = urllib.request.Request(f"{url}/health", headers=_auth_header())
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (a server there would exit with only a log line)."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def start_server(home: Path, host: str, port: int, timeout: float = 120.0) -> subprocess.Popen:
    """``prefect server start`` in its own process group, SQLite under ``home``; waits until healthy."""
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", str(home / "prefect"))
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_SERVER_API_HOST"] = host
    env["PREFECT_SERVER_API_PORT"] = str(port)
    reap_stale_server(home)
    if not port_free(host, port):  # before anything is written: a refused start leaves no folder behind
        raise RuntimeError(
            f"port {port} on {host} is already in use (another wbc serve or Prefect server?): stop it, or start "
            f"this one with --port (e.g. --port {port + 1})"
        )
    home.mkdir(parents=True, exist_ok=True)
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    logf = open(home / "prefect-server.log", "ab")  # noqa: SIM115 - the child keeps it open
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
        env=env,
        stdout=logf,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    (home / SERVER_PID_FILE).write_text(f"{proc.pid}\n")
    url = f"http://{host}:{port}/api"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the Prefect server exited with code {proc.returncode}; see {home / 'prefect-server.log'}"
            )
        if _healthy(url):
            return proc
        time.sleep(0.5)
    stop_process_group(proc)
    raise RuntimeError(f"the Prefect server did not become healthy within {timeout:.0f} s on {url}")


SERVER_PID_FILE = "prefect-server.pid"


def reap_stale_server(home: Path, timeout: float = 15.0) -> None:
    """Stop a Prefect server left running by a `wbc serve` that was killed (kill -9, power cut): it would
    hold the port and the SQLite database.  Only a process whose command line is a Prefect server is
    touched, so a recycled pid is safe."""
    pid_file = home / SERVER_PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return
    if "prefect" in cmdline and "server start" in cmdline:
        log.warning("stopping a Prefect server (pid %d) left by a previous wbc serve", pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            end = time.monotonic() + timeout
            while time.monotonic() < end and Path(f"/proc/{pid}").exists():
                _reap_zombie(pid)
                time.sleep(0.2)
            if not Path(f"/proc/{pid}").exists():
                break
    pid_file.unlink(missing_ok=True)


def _reap_zombie(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_process_group(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(d.name))
                out += _children(int(d.name))
    return out


def _kill_children(timeout: float = 10.0) -> None:
    kids = _children(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for k in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(k, sig)
        end = time.monotonic() + timeout
        while time.monotonic() < end and any(Path(f"/proc/{k}").exists() for k in kids):
            time.sleep(0.2)
        kids = [k for k in kids if Path(f"/proc/{k}").exists()]
        if not kids:
            return


_EXECUTED: set[str] = set()
_FINISHED: set[str] = set()  # in-process executions that have returned (whatever state the API got)


def _execute_in_process(run) -> None:
    """Run a PENDING flow run of ``process-sample`` here (once per run id)."""
    from prefect.flow_engine import run_flow

    from flows.process import process_sample_flow

    if str(run.id) in _EXECUTED:
        return
    _EXECUTED.add(str(run.id))
    try:
        run_flow(process_sample_flow, flow_run=run, parameters=run.parameters, return_type="state")
    except Exception:  # the engine records the failure on the run; the watcher moves the folder
        log.exception("run %s failed", run.id)
    finally:
        _FINISHED.add(str(run.id))


def _remove_stale_temp_files(out: Path) -> None:
    """Temp files of report writes interrupted by a crash (hidden ``.<name>.*.tmp``; never a final name)."""
    for p in out.rglob(".*.tmp"):
        log.info("removing %s left by an interrupted report write", p)
        p.unlink(missing_ok=True)


ZOMBIE_AUTOMATION = "wbc: crash runs whose worker stopped"
HEARTBEAT_S = 30  # `wbc worker` flow runs send a heartbeat this often (PREFECT_FLOWS_HEARTBEAT_FREQUENCY)


async def ensure_zombie_automation(heartbeat_s: int = HEARTBEAT_S, missed: int = 3) -> None:
    """A run whose worker machine died (power, kill -9, OOM) stays RUNNING for ever: no process is left to
    report its end.  Workers' flow runs send heartbeats; this automation (Prefect's documented zombie
    detection) marks a run CRASHED when ``missed`` heartbeats in a row do not arrive, and the watcher
    then runs the sample again.  Created once per server, found by name afterwards."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    async with get_client() as client:
        if await client.read_automations_by_name(ZOMBIE_AUTOMATION):
            return
    await Automation(
        name=ZOMBIE_AUTOMATION,
        description="Marks a flow run CRASHED when its heartbeats stop (its worker is gone); wbc serve reruns it.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=heartbeat_s * missed),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED, message=f"no heartbeat for {heartbeat_s * missed} s: its worker stopped"
            )
        ],
    ).acreate()


async def ensure_pool(name: str) -> None:
    """Create the process work pool ``name`` if it does not exist yet."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    async with get_client() as client:
        with contextlib.suppress(ObjectAlreadyExists):
            await client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def serve(opts: ServeOptions) -> int:
    home = Path(opts.home or app_home())
    servers: list[subprocess.Popen] = []
    if not os.environ.get("PREFECT_API_URL"):
        log.info("starting Prefect server on http://%s:%d (home %s)", opts.host, opts.port, home)
        servers.append(start_server(home, opts.host, opts.port))
        os.environ["PREFECT_API_URL"] = f"http://{opts.host}:{opts.port}/api"
        if os.environ.get("PREFECT_SERVER_API_AUTH_STRING") and not os.environ.get("PREFECT_API_AUTH_STRING"):
            # basic auth on the embedded server: our own clients (runner, watcher, runs) use the same string
            os.environ["PREFECT_API_AUTH_STRING"] = os.environ["PREFECT_SERVER_API_AUTH_STRING"]
        os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    home.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(_serve_async(opts, home, servers))
    finally:
        for server in servers:
            stop_process_group(server)
        if servers:  # stopped: nothing for the next start to reap
            (home / SERVER_PID_FILE).unlink(missing_ok=True)
        _kill_children()


async def _supervise_server(servers: list[subprocess.Popen], home: Path, opts: ServeOptions) -> None:
    """Restart the embedded server if it dies (same SQLite database, same port): runs continue after."""
    while servers:
        await asyncio.sleep(2)
        if servers[0].poll() is not None:
            log.warning("the Prefect server exited (code %s); restarting it", servers[0].returncode)
            try:
                servers[0] = await asyncio.to_thread(start_server, home, opts.host, opts.port)
                log.info("Prefect server restarted")
            except RuntimeError as exc:
                log.error("could not restart the Prefect server: %s", exc)


async def _deployments(opts: ServeOptions, home: Path, out: Path) -> tuple[Any, Any, list[str]]:
    """The process-sample and weekly retrain deployments (not yet attached to a runner or pool)."""
    from prefect.types.entrypoint import EntrypointType

    from flows.process import process_sample_flow
    from flows.retrain import retrain_flow

    params = {
        "out_dir": str(out),
        "model": None if opts.model is None else str(opts.model),
        "config": None if opts.config is None else str(opts.config),
    }
    proc = await process_sample_flow.ato_deployment(
        # No deployment-level limit: the runner's `limit` (or each worker's --limit) bounds sample runs; a
        # deployment limit would be global across workers and makes Prefect re-queue runs ~20 s later.
        name="process-sample",
        parameters=params,
        tags=["wbc", "sample"],
        description="Classify one sample folder (started by the inbox watcher).",
        entrypoint_type=EntrypointType.MODULE_PATH,  # installed code: independent of the working directory
    )
    train_data = opts.train_data or [str(home / TRAINING_DATA)]
    retr = await retrain_flow.ato_deployment(
        name="retrain",
        cron=opts.retrain_cron,
        concurrency_limit=1,
        tags=["wbc", "retrain"],
        # adapt on the CPU by default (seconds); set mode "train" in the deployment for the full recipe
        parameters={"data": train_data, "runs_dir": str(home / "runs"), "only_if_new": True, "mode": "adapt"},
        description="Weekly adaptation to the lab's reviewed cells (mode 'adapt'; 'train' runs the full recipe); "
        "promotes only a better model.",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    _say_what_retrain_lacks(opts.retrain_cron, train_data)
    return proc, retr, train_data


def _say_what_retrain_lacks(cron: str, train_data: list[str]) -> None:
    from flows.retrain import training_extra_missing

    missing = training_extra_missing("adapt")
    if missing:  # said once, here, rather than as a failed run every week
        log.warning("weekly retrain (%s): %s; until then its runs end with 'nothing to do'", cron, missing)
    elif not any(Path(d).is_dir() for d in train_data):
        log.info(
            "weekly retrain (%s) learns from %s, which does not exist yet: `wbc export-reviewed ... --lab-data %s` puts reviewed "
            "cells there",
            cron,
            ", ".join(train_data),
            train_data[0],
        )


async def _attach(opts: ServeOptions, proc: Any, retr: Any) -> Any:
    """Put the deployments on the work pool (workers elsewhere run them; returns None) or on an in-process
    runner (returned)."""
    from prefect.runner import Runner

    if opts.pool:
        await ensure_pool(opts.pool)
        await ensure_zombie_automation()
        await proc.aapply(work_pool_name=opts.pool)
        await retr.aapply(work_pool_name=opts.pool)
        log.info(
            "deployments registered on work pool %r: start workers with `wbc worker --pool %s`", opts.pool, opts.pool
        )
        return None
    # one slot more than sample processing allows: a retrain can never take the samples' slots
    runner = Runner(name="wbc-serve", query_seconds=1, limit=opts.concurrency + 1, pause_on_shutdown=False)
    for dep in (proc, retr):
        await runner.aadd_deployment(dep)
    return runner


class _Runs:
    """What the watcher needs from Prefect: start a sample's run, read a run's state, mark one crashed."""

    def __init__(self, pool: str | None, executor: ThreadPoolExecutor) -> None:
        self.pool, self.executor = pool, executor

    def submit(self, folder: Path, fp: str, version: int, attempt: str) -> str:
        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment

        params = {"folder": str(folder), "report_version": version}
        key = f"{folder.name}:{fp}:{version}:{attempt}"
        if self.pool:  # workers elsewhere pull it
            run = run_deployment(
                PROCESS_DEPLOYMENT, parameters=params, timeout=0, idempotency_key=key, flow_run_name=folder.name
            )
            return str(run.id)
        # Embedded mode: create the deployment's run as PENDING (so the runner's poller, which takes
        # SCHEDULED runs, leaves it alone) and execute it in this process, where Prefect and the ONNX
        # Runtime session are already warm: a fresh flow-run process costs ~3 s before any work.
        from prefect.states import Pending

        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name(PROCESS_DEPLOYMENT)
            run = client.create_flow_run_from_deployment(
                dep.id, parameters=params, name=folder.name, idempotency_key=key, state=Pending()
            )
        if run.state is not None and run.state.type.value == "PENDING":  # not an earlier run with this key
            self.executor.submit(_execute_in_process, run)
        return str(run.id)

    @staticmethod
    def crash(run_id: str, message: str) -> None:
        from prefect.client.orchestration import get_client
        from prefect.states import Crashed

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run_id, Crashed(message=message), force=True)

    @staticmethod
    def state_of(run_id: str) -> tuple[str | None, str | None]:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            fr = client.read_flow_run(run_id)
        if fr.state is None:
            return None, None
        return fr.state.type.value, fr.state.message


def _stop_on_signals() -> asyncio.Event:
    """SIGTERM / SIGINT set the returned event (registered before anything starts)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _wait_for_stop(runner_task: asyncio.Task, stop: asyncio.Event) -> int:
    done, _ = await asyncio.wait({runner_task, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if runner_task in done and runner_task.exception() is not None:
        log.error("runner stopped: %s", runner_task.exception())
        return 1
    return 0


async def _stop_runner(runner: Any, runner_task: asyncio.Task) -> None:
    if runner is not None and not runner.stopping:
        await runner.astop()
    elif runner is None:
        runner_task.cancel()
    try:
        await asyncio.wait_for(runner_task, timeout=15)
    except (TimeoutError, asyncio.CancelledError, Exception):  # shutting down: report, do not hang
        runner_task.cancel()


def _start_review(opts: ServeOptions, home: Path, out: Path, inbox: Path, lab_data: str | None):
    """The review app (``wbcproc.review``) on its own port beside the Prefect UI, in a thread; None, with a
    log line saying why, where it cannot start (no account yet, port taken) - the service runs without it."""
    import threading

    import uvicorn

    from wbcproc.review.accounts import ACCOUNTS_FILE, AccountError
    from wbcproc.review.app import ReviewConfig, create_app

    if opts.review_port is None:
        return None
    cfg = ReviewConfig(
        reports=out, accounts=opts.accounts or home / ACCOUNTS_FILE, sample_roots=[inbox / "archive", inbox],
        lab_data=Path(lab_data) if lab_data else None,
    )  # fmt: skip
    try:
        web = create_app(cfg)
    except AccountError as exc:
        log.warning("review app not started: %s", exc)
        return None
    if not port_free(opts.host, opts.review_port):
        log.error("review app not started: %s:%d is in use (--review-port)", opts.host, opts.review_port)
        return None
    server = uvicorn.Server(uvicorn.Config(web, host=opts.host, port=opts.review_port, log_level="warning"))
    threading.Thread(target=server.run, name="wbc-review", daemon=True).start()
    return server


async def _serve_async(opts: ServeOptions, home: Path, servers: list[subprocess.Popen]) -> int:
    # Prefect is imported only now (in the helpers), after PREFECT_API_URL points at the server.
    from flows.verify import verify_report_flow
    from flows.watcher import InboxWatcher, ReviewedWatcher
    from wbcproc.inbox import Ledger

    out = opts.out.resolve()
    inbox = opts.inbox.resolve()
    out.mkdir(parents=True, exist_ok=True)
    proc, retr, train_data = await _deployments(opts, home, out)
    runner = await _attach(opts, proc, retr)
    ledger = Ledger(home / "ledger.sqlite")
    executor = ThreadPoolExecutor(max_workers=opts.concurrency, thread_name_prefix="wbc-run")
    runs = _Runs(opts.pool, executor)
    _remove_stale_temp_files(out)
    watcher = InboxWatcher(
        inbox,
        ledger,
        runs.submit,
        runs.state_of,
        quiet_s=opts.quiet_s,
        scan_s=opts.scan_s,
        marker=opts.marker,
        polling=opts.polling,
        move_done=opts.move_done,
        crash=runs.crash,
        pooled=bool(opts.pool),
        finished_locally=None if opts.pool else (lambda run_id: run_id in _FINISHED),
    )
    # Reviewed workbooks are verified here, in this process (no model, well under a second): a run of the
    # verify-report flow each, so a signature and a rejection both show in the UI.
    reviewed = ReviewedWatcher(
        inbox / "reviewed",
        lambda wb: verify_report_flow(
            str(wb), str(out), sample_roots=[str(inbox / "archive"), str(inbox)], lab_data=train_data[0]
        ),
        scan_s=opts.scan_s,
    )
    stop = _stop_on_signals()
    runner_task = asyncio.create_task(runner.start() if runner is not None else asyncio.Event().wait())
    supervisor = asyncio.create_task(_supervise_server(servers, home, opts))
    await asyncio.sleep(0)
    await asyncio.to_thread(watcher.start)
    await asyncio.to_thread(reviewed.start)
    review = _start_review(opts, home, out, inbox, train_data[0] if train_data else None)
    shown = f"  review http://{opts.host}:{opts.review_port}" if review is not None else ""
    print(f"wbc serve: UI http://{opts.host}:{opts.port}{shown}  inbox {inbox}  out {out}", flush=True)
    code = await _wait_for_stop(runner_task, stop)
    if review is not None:
        review.should_exit = True
    supervisor.cancel()
    await asyncio.to_thread(watcher.stop)
    await asyncio.to_thread(reviewed.stop)
    await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
    await _stop_runner(runner, runner_task)
    ledger.close()
    # Flush Prefect's log/event services while the server still answers (in-process runs use them).
    from prefect._internal.concurrency.services import QueueService

    with contextlib.suppress(Exception):
        await QueueService.drain_all(timeout=5)
    print("wbc serve: stopped", flush=True)
    return code
