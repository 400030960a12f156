"""Consumer lag measured on the real Kafka (streams/adapters/lag.py)."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry

from streams.adapters.lag import ConsumerLagMonitor
from streams.adapters.topics import create_topics
from streams.core.events import TopicKind
from streams.metrics import WorkerMetrics
from streams.settings import WorkerSettings
from vigil.stack.settings import StackSettings

_GAUGE = "vigil_consumer_lag_messages"


def test_lag_follows_produced_and_committed_offsets(stack: StackSettings, unique: str) -> None:
    settings = WorkerSettings(
        kafka_bootstrap=stack.kafka_bootstrap,
        topic_prefix=f"lag{unique}",
        app_id=f"lag-{unique}",
        topic_partitions=2,
    )
    create_topics(settings)
    vitals = settings.topic("vitals")
    producer = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    assert producer.partitions_for(vitals) == {0, 1}  # metadata first: leaders are elected
    for i in range(10):
        producer.send(vitals, value=b"{}", partition=i % 2)
    producer.flush()
    producer.close()
    registry = CollectorRegistry()
    monitor = ConsumerLagMonitor(settings, WorkerMetrics(registry).consumer_lag)
    try:
        # Nothing committed: everything retained is lag. On a broker started moments ago
        # the first group lookup can fail while Kafka creates its offsets topic; the
        # monitor then logs it and reports nothing, so ask again for a while.
        deadline = time.monotonic() + 30
        while not (lags := monitor.update()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert lags == {k: 0 for k in (TopicKind.ADT, TopicKind.IMAGING, TopicKind.LABS)} | {
            TopicKind.VITALS: 10
        }
        assert registry.get_sample_value(_GAUGE, {"topic": "vitals"}) == 10

        consumer = KafkaConsumer(
            bootstrap_servers=stack.kafka_bootstrap,
            group_id=settings.app_id,
            enable_auto_commit=False,
        )
        try:
            consumer.commit(
                {
                    TopicPartition(vitals, 0): OffsetAndMetadata(5, "", -1),
                    TopicPartition(vitals, 1): OffsetAndMetadata(2, "", -1),
                }
            )
        finally:
            consumer.close()
        assert monitor.update()[TopicKind.VITALS] == 3
    finally:
        monitor.close()
