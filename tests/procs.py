"""Process helpers shared by the tests that run servers (and benchmarks/scale_out.py): a free port, and
waiting for a condition.  Standard library only."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


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
