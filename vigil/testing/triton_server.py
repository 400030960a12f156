"""A throwaway ``tritonserver`` on free loopback ports, serving copies of chosen models of
``triton_repo`` (used by the CT denoiser's serving test and its latency benchmark)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from vigil.errors import StackError
from vigil.stack import provision

__all__ = ["running_triton"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_triton(
    models: Sequence[str],
    workdir: Path,
    *,
    source: Path = Path("triton_repo"),
    ready_seconds: float = 180.0,
) -> Iterator[str]:
    """Starts Triton on copies of ``source/<model>`` for each model; yields its gRPC URL.

    Raises:
        StackError: No server binary, or it exited or was not ready within ``ready_seconds``.
    """
    binary = provision.triton_server()
    repo = workdir / "repo"
    for model in models:
        shutil.copytree(source / model, repo / model)
    http, grpc, metrics = _free_port(), _free_port(), _free_port()
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    argv = [
        str(binary),
        f"--model-repository={repo}",
        f"--backend-directory={binary.parent.parent / 'backends'}",
        "--http-address=127.0.0.1",
        f"--http-port={http}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics}",
        "--allow-gpu-metrics=false",
        "--pinned-memory-pool-byte-size=0",
        "--disable-auto-complete-config",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--log-verbose=0",
    ]
    log = workdir / "tritonserver.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        deadline = time.monotonic() + ready_seconds
        while True:
            if proc.poll() is not None:
                raise StackError(f"tritonserver exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"tritonserver not ready in {ready_seconds:.0f} s")
            time.sleep(0.2)
        yield f"127.0.0.1:{grpc}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
