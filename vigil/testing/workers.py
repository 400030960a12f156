"""Run ``vigil worker`` as a child process for integration tests.

Each worker runs in its own process group (so a stop reaches Faust's children too), logs to
a file the test can show when it fails, and is configured only through ``VIGIL_*``
environment variables, as in production.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from vigil.stack.settings import StackSettings

__all__ = [
    "free_port",
    "metrics_port",
    "running_worker",
    "start_worker",
    "stop_worker",
    "worker_env",
]


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metrics_port(stack: StackSettings) -> int:
    """A free port among those the local stack's Prometheus scrapes for workers (9108-9111).

    Raises:
        RuntimeError: Every one of them is taken (other workers are running).
    """
    for port in stack.worker_metrics_ports:
        with socket.socket() as sock:
            try:
                sock.bind((stack.host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free worker metrics port among {stack.worker_metrics_ports}")


def worker_env(
    stack: StackSettings, *, prefix: str, app_id: str, data_dir: Path, **settings: str
) -> dict[str, str]:
    """Environment for a worker on the local stack; ``settings`` are extra ``VIGIL_*``
    values by field name (``metrics_port="0"`` becomes ``VIGIL_METRICS_PORT=0``)."""
    env = {
        **os.environ,
        "VIGIL_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "VIGIL_TOPIC_PREFIX": prefix,
        "VIGIL_APP_ID": app_id,
        "VIGIL_REDIS_URL": stack.redis_url,
        "VIGIL_TRITON_URL": stack.triton_grpc_url,
        "VIGIL_METRICS_PORT": "0",
        "VIGIL_DATA_DIR": str(data_dir),
    }
    env.update({f"VIGIL_{name.upper()}": value for name, value in settings.items()})
    return env


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m vigil worker`` with ``env``, appending its output to ``log``."""
    with log.open("ab") as handle:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "vigil", "worker"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """SIGTERM the worker's process group, SIGKILL it if it has not exited in ``timeout``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextlib.contextmanager
def running_worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A worker for the duration of a ``with`` block, stopped however the block ends."""
    proc = start_worker(env, log)
    try:
        yield proc
    finally:
        stop_worker(proc)
