"""The consumer-lag arithmetic and gauge updates (streams/adapters/lag.py), without Kafka."""

from __future__ import annotations

import pytest
from kafka.errors import KafkaConnectionError, KafkaError
from prometheus_client import CollectorRegistry

from streams.adapters.lag import ConsumerLagMonitor, topic_lag
from streams.core.events import TopicKind
from streams.metrics import WorkerMetrics
from streams.settings import WorkerSettings

_GAUGE = "vigil_consumer_lag_messages"


def test_lag_is_end_minus_committed_summed_over_partitions() -> None:
    assert topic_lag({0: 10, 1: 5}, {0: 4, 1: 5}, {0: 0, 1: 0}) == 6


def test_partitions_without_a_commit_count_from_the_earliest_offset() -> None:
    # Retention removed offsets 0-2 of partition 1; the worker would start at 3.
    assert topic_lag({0: 10, 1: 8}, {0: 10}, {0: 0, 1: 3}) == 5
    assert topic_lag({0: 10}, {0: -1}, {0: 2}) == 8  # -1: no committed offset


def test_empty_and_caught_up_topics_have_no_lag() -> None:
    assert topic_lag({}, {}, {}) == 0
    assert topic_lag({0: 0, 1: 0}, {}, {0: 0, 1: 0}) == 0
    assert topic_lag({0: 7}, {0: 7}, {0: 0}) == 0


def test_a_commit_past_the_end_is_not_negative_lag() -> None:
    # Possible for a moment after a topic is truncated and recreated.
    assert topic_lag({0: 3}, {0: 9}, {0: 0}) == 0


class _Monitor(ConsumerLagMonitor):
    """A monitor whose measurements are given (Kafka is covered by the integration test)."""

    def __init__(self, registry: CollectorRegistry, answers: list[object]) -> None:
        super().__init__(WorkerSettings(), WorkerMetrics(registry).consumer_lag)
        self.answers = answers

    def measure(self) -> dict[TopicKind, int]:
        answer = self.answers.pop(0)
        if isinstance(answer, KafkaError):
            raise answer
        assert isinstance(answer, dict)
        return answer


def test_update_sets_the_gauge_by_topic_kind() -> None:
    registry = CollectorRegistry()
    monitor = _Monitor(registry, [{TopicKind.VITALS: 12, TopicKind.LABS: 0}])
    assert monitor.update() == {TopicKind.VITALS: 12, TopicKind.LABS: 0}
    assert registry.get_sample_value(_GAUGE, {"topic": "vitals"}) == 12
    assert registry.get_sample_value(_GAUGE, {"topic": "labs"}) == 0


def test_a_kafka_error_keeps_the_last_values(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    monitor = _Monitor(registry, [{TopicKind.VITALS: 7}, KafkaConnectionError()])
    monitor.update()
    assert monitor.update() == {}
    assert registry.get_sample_value(_GAUGE, {"topic": "vitals"}) == 7
    assert "consumer lag not measured" in caplog.text


def test_monitor_names_the_input_topics_of_its_prefix() -> None:
    monitor = ConsumerLagMonitor(
        WorkerSettings(topic_prefix="ward"), WorkerMetrics(CollectorRegistry()).consumer_lag
    )
    assert set(monitor.topics) == {"ward.vitals", "ward.labs", "ward.imaging", "ward.adt"}
