"""A throwaway ``tritonserver`` on free loopback ports: on a model repository folder made
by the caller (:func:`serving_triton`: the queue-policy test, the step-model benchmarks), or
on copies of chosen models of ``triton_repo`` (:func:`running_triton`: the CT denoiser's
serving test and its latency benchmark). Same command line and environment as the stack's
server (:func:`vigil.stack.services.triton_argv`)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from vigil.errors import StackError
from vigil.stack.services import triton_argv, triton_env

__all__ = ["running_triton", "serving_triton"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving_triton(repo: Path, log: Path, *, ready_seconds: float = 180.0) -> Iterator[str]:
    """Starts Triton on the model repository folder ``repo``, its output in ``log``; yields
    its gRPC URL and stops it on exit.

    Raises:
        StackError: No server binary, or it exited or was not ready within ``ready_seconds``.
    """
    http, grpc, metrics = _free_port(), _free_port(), _free_port()
    argv = triton_argv(repo, "127.0.0.1", (http, grpc, metrics))
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=triton_env(), stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
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
    repo = workdir / "repo"
    for model in models:
        shutil.copytree(source / model, repo / model)
    with serving_triton(repo, workdir / "tritonserver.log", ready_seconds=ready_seconds) as url:
        yield url
