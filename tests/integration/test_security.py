"""Secured Kafka and Redis, for real: clients built from the settings authenticate.

A throwaway KRaft broker with a SASL_SSL listener (SCRAM-SHA-512, certificate from a test
CA) and a throwaway ``redis-server`` with ``requirepass`` run on free loopback ports
(tests/integration/secured.py), apart from the main stack. Every client is built from
``WorkerSettings`` through ``streams.adapters.security``; wrong or missing credentials
must be refused, and no secret may appear in a log line or an error message.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError as AIOKafkaError
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from streams.adapters.lag import ConsumerLagMonitor
from streams.adapters.redis_store import RedisStore
from streams.adapters.security import (
    aiokafka_options,
    faust_credentials,
    kafka_python_options,
    redis_options,
)
from streams.adapters.topics import create_topics, missing_topics
from streams.core.events import TopicKind
from streams.metrics import WorkerMetrics
from streams.settings import WorkerSettings
from streams.wiring import create_worker
from tests.integration.secured import SecuredKafka, make_ca, start_kafka, start_redis
from tests.unit.test_events import score_record
from vigil.errors import TopicError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    folder = tmp_path_factory.mktemp("secured-kafka")
    try:
        with start_kafka(
            folder / "broker", make_ca(folder / "pki"), "vigil-worker", secrets.token_hex(16)
        ) as broker:
            yield broker
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def redis_password() -> str:
    return secrets.token_hex(16)


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory, redis_password: str) -> Iterator[int]:
    try:
        with start_redis(tmp_path_factory.mktemp("secured-redis"), redis_password) as port:
            yield port
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


def _kafka_settings(
    kafka: SecuredKafka, unique: str, password: str, *, admin_timeout_seconds: float = 10.0
) -> WorkerSettings:
    return WorkerSettings(
        kafka_admin_timeout_seconds=admin_timeout_seconds,
        kafka_bootstrap=kafka.bootstrap,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=kafka.username,
        kafka_sasl_password=password,
        kafka_ssl_cafile=kafka.ca_cert,
        topic_prefix=f"sec{unique}",
        app_id=f"sec-{unique}",
        topic_partitions=1,
    )


async def _consume(topic: str, bootstrap: str, options: dict[str, object], n: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        request_timeout_ms=10_000,
        **options,
    )
    try:
        await consumer.start()
        values: list[bytes] = []
        async with asyncio.timeout(30):
            async for message in consumer:
                values.append(message.value)
                if len(values) == n:
                    return values
    finally:
        await consumer.stop()  # also after a refused start
        # A TLS transport closes its socket a few loop iterations after close(): give it
        # them before asyncio.run closes the loop, or the socket is left to the garbage
        # collector, whose ResourceWarning fails whichever later test it runs in (a full
        # run on 6 Dec failed so in test_plaintext_client_gets_nothing_from_the_tls_listener).
        await asyncio.sleep(0.5)
    return values


def test_clients_built_from_settings_authenticate_with_scram_over_tls(
    kafka: SecuredKafka, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = _kafka_settings(kafka, unique, kafka.password)
    created = create_topics(settings)  # kafka-python admin
    vitals = settings.topic("vitals")
    assert vitals in created
    assert missing_topics(settings) == []

    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", **kafka_python_options(settings)
    )
    try:
        for i in range(3):
            producer.send(vitals, key=b"p1", value=f"v{i}".encode())
        producer.flush(timeout=20)
    finally:
        producer.close()

    expected = [b"v0", b"v1", b"v2"]
    assert asyncio.run(_consume(vitals, kafka.bootstrap, aiokafka_options(settings), 3)) == expected
    # What Faust hands to aiokafka for the worker's consumer, producer and admin.
    faust_auth = dict(credentials_to_aiokafka_auth(faust_credentials(settings)))
    assert faust_auth["security_protocol"] == "SASL_SSL"
    assert asyncio.run(_consume(vitals, kafka.bootstrap, faust_auth, 3)) == expected

    # The worker's consumer-lag monitor (kafka-python admin, run at start-up).
    monitor = ConsumerLagMonitor(settings, WorkerMetrics(CollectorRegistry()).consumer_lag)
    try:
        # A broker started moments ago may still be creating its offsets topic.
        deadline = time.monotonic() + 30
        while not (lags := monitor.update()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert lags[TopicKind.VITALS] == 3
    finally:
        monitor.close()
    create_worker(settings, worker_metrics=WorkerMetrics(CollectorRegistry()))

    # kafka-python logs every admin client's configuration at DEBUG: it was captured,
    # with the password masked.
    assert "Starting KafkaAdminClient with configuration" in caplog.text
    assert "'sasl_plain_password': '**********'" in caplog.text
    assert kafka.password not in caplog.text


def test_wrong_password_is_refused_without_echoing_it(
    kafka: SecuredKafka, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = secrets.token_hex(16)
    # A refusal is final; the admin client gives up after its timeout (4 s here).
    settings = _kafka_settings(kafka, unique, wrong, admin_timeout_seconds=4.0)
    with pytest.raises(TopicError) as refused:
        create_topics(settings)
    assert "over SASL_SSL" in str(refused.value)
    assert wrong not in str(refused.value)

    with pytest.raises(AIOKafkaError) as aio_refused:
        asyncio.run(
            _consume(settings.topic("vitals"), kafka.bootstrap, aiokafka_options(settings), 1)
        )
    assert wrong not in str(aio_refused.value)
    assert wrong not in caplog.text
    assert kafka.password not in caplog.text


def test_plaintext_client_gets_nothing_from_the_tls_listener(
    kafka: SecuredKafka, unique: str
) -> None:
    plain = WorkerSettings(
        kafka_bootstrap=kafka.bootstrap,
        topic_prefix=f"sec{unique}",
        kafka_admin_timeout_seconds=4.0,
    )
    with pytest.raises(TopicError):
        missing_topics(plain)


def _store(settings: WorkerSettings) -> RedisStore:
    client = aioredis.Redis.from_url(
        settings.redis_url, **redis_options(settings), socket_timeout=2.0
    )
    return RedisStore(
        client,
        prefix=f"sec{secrets.token_hex(4)}",
        ttl_seconds=60,
        metrics=WorkerMetrics(CollectorRegistry()),
    )


def test_redis_store_writes_with_the_password(redis_port: int, redis_password: str) -> None:
    settings = WorkerSettings(
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        redis_password=redis_password,
    )
    store = _store(settings)
    record = score_record()

    async def write() -> None:
        store.put_score(record)
        await store.flush()
        await store.client.aclose()

    asyncio.run(write())
    check = redis.Redis(port=redis_port, password=redis_password)
    try:
        stored = check.get(store.score_key(record.patient_id))
    finally:
        check.close()
    assert stored == record.model_dump_json().encode()


@pytest.mark.parametrize("given", [None, "wrong"])
def test_redis_store_without_the_right_password_fails_clearly(
    redis_port: int, redis_password: str, given: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = None if given is None else secrets.token_hex(16)
    settings = WorkerSettings(
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        redis_password=wrong,
    )
    store = _store(settings)

    async def write() -> None:
        store.put_score(score_record())
        try:
            await store.flush()
        finally:
            await store.client.aclose()

    with pytest.raises(redis.AuthenticationError) as refused:
        asyncio.run(write())
    message = str(refused.value)
    assert "authenticat" in message.lower() or "invalid username-password" in message
    assert store.pending == 1  # kept for a later flush, as while Redis is down
    for secret in (redis_password, wrong):
        if secret is not None:
            assert secret not in message
            assert secret not in caplog.text
