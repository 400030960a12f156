"""Consumer lag of the worker's group: messages not yet committed on each input topic.

The lag of a partition is its end offset minus the group's committed offset, or minus its
earliest offset while the group has committed nothing there (the worker starts from the
earliest record). A topic's lag is the sum over its partitions. The group's lag is the
same whichever worker measures it, so every worker reports all input topics and the
recording rule takes the maximum across workers (``vigil:consumer_lag_messages:max``).

The Kafka calls block: from the event loop, run :meth:`ConsumerLagMonitor.update` in a
thread (``await asyncio.to_thread(monitor.update)``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from kafka import TopicPartition
from kafka.admin import KafkaAdminClient, OffsetSpec
from kafka.errors import KafkaError
from prometheus_client import Gauge

from streams.adapters.security import kafka_python_options
from streams.core.events import INPUT_TOPICS, TopicKind, topic_name
from streams.settings import WorkerSettings

__all__ = ["ConsumerLagMonitor", "topic_lag"]

log = logging.getLogger(__name__)


def topic_lag(
    end: Mapping[int, int], committed: Mapping[int, int], earliest: Mapping[int, int]
) -> int:
    """Messages between the group's position and the end, summed over partitions.

    Args:
        end: End offset (the next offset to be written) by partition.
        committed: Committed offset by partition; partitions without one count from
            ``earliest``.
        earliest: Earliest retained offset by partition.
    """
    lag = 0
    for partition, end_offset in end.items():
        position = committed.get(partition)
        if position is None or position < 0:
            position = earliest.get(partition, 0)
        lag += max(end_offset - position, 0)
    return lag


class ConsumerLagMonitor:
    """Measures the group's lag on the input topics and sets a gauge labelled by topic kind.

    Args:
        settings: Worker settings (bootstrap, security, topic prefix, group = ``app_id``).
        gauge: Gauge with one label, ``topic`` (``vigil_consumer_lag_messages``).
        kinds: Topic kinds to measure (the input topics by default).
    """

    def __init__(
        self,
        settings: WorkerSettings,
        gauge: Gauge,
        kinds: frozenset[TopicKind] = INPUT_TOPICS,
    ) -> None:
        self.settings = settings
        self.gauge = gauge
        self.topics = {topic_name(k, settings.topic_prefix): k for k in sorted(kinds)}
        self._admin: KafkaAdminClient | None = None

    def measure(self) -> dict[TopicKind, int]:
        """Lag by topic kind (blocking; topics that do not exist are left out).

        Raises:
            KafkaError: Kafka could not be reached or answered with an error.
        """
        admin = self._client()
        described = admin.describe_topics(list(self.topics))
        partitions = [
            TopicPartition(topic["name"], p["partition_index"])
            for topic in described
            if topic["error_code"] == 0 and topic["name"] in self.topics
            for p in topic["partitions"]
        ]
        if not partitions:
            return {}
        end = admin.list_partition_offsets(dict.fromkeys(partitions, OffsetSpec.LATEST))
        earliest = admin.list_partition_offsets(dict.fromkeys(partitions, OffsetSpec.EARLIEST))
        group = self.settings.app_id
        committed = admin.list_group_offsets({group: partitions}).get(group, {})
        lags: dict[TopicKind, int] = {}
        for name, kind in self.topics.items():
            mine = [tp for tp in partitions if tp.topic == name]
            if not mine:
                continue
            lags[kind] = topic_lag(
                {tp.partition: end[tp].offset for tp in mine},
                {tp.partition: committed[tp].offset for tp in mine if tp in committed},
                {tp.partition: earliest[tp].offset for tp in mine},
            )
        return lags

    def update(self) -> dict[TopicKind, int]:
        """Measure and set the gauge; on a Kafka error, log it and keep the last values."""
        try:
            lags = self.measure()
        except KafkaError as exc:
            log.warning("consumer lag not measured: %s", exc)
            self.close()  # reconnect next time
            return {}
        for kind, lag in lags.items():
            self.gauge.labels(kind.value).set(lag)
        return lags

    def close(self) -> None:
        """Close the admin connection (reopened by the next measurement)."""
        if self._admin is not None:
            admin, self._admin = self._admin, None
            admin.close()

    def _client(self) -> KafkaAdminClient:
        if self._admin is None:
            self._admin = KafkaAdminClient(
                bootstrap_servers=self.settings.kafka_bootstrap,
                client_id=f"{self.settings.app_id}-lag",
                request_timeout_ms=int(self.settings.kafka_admin_timeout_seconds * 1000),
                bootstrap_timeout_ms=int(self.settings.kafka_admin_timeout_seconds * 1000),
                **kafka_python_options(self.settings),
            )
        return self._admin
