"""Triton drops work nobody waits for: the queue policy every exporter renders
(:func:`models.common.triton_config.render_serving`) and the deadline the worker's adapter passes
with each request (``streams/adapters/triton.py``).

Starts its own ``tritonserver`` (the one bundled in ``nvidia-pytriton``) on free ports,
never the shared stack's, with two tiny Python-backend models that hold their one
instance for :data:`BUSY_SECONDS` per execution and log every request they compute:
``with_policy`` has the rendered scheduling block, ``without_policy`` the same without
``default_queue_policy`` (the control that shows the test can fail). A request with a
short deadline queued behind a busy model is rejected, and never computed, only where
the policy is; a request with a long deadline behind the same busy model is computed.

What does it: with a timeout in its queue policy, Triton 2.51 keeps the next requests in
its queue instead of prefetching them into the next batch, so the request's own timeout
(the ``timeout`` parameter the adapter sends) rejects it there, and so does the gRPC
cancellation when the client's deadline passes first. Without the policy (the control),
the request had already been moved into the next batch and was computed for nobody.
:func:`test_the_rejection_is_the_queue_timeout` isolates the timeout (no client deadline).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from google.protobuf import text_format  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from models.common.triton_config import (
    QUEUE_TIMEOUT_MICROSECONDS,
    SCORING_INSTANCE_COUNT,
    render_serving,
)
from streams.adapters.triton import TritonScorer
from streams.core.breaker import CircuitBreaker
from streams.metrics import WorkerMetrics
from vigil.errors import InferenceError
from vigil.testing.triton_server import serving_triton

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "triton_repo"
BUSY_SECONDS = 1.5
SHORT_DEADLINE_SECONDS = 0.2

_MODEL_PY = """
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.log = config["parameters"]["log_path"]["string_value"]
        self.busy = float(config["parameters"]["busy_seconds"]["string_value"])

    def execute(self, requests):
        ids = [float(pb_utils.get_input_tensor_by_name(r, "x").as_numpy()[0, 0]) for r in requests]
        with open(self.log, "a") as log:
            log.write(" ".join(f"start:{i:g}" for i in ids) + "\\n")
        time.sleep(self.busy)
        with open(self.log, "a") as log:
            log.write(" ".join(f"done:{i:g}" for i in ids) + "\\n")
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("y", np.array([[i]], np.float32))])
            for i in ids
        ]
"""


def _config(name: str, log_path: Path, *, policy: bool) -> str:
    serving = render_serving()
    if not policy:
        serving = re.sub(r"  default_queue_policy \{\n.*?\n  \}\n", "", serving, flags=re.S)
        assert "queue_policy" not in serving
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 4\n'
        'input [\n  {\n    name: "x"\n    data_type: TYPE_FP32\n    dims: [ 1 ]\n  }\n]\n'
        'output [\n  {\n    name: "y"\n    data_type: TYPE_FP32\n    dims: [ 1 ]\n  }\n]\n'
        + serving
        + "".join(
            f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'
            for key, value in (("log_path", log_path), ("busy_seconds", BUSY_SECONDS))
        )
    )


def _parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


# --- The rendered configs (no server) -----------------------------------------------


@pytest.mark.parametrize("model", ["deterioration", "deterioration_explain", "ood", "imaging"])
def test_every_shipped_model_rejects_requests_that_time_out_in_the_queue(model: str) -> None:
    config = _parse((SHIPPED / model / "config.pbtxt").read_text())
    assert config.name == model
    policy = config.dynamic_batching.default_queue_policy
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    assert policy.default_timeout_microseconds == QUEUE_TIMEOUT_MICROSECONDS > 0
    assert policy.allow_timeout_override
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert config.parameters["torch_num_threads"].string_value == "1"
    scoring = model in ("deterioration", "ood")
    assert [group.count for group in config.instance_group] == [
        SCORING_INSTANCE_COUNT if scoring else 1
    ]


# --- A separate Triton ----------------------------------------------------------------


class _Server:
    def __init__(self, grpc_url: str, logs: dict[str, Path]) -> None:
        self.grpc_url = grpc_url
        self.logs = logs

    def computed(self, model: str) -> list[str]:
        path = self.logs[model]
        return path.read_text().split() if path.exists() else []

    def wait_for(self, model: str, entry: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while entry not in self.computed(model):
            if time.monotonic() > deadline:
                raise AssertionError(f"{model}: no {entry!r} in {self.computed(model)}")
            time.sleep(0.02)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Server]:
    # A missing or broken tritonserver fails the test (StackError): `make test` installs it.
    root = tmp_path_factory.mktemp("triton_queue")
    repo = root / "repo"
    logs: dict[str, Path] = {}
    for name, policy in (("with_policy", True), ("without_policy", False)):
        (repo / name / "1").mkdir(parents=True)
        logs[name] = root / f"{name}.log"
        (repo / name / "config.pbtxt").write_text(_config(name, logs[name], policy=policy))
        (repo / name / "1" / "model.py").write_text(_MODEL_PY)
    with serving_triton(repo, root / "tritonserver.log", ready_seconds=90) as grpc_url:
        yield _Server(grpc_url, logs)


def _request(request_id: float) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("x", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[request_id]], np.float32))
    return [tensor]


def _occupy(server: _Server, model: str, request_id: float) -> threading.Thread:
    """Sends a request without a deadline and returns once the model is computing it."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    thread = threading.Thread(target=client.infer, args=(model, _request(request_id)))
    thread.start()
    server.wait_for(model, f"start:{request_id:g}")
    return thread


def _infer_through_the_adapter(
    server: _Server, model: str, request_id: float, deadline: float = SHORT_DEADLINE_SECONDS
) -> None:
    """One request through the worker's adapter with a deadline and no retry."""

    async def run() -> None:
        scorer = TritonScorer(
            server.grpc_url,
            model,
            timeout_seconds=deadline,
            retries=0,
            breaker=CircuitBreaker(5, 10.0, time.monotonic),
            batch_max_size=1,
            batch_max_wait_ms=0,
            metrics=WorkerMetrics(CollectorRegistry()),
        )
        await scorer.start()
        try:
            await scorer.infer({"x": np.array([request_id], np.float32)})
        finally:
            await scorer.close()

    asyncio.run(run())


@pytest.mark.slow
@pytest.mark.parametrize(("model", "policy"), [("with_policy", True), ("without_policy", False)])
def test_a_request_whose_client_gave_up_is_never_computed(
    server: _Server, model: str, policy: bool
) -> None:
    busy = _occupy(server, model, 1)
    # Queued behind the busy instance; the adapter gives up after its deadline.
    with pytest.raises(InferenceError):
        _infer_through_the_adapter(server, model, 2)
    # A request with a long deadline behind the same busy model is still computed.
    client = grpcclient.InferenceServerClient(server.grpc_url)
    result = client.infer(model, _request(3), timeout=30_000_000, client_timeout=30)
    assert result.as_numpy("y")[0, 0] == 3
    busy.join(timeout=30)
    computed = server.computed(model)
    assert "done:1" in computed
    assert "done:3" in computed
    if policy:
        assert "start:2" not in computed, computed
    else:  # the control: without the policy, Triton computes it for nobody
        assert "done:2" in computed, computed


@pytest.mark.slow
def test_the_adapter_passes_its_deadline_with_each_request(
    server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[object] = []
    original = grpcaio.InferenceServerClient.infer

    async def infer(self: grpcaio.InferenceServerClient, *args: Any, **kwargs: Any) -> Any:
        sent.append(kwargs.get("timeout"))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(grpcaio.InferenceServerClient, "infer", infer)
    _infer_through_the_adapter(server, "with_policy", 21, deadline=7.5)
    assert sent == [7_500_000]  # microseconds, the request's queue timeout
    assert "done:21" in server.computed("with_policy")


@pytest.mark.slow
def test_the_rejection_is_the_queue_timeout(server: _Server) -> None:
    model = "with_policy"
    busy = _occupy(server, model, 11)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    # No client-side deadline: what comes back is Triton's own answer.
    with pytest.raises(InferenceServerException, match=r"[Tt]imeout"):
        client.infer(model, _request(12), timeout=int(SHORT_DEADLINE_SECONDS * 1e6))
    busy.join(timeout=30)
    assert "start:12" not in server.computed(model)
