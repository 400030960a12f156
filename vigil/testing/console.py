"""Run ``vigil console`` as a child process (integration tests and ``bench.console``).

Configured only through ``VIGIL_CONSOLE_*`` variables, as in production, logging to a file
the test can show when it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vigil.testing.workers import free_port

__all__ = ["RunningConsole", "console_health", "running_console"]

_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RunningConsole:
    """A running console: its process, base URL, log and audit file."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    audit_file: Path


def console_health(url: str) -> dict[str, object] | None:
    """The body of ``/health``, None when it does not answer."""
    try:
        health = f"{url}/health"
        with urllib.request.urlopen(health, timeout=2) as response:  # noqa: S310 (http only)
            body: dict[str, object] = json.loads(response.read())
            return body
    except (urllib.error.URLError, OSError, ValueError):
        return None


@contextlib.contextmanager
def running_console(
    workdir: Path, *, bootstrap: str, prefix: str, redis_url: str, **settings: str
) -> Iterator[RunningConsole]:
    """A console for the duration of a ``with`` block, once it has read the topics back;
    ``settings`` are extra ``VIGIL_CONSOLE_*`` values by field name."""
    port = free_port()
    log = workdir / "console.log"
    audit = workdir / "console-audit.jsonl"
    env = {
        **os.environ,
        "VIGIL_CONSOLE_PORT": str(port),
        "VIGIL_CONSOLE_KAFKA_BOOTSTRAP": bootstrap,
        "VIGIL_CONSOLE_TOPIC_PREFIX": prefix,
        "VIGIL_CONSOLE_REDIS_URL": redis_url,
        "VIGIL_CONSOLE_CONSUMER_GROUP": f"{prefix}-console",
        "VIGIL_CONSOLE_USERS_FILE": str(workdir / "users.json"),
        "VIGIL_CONSOLE_AUDIT_FILE": str(audit),
        "PYTHONPATH": str(_ROOT),
    }
    env.update({f"VIGIL_CONSOLE_{name.upper()}": value for name, value in settings.items()})
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vigil", "console"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=_ROOT,
        )
    console = RunningConsole(proc, f"http://127.0.0.1:{port}", log, audit)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"console exited: {log.read_text()[-3000:]}")
            health = console_health(console.url)
            if health is not None and health.get("status") == "ok":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"console not ready in 90 s: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield console
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
