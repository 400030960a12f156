"""Degraded operation on the real Kafka: no Triton, and Redis down then back.

The worker is pointed at a Triton address where nothing listens and at a Redis that is not
running yet. Every event must still be scored (degraded, with NEWS2), the degraded gauge
must show it, and once Redis starts the latest score of each patient must appear there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from kafka import KafkaConsumer

from streams.adapters.topics import create_topics
from streams.replay import physionet2012_events, produce, read_length_of_stay
from streams.settings import WorkerSettings
from vigil.stack.settings import StackSettings
from vigil.testing.workers import free_port, start_worker, stop_worker, worker_env

DEMO = Path(__file__).resolve().parents[2] / "data" / "physionet2012-demo"


def _scores(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=2000
    )
    try:
        return [json.loads(m.value) for m in consumer]
    finally:
        consumer.close()


@pytest.mark.slow
def test_scores_degrade_to_news2_and_redis_is_repopulated(
    stack: StackSettings, unique: str, tmp_path: Path
) -> None:
    redis_server = shutil.which("redis-server")
    assert redis_server is not None, "redis-server is required (apt-get install redis-server)"
    prefix = f"deg{unique}"
    settings = WorkerSettings(kafka_bootstrap=stack.kafka_bootstrap, topic_prefix=prefix)
    create_topics(settings)
    redis_port, metrics_port, dead_triton = free_port(), free_port(), free_port()
    env = worker_env(
        stack,
        prefix=prefix,
        app_id=prefix,
        data_dir=tmp_path / "worker",
        triton_url=f"127.0.0.1:{dead_triton}",
        triton_timeout_seconds="0.5",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        metrics_port=str(metrics_port),
    )
    paths = sorted((DEMO / "set-a").glob("*.txt"))[:20]
    events = list(
        physionet2012_events(paths, length_of_stay=read_length_of_stay(DEMO / "Outcomes-a.txt"))
    )
    expected = {json.loads(e.payload)["event_id"] for e in events}
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    redis_proc: subprocess.Popen[bytes] | None = None
    try:
        produce(events, bootstrap=stack.kafka_bootstrap, topic_prefix=prefix)
        deadline = time.monotonic() + 240
        scores: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            scores = _scores(stack.kafka_bootstrap, f"{prefix}.scores")
            if {i for s in scores for i in s["provenance"]["event_ids"]} >= expected:
                break
            assert worker.poll() is None, log.read_text()[-3000:]
            time.sleep(2)
        cited = [i for s in scores for i in s["provenance"]["event_ids"]]
        assert set(cited) == expected
        assert len(cited) == len(expected)
        assert all(s["degraded"] and s["risk"] is None for s in scores)
        assert {s["degraded_reason"] for s in scores} <= {"circuit_open", "inference_error"}
        assert all(s["news2"] is not None and s["model"] == "news2" for s in scores)
        alerts = _scores(stack.kafka_bootstrap, f"{prefix}.alerts")
        assert all(a["degraded"] and a["kind"] == "news2" for a in alerts)
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert "vigil_degraded 1.0" in text
        assert 'vigil_scores_total{degraded="true",model="news2"}' in text

        # Redis comes up: the buffered latest scores are written without new input.
        redis_proc = subprocess.Popen(
            [redis_server, "--bind", "127.0.0.1", "--port", str(redis_port), "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=redis_port)
        latest: dict[str, str] = {}
        for s in scores:
            if s["event_time"] >= latest.get(s["patient_id"], ""):
                latest[s["patient_id"]] = s["event_time"]
        deadline = time.monotonic() + 30
        stored: dict[str, Any] = {}
        while time.monotonic() < deadline and len(stored) < len(latest):
            for pid in latest:
                try:
                    value = client.get(f"{prefix}:patient:{pid}:score")
                except redis.ConnectionError:
                    value = None
                if value is not None:
                    stored[pid] = json.loads(value)
            time.sleep(0.5)
        client.close()
        assert set(stored) == set(latest)
        assert all(stored[pid]["event_time"] == latest[pid] for pid in latest)
    finally:
        stop_worker(worker)
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
