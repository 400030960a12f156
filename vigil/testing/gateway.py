"""Run ``vigil gateway`` as a child process, and talk MLLP to it (integration tests and
``bench.gateway``).

The gateway runs this checkout's code (``python -m vigil`` with the caller's interpreter),
configured only through ``VIGIL_GATEWAY_*`` variables, logging to a file the test can
show when it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from streams.adapters.topics import create_topics
from streams.gateway.mllp import END, START
from streams.settings import WorkerSettings
from vigil.stack.settings import StackSettings
from vigil.testing.workers import free_port

__all__ = ["Gateway", "MllpClient", "fresh_topics", "health", "running_gateway"]

_ROOT = Path(__file__).resolve().parents[2]


def fresh_topics(stack: StackSettings, tag: str, partitions: int = 2) -> str:
    """A new topic prefix ``<tag>-<random>`` whose Vigil topics exist on the local stack."""
    prefix = f"{tag}-{uuid.uuid4().hex[:10]}"
    create_topics(
        WorkerSettings(
            kafka_bootstrap=stack.kafka_bootstrap,
            topic_prefix=prefix,
            topic_partitions=partitions,
        )
    )
    return prefix


@dataclass(frozen=True)
class Gateway:
    """A running gateway: its process, ports and log."""

    proc: subprocess.Popen[bytes]
    mllp_port: int
    http_port: int
    log: Path

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None


def health(gateway: Gateway) -> tuple[int, dict[str, str]]:
    """Status code and body of ``/health``."""
    url = f"http://127.0.0.1:{gateway.http_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


@contextlib.contextmanager
def running_gateway(
    log: Path,
    *,
    bootstrap: str,
    prefix: str,
    wait_healthy: bool = True,
    code: Path | None = None,
    **settings: str,
) -> Iterator[Gateway]:
    """A gateway for the duration of a ``with`` block; ``settings`` are extra
    ``VIGIL_GATEWAY_*`` values by field name; ``code`` runs another checkout's gateway
    (before/after benchmarks)."""
    root = _ROOT if code is None else code.resolve()
    mllp_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "VIGIL_GATEWAY_KAFKA_BOOTSTRAP": bootstrap,
        "VIGIL_GATEWAY_TOPIC_PREFIX": prefix,
        "VIGIL_GATEWAY_MLLP_PORT": str(mllp_port),
        "VIGIL_GATEWAY_HTTP_PORT": str(http_port),
        "PYTHONPATH": str(root),
    }
    env.update({f"VIGIL_GATEWAY_{name.upper()}": value for name, value in settings.items()})
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vigil", "gateway"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=root,
        )
    gateway = Gateway(proc, mllp_port, http_port, log)
    try:
        _wait_listening(gateway, wait_healthy)
        yield gateway
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _wait_listening(gateway: Gateway, healthy: bool, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not gateway.alive():
            raise RuntimeError(f"gateway exited: {gateway.log.read_text()[-3000:]}")
        with contextlib.suppress(OSError, ValueError):
            if not healthy:  # listening is enough (the HTTP side may speak TLS)
                socket.create_connection(("127.0.0.1", gateway.http_port), timeout=1).close()
                return
            if health(gateway)[0] == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"gateway not healthy in {timeout} s: {gateway.log.read_text()[-3000:]}")


class MllpClient:
    """A blocking MLLP client: send one message, read its ACK."""

    def __init__(self, port: int, timeout: float = 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""

    def send(self, message: bytes) -> bytes:
        """Send ``message`` framed and return its ACK (unframed)."""
        self.sock.sendall(START + message + END)
        return self.read_ack()

    def read_ack(self) -> bytes:
        """The next framed answer; b"" when the server closed the connection."""
        while END not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return b""
            self._buffer += chunk
        frame, self._buffer = self._buffer.split(END, 1)
        assert frame.startswith(START)
        return frame[1:]

    def closed_by_server(self) -> bool:
        """True once the server has closed the connection (reads b"")."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()
