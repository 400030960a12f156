"""Each service of the local stack is the real thing, reached over its socket."""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from vigil.stack.settings import StackSettings


def _consume(
    settings: StackSettings, topic: str, group: str, expected: int
) -> list[tuple[bytes, bytes]]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=15_000,
    )
    got: list[tuple[bytes, bytes]] = []
    try:
        for message in consumer:
            got.append((message.key, message.value))
            if len(got) == expected:
                break
        consumer.commit()
    finally:
        consumer.close()
    return got


def test_kafka_round_trip_resumes_from_committed_offset(stack: StackSettings, unique: str) -> None:
    topic, group = f"it-roundtrip-{unique}", f"it-group-{unique}"
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        assert topic in admin.list_topics()
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    first = [(f"p{i % 3}".encode(), f"first-{i}".encode()) for i in range(6)]
    for key, value in first:
        producer.send(topic, key=key, value=value)
    producer.flush()

    assert sorted(_consume(stack, topic, group, len(first))) == sorted(first)

    second = [(b"p9", f"second-{i}".encode()) for i in range(3)]
    for key, value in second:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    # A new consumer in the same group starts at the committed offsets: only new records.
    assert sorted(_consume(stack, topic, group, len(second))) == sorted(second)

    consumer = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id=group)
    try:
        partitions = [TopicPartition(topic, p) for p in range(2)]
        committed = sum(consumer.committed(tp) or 0 for tp in partitions)
    finally:
        consumer.close()
    assert committed == len(first) + len(second)


def test_redis_round_trip(stack: StackSettings, unique: str) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    try:
        assert client.ping()
        key = f"vigil:test:{unique}"
        client.hset(key, mapping={"risk": "0.25", "band": "low"})
        client.expire(key, 60)
        assert client.hgetall(key) == {b"risk": b"0.25", b"band": b"low"}
        assert 0 < client.ttl(key) <= 60
        client.delete(key)
        assert client.exists(key) == 0
    finally:
        client.close()


_NP_DTYPES = {
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_INT64": np.int64,
    "TYPE_INT32": np.int32,
    "TYPE_BOOL": np.bool_,
}


def _example_inputs(config: dict[str, object], batch: int) -> dict[str, np.ndarray[Any, Any]]:
    inputs: dict[str, np.ndarray[Any, Any]] = {}
    rng = np.random.default_rng(0)
    for spec in config["input"]:  # type: ignore[attr-defined]
        # A variable dimension (-1, e.g. ct_denoise's image side) gets 48.
        dims = [int(d) if int(d) > 0 else 48 for d in spec["dims"]]
        shape = [batch, *dims] if int(config.get("max_batch_size", 0)) > 0 else dims  # type: ignore[call-overload]
        dtype = _NP_DTYPES[spec["data_type"]]
        inputs[spec["name"]] = (rng.random(shape) > 0.5).astype(dtype)
        if spec["name"] == "dose_fraction":  # ct_denoise takes a fraction in (0, 1]
            inputs[spec["name"]] = np.full(shape, 0.1, dtype=dtype)
    return inputs


def _metric(text: str, name: str, model: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_every_triton_model_answers_over_grpc_and_http(stack: StackSettings) -> None:
    http = httpclient.InferenceServerClient(stack.triton_http_url)
    grpc = grpcclient.InferenceServerClient(stack.triton_grpc_url)
    models = [m["name"] for m in http.get_model_repository_index() if m.get("state") == "READY"]
    repo_models = sorted(
        p.name for p in stack.triton_repo.iterdir() if (p / "config.pbtxt").exists()
    )
    assert sorted(models) == repo_models, "every model in triton_repo/ must load"
    metrics_url = f"http://{stack.host}:{stack.triton_metrics_port}/metrics"
    for name in models:
        config = http.get_model_config(name)
        before = _metric(httpx.get(metrics_url).text, "nv_inference_request_success", name)
        arrays = _example_inputs(config, batch=2)
        outputs = [o["name"] for o in config["output"]]

        h_in = []
        for key, array in arrays.items():
            tensor = httpclient.InferInput(key, list(array.shape), config_dtype(config, key))
            tensor.set_data_from_numpy(array)
            h_in.append(tensor)
        h_res = http.infer(
            name, h_in, outputs=[httpclient.InferRequestedOutput(o) for o in outputs]
        )

        g_in = []
        for key, array in arrays.items():
            tensor = grpcclient.InferInput(key, list(array.shape), config_dtype(config, key))
            tensor.set_data_from_numpy(array)
            g_in.append(tensor)
        g_res = grpc.infer(
            name, g_in, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs]
        )

        for out in outputs:
            h_arr, g_arr = h_res.as_numpy(out), g_res.as_numpy(out)
            assert h_arr is not None
            assert g_arr is not None
            assert h_arr.shape[0] == 2
            assert np.all(np.isfinite(h_arr))
            np.testing.assert_allclose(h_arr, g_arr, rtol=0, atol=1e-6)
        after = before
        for _ in range(20):  # the metrics endpoint refreshes on its own interval
            after = _metric(httpx.get(metrics_url).text, "nv_inference_request_success", name)
            if after >= before + 2:
                break
            time.sleep(0.25)
        assert after >= before + 2, f"{name}: inferences not counted in Triton's metrics"
    http.close()
    grpc.close()


def config_dtype(config: dict[str, object], name: str) -> str:
    """The tritonclient datatype string of input ``name`` from a model config."""
    for spec in config["input"]:  # type: ignore[attr-defined]
        if spec["name"] == name:
            return str(spec["data_type"]).removeprefix("TYPE_")
    raise KeyError(name)


def test_prometheus_scrapes_triton_and_answers_a_query(stack: StackSettings) -> None:
    query = f"{stack.prometheus_url}/api/v1/query"
    deadline = time.monotonic() + 30
    result: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        body = httpx.get(query, params={"query": 'up{job="triton"}'}, timeout=5).json()
        assert body["status"] == "success"
        result = body["data"]["result"]
        if result and result[0]["value"][1] == "1":  # type: ignore[index]
            break
        time.sleep(1)
    else:
        pytest.fail(f"Prometheus never saw Triton up: {result}")
    series = httpx.get(query, params={"query": "count(nv_inference_count)"}, timeout=5).json()[
        "data"
    ]["result"]
    deadline = time.monotonic() + 20
    while not series and time.monotonic() < deadline:
        time.sleep(1)
        series = httpx.get(query, params={"query": "count(nv_inference_count)"}, timeout=5).json()[
            "data"
        ]["result"]
    assert series, "Triton's inference counters never reached Prometheus"
