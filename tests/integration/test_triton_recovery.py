"""The worker returns to model scoring on its own when Triton comes back (the real stack).

The worker reaches the real Triton through a TCP relay on loopback that the test can take
down and bring back, which is what a restarted or briefly unreachable Triton looks like to
the worker. While the relay is down, every stay is scored in degraded (NEWS2) mode; once
it is back, the circuit breaker's half-open probe succeeds and model scores resume without
restarting the worker.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaConsumer

from streams.adapters.topics import create_topics
from streams.replay import physionet2012_events, produce, read_length_of_stay
from streams.settings import WorkerSettings
from vigil.stack.settings import StackSettings
from vigil.testing.workers import free_port, running_worker, worker_env

DEMO = Path(__file__).resolve().parents[2] / "data" / "physionet2012-demo"
SLICES = 12  # the second half is produced in this many slices, about 3 s apart
RECOVERY_LIMIT_S = 90.0


class Relay:
    """Forwards TCP connections from a loopback port to ``target`` while it is up."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def down(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            with suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        with self._lock:
            for conn in self._conns:
                with suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@contextmanager
def _relay(port: int, target: tuple[str, int]) -> Iterator[Relay]:
    relay = Relay(port, target)
    try:
        yield relay
    finally:
        relay.down()


def _scores(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=2000
    )
    try:
        return [json.loads(m.value) for m in consumer]
    finally:
        consumer.close()


def _degraded_gauge(metrics_url: str) -> float | None:
    with suppress(httpx.HTTPError):
        for line in httpx.get(metrics_url, timeout=2).text.splitlines():
            if line.startswith("vigil_degraded "):
                return float(line.split()[1])
    return None


@pytest.mark.slow
def test_model_scoring_resumes_when_triton_returns(
    stack: StackSettings, unique: str, tmp_path: Path
) -> None:
    prefix = app_id = f"trec{unique}"
    settings = WorkerSettings(
        kafka_bootstrap=stack.kafka_bootstrap, topic_prefix=prefix, app_id=app_id
    )
    create_topics(settings)
    relay_port, metrics_port = free_port(), free_port()
    env = worker_env(
        stack,
        prefix=prefix,
        app_id=app_id,
        data_dir=tmp_path / "worker",
        triton_url=f"127.0.0.1:{relay_port}",
        triton_timeout_seconds="1.0",
        breaker_reset_seconds="2",
        metrics_port=str(metrics_port),
    )
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    paths = sorted((DEMO / "set-a").glob("*.txt"))[:10]
    events = list(
        physionet2012_events(paths, length_of_stay=read_length_of_stay(DEMO / "Outcomes-a.txt"))
    )
    half = len(events) // 2
    scores_topic = settings.topic("scores")
    triton = ("127.0.0.1", stack.triton_grpc_port)

    with _relay(relay_port, triton) as relay, running_worker(env, tmp_path / "worker.log"):
        # Triton unreachable: scores keep coming, degraded to NEWS2.
        produce(events[:half], bootstrap=stack.kafka_bootstrap, topic_prefix=prefix)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            before = _scores(stack.kafka_bootstrap, scores_topic)
            if len({s["patient_id"] for s in before}) == len(paths):
                break
            time.sleep(2)
        assert before
        assert all(s["degraded"] for s in before)
        assert _degraded_gauge(metrics_url) == 1.0

        # Triton back: model scores resume, the worker untouched. The second half goes in
        # slices, so there is input to score after the breaker's cool-down: produced all at
        # once, it was all processed (degraded) within the cool-down, and with no input
        # left no score could follow (the "stall" of docs/worker.md, "Restarts").
        relay.up()
        back = time.monotonic()
        second = events[half:]
        pending = [
            second[i * len(second) // SLICES : (i + 1) * len(second) // SLICES]
            for i in range(SLICES)
        ]
        recovered: list[dict[str, Any]] = []
        while time.monotonic() - back < RECOVERY_LIMIT_S and not recovered:
            if pending:
                produce(pending.pop(0), bootstrap=stack.kafka_bootstrap, topic_prefix=prefix)
            # Every score before the relay came up was degraded: any model score is after.
            recovered = [
                s for s in _scores(stack.kafka_bootstrap, scores_topic) if not s["degraded"]
            ]
            time.sleep(1)
        waited = time.monotonic() - back
        assert recovered, f"no model score within {waited:.0f}s after Triton came back"
        # The step model (the default) or, until its version is read again, the window model.
        models = ("deterioration_step", "deterioration")
        assert all(s["model"] in models and 0 <= s["risk"] <= 1 for s in recovered)
        assert _degraded_gauge(metrics_url) == 0.0
