"""The ward console beside ``vigil demo``: a console process on the demo's topics with a
**demo** user (random password, printed once), on loopback only.

The user lives in the run's own users file (``<report>/console-users.json``), never in the
real one; the console stamps actions in event time (``VIGIL_CONSOLE_ACK_CLOCK=event``),
because the demo's worker runs on replayed time.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher

from streams.console.users import UserStore

__all__ = ["DEMO_USER", "DemoConsole", "start_demo_console"]

DEMO_USER = "demo-clinician"


@dataclass(frozen=True)
class DemoConsole:
    """The demo's console process, its address, login and how to reopen it."""

    proc: subprocess.Popen[bytes]
    url: str
    password: str
    reopen: str


def start_demo_console(
    *, prefix: str, report: Path, kafka_bootstrap: str, redis_url: str, port: int = 8088
) -> DemoConsole:
    """Start ``vigil console`` on the demo's topics (logging to ``report/console.log``).

    Raises:
        OSError: The port is taken (checked before starting).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))
    password = secrets.token_urlsafe(12)
    report = report.resolve()  # the reopen command works from any folder
    users = report / "console-users.json"
    UserStore(users, PasswordHasher()).add(DEMO_USER, "clinician", password)
    settings = {
        "VIGIL_CONSOLE_HOST": "127.0.0.1",
        "VIGIL_CONSOLE_PORT": str(port),
        "VIGIL_CONSOLE_TOPIC_PREFIX": prefix,
        "VIGIL_CONSOLE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "VIGIL_CONSOLE_REDIS_URL": redis_url,
        "VIGIL_CONSOLE_USERS_FILE": str(users),
        "VIGIL_CONSOLE_AUDIT_FILE": str(report / "console-audit.jsonl"),
        "VIGIL_CONSOLE_CONSUMER_GROUP": f"{prefix}-console",
        "VIGIL_CONSOLE_ACK_CLOCK": "event",
    }
    with (report / "console.log").open("ab") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vigil", "console"],
            env={**os.environ, **settings},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    reopen = " ".join(f"{k}={v}" for k, v in settings.items()) + " vigil console"
    return DemoConsole(proc, f"http://127.0.0.1:{port}/", password, reopen)
