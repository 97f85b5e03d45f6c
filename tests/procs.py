"""Process helpers shared by the tests that run servers (and benchmarks/scale_out.py): a free port, and
waiting for a condition.  Standard library only."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable

# Set by tests/conftest.py when the run is interrupted (Ctrl-C): the servers the tests started then get a few
# seconds to stop before their process group is killed, so pytest ends and prints its summary at once.
INTERRUPTED = False
INTERRUPTED_GRACE_S = 5.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    pred: Callable[[], object], timeout: float, step: float = 0.25, *, retry_on: tuple[type[BaseException], ...] = ()
) -> bool:
    """Poll ``pred`` every ``step`` seconds until it is true or ``timeout`` passes; the last answer is returned.
    ``retry_on``: exceptions that count as "not yet" while polling (e.g. OSError of a server still starting)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return True
        except retry_on:
            pass
        time.sleep(step)
    return bool(pred())


def stop(proc: subprocess.Popen, grace: float, *, group_signal: bool = False) -> None:
    """SIGTERM to ``proc`` (to its whole process group with ``group_signal``; it was started with
    ``start_new_session``), then SIGKILL to the group if it has not exited within ``grace`` seconds - a few
    seconds once the run is interrupted, at once on another Ctrl-C.  A server that did not stop in time is
    still reported (``TimeoutExpired``), after it and its children are gone."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            (os.killpg if group_signal else os.kill)(proc.pid, signal.SIGTERM)
    try:
        proc.wait(min(grace, INTERRUPTED_GRACE_S) if INTERRUPTED else grace)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if not INTERRUPTED:
            raise
