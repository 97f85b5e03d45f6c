"""Logged-in sessions and failed-login limits, kept in the server's memory.

A session is a random token in an HttpOnly, SameSite=Strict cookie; it carries its own CSRF token, which
every state-changing request must echo (``X-CSRF-Token``).  Sessions end after ``idle`` without a request
and after ``absolute`` in any case; a server restart ends them all (drafts are on disk, nothing is lost).
Failed logins are counted per account name and per client address: ``MAX_FAILURES`` within ``WINDOW``
lock that name or address out for the rest of the window.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from wbcproc.review.accounts import Account

MAX_FAILURES = 5
WINDOW = 15 * 60.0


@dataclass
class Session:
    token: str
    account: Account
    csrf: str
    started: float
    seen: float

    def csrf_ok(self, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(self.csrf, sent)


@dataclass
class Sessions:
    idle: float = 30 * 60.0
    absolute: float = 12 * 3600.0
    clock: object = time.monotonic
    _by_token: dict[str, Session] = field(default_factory=dict)
    _failures: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, account: Account) -> Session:
        now = self.clock()
        s = Session(secrets.token_urlsafe(32), account, secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._by_token[s.token] = s
        return s

    def get(self, token: str | None) -> Session | None:
        """The live session of ``token`` (its idle clock restarted), None when unknown or expired."""
        if not token:
            return None
        now = self.clock()
        with self._lock:
            s = self._by_token.get(token)
            if s is None:
                return None
            if now - s.seen > self.idle or now - s.started > self.absolute:
                del self._by_token[token]
                return None
            s.seen = now
            return s

    def end(self, token: str | None) -> None:
        with self._lock:
            self._by_token.pop(token or "", None)

    def locked_out(self, *keys: str) -> bool:
        now = self.clock()
        with self._lock:
            for k in keys:
                q = self._failures[k]
                while q and now - q[0] > WINDOW:
                    q.popleft()
                if len(q) >= MAX_FAILURES:
                    return True
        return False

    def failed(self, *keys: str) -> None:
        now = self.clock()
        with self._lock:
            for k in keys:
                self._failures[k].append(now)

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._failures.pop(k, None)
