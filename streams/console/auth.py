"""Sign-in helpers of the console: session identity, CSRF tokens, failed-login lockout.

The session is Starlette's signed cookie (itsdangerous): it holds the user's name, role,
sign-in method and a CSRF token, nothing about patients. Every POST but ``/login`` must
carry the session's token in ``csrf_token``; ``/login`` takes the token of the anonymous
session when a browser sent one, and refuses a cross-site ``Origin``.

:class:`Lockout` counts failed sign-ins per user name and per client address in a sliding
window; reaching ``max_failures`` locks that key for ``lockout`` (answered 429).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from streams.console.users import ROLES, User

__all__ = ["Lockout", "check_csrf", "csrf_token", "current_user", "sign_in", "sign_out"]


def csrf_token(request: Request) -> str:
    """The session's CSRF token (created on first use)."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def check_csrf(request: Request, form: Any) -> bool:
    """True when the form carries the session's CSRF token."""
    sent = form.get("csrf_token")
    held = request.session.get("csrf")
    if not isinstance(sent, str) or not isinstance(held, str):
        return False
    return hmac.compare_digest(sent.encode(), held.encode())


def same_origin(request: Request) -> bool:
    """False when the request names another origin (``Origin``, else ``Referer``)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin != "null"
    own = f"{request.url.scheme}://{request.url.netloc}"
    return origin == own or origin.startswith(own + "/")


def current_user(request: Request) -> User | None:
    """The signed-in user of the request's session, if any."""
    name, role = request.session.get("user"), request.session.get("role")
    if isinstance(name, str) and role in ROLES:
        return User(name, role)
    return None


def sign_in(request: Request, user: User, method: str) -> None:
    """Start a fresh session for ``user`` (a new CSRF token: no fixation)."""
    request.session.clear()
    request.session.update(
        {"user": user.name, "role": user.role, "method": method, "at": int(time.time())}
    )
    csrf_token(request)


def sign_out(request: Request) -> None:
    """End the session."""
    request.session.clear()


class Lockout:
    """Failed sign-ins per key (user name, client address) in a sliding window.

    Args:
        max_failures: Failures within ``window_seconds`` that lock the key.
        window_seconds: Window, and lockout length, in seconds.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        max_failures: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        now = self.clock()
        times = self._failures.setdefault(key, deque())
        while times and now - times[0] > self.window_seconds:
            times.popleft()
        if not times:
            del self._failures[key]
            return deque()
        return times

    def locked(self, *keys: str) -> bool:
        """True when any key has reached the limit within the window."""
        return any(len(self._recent(k)) >= self.max_failures for k in keys)

    def fail(self, *keys: str) -> None:
        """Count one failure against each key."""
        now = self.clock()
        for key in keys:
            self._failures.setdefault(key, deque(maxlen=self.max_failures * 4)).append(now)
        if len(self._failures) > 100_000:  # bounded: drop the oldest keys
            for key in list(self._failures)[:50_000]:
                del self._failures[key]

    def succeed(self, *keys: str) -> None:
        """Forget the failures of each key."""
        for key in keys:
            self._failures.pop(key, None)
