"""Producing: topics and keys, event-time pacing (--speed), limit and progress, no Kafka."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError

from streams.core.events import TopicKind
from streams.replay import DEFAULT_ANCHOR, produce
from streams.replay.event import ReplayEvent
from vigil.errors import TopicError


class _Sent:
    """The future kafka-python's send returns, failed or not."""

    def __init__(self, failed: bool) -> None:
        self.failed = failed

    def add_errback(self, errback: Any) -> None:
        if self.failed:
            errback(KafkaTimeoutError("gave up"))


class FakeProducer:
    """Stands in for kafka.KafkaProducer: remembers what was sent, and when."""

    instances: list[FakeProducer] = []  # noqa: RUF012 (test double)

    def __init__(self, clock: list[float], **config: Any) -> None:
        self.clock = clock
        self.config = config
        self.sent: list[tuple[float, str, bytes | None, bytes]] = []
        self.flushed = self.closed = False
        FakeProducer.instances.append(self)

    refuse: bytes | None = None
    """A value the broker gives up on (its errback is called)."""

    def send(self, topic: str, key: bytes | None, value: bytes) -> _Sent:
        self.sent.append((self.clock[0], topic, key, value))
        return _Sent(value == self.refuse)

    def flush(self) -> None:
        self.flushed = True

    def close(self) -> None:
        self.closed = True


def _events(minutes: list[int]) -> list[ReplayEvent]:
    return [
        ReplayEvent(
            DEFAULT_ANCHOR + timedelta(minutes=m),
            "p1",
            i,
            TopicKind.VITALS if i % 2 else TopicKind.ADT,
            f"e{i}".encode(),
            key=None if i == 2 else b"p1",
        )
        for i, m in enumerate(minutes)
    ]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    FakeProducer.instances.clear()
    monkeypatch.setattr(
        "streams.replay.producer.KafkaProducer",
        lambda **config: FakeProducer(now, **config),
    )
    return now


def _sleep(now: list[float]) -> Any:
    def sleep(seconds: float) -> None:
        now[0] += seconds

    return sleep


def test_speed_divides_event_time_gaps_and_keeps_topic_and_key(clock: list[float]) -> None:
    progress: list[tuple[int, datetime]] = []
    sent = produce(
        _events([0, 60, 60, 180]),
        bootstrap="k:9092",
        topic_prefix="run1",
        speed=60.0,  # an hour of event time per wall minute: 60 min -> 60 s
        progress=lambda n, at: progress.append((n, at)),
        clock=lambda: clock[0],
        sleep=_sleep(clock),
    )
    assert sent == 4
    producer = FakeProducer.instances[0]
    assert [(round(t - 100.0, 6), topic, key) for t, topic, key, _ in producer.sent] == [
        (0.0, "run1.adt", b"p1"),
        (60.0, "run1.vitals", b"p1"),
        (60.0, "run1.adt", None),
        (180.0, "run1.vitals", b"p1"),
    ]
    assert producer.flushed
    assert producer.closed
    assert progress[-1] == (4, DEFAULT_ANCHOR + timedelta(minutes=180))


def test_max_speed_never_sleeps_and_limit_stops(clock: list[float]) -> None:
    def no_sleep(seconds: float) -> None:
        raise AssertionError("slept at --speed max")

    sent = produce(
        _events([0, 600, 1200]),
        bootstrap="k:9092",
        topic_prefix="vigil",
        limit=2,
        clock=lambda: clock[0],
        sleep=no_sleep,
    )
    assert sent == 2
    assert [v for *_, v in FakeProducer.instances[0].sent] == [b"e0", b"e1"]


def test_kafka_unreachable_is_a_topic_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**config: Any) -> None:
        raise KafkaTimeoutError("no broker")

    monkeypatch.setattr("streams.replay.producer.KafkaProducer", refuse)
    with pytest.raises(TopicError, match="cannot reach Kafka at nowhere:1"):
        produce(_events([0]), bootstrap="nowhere:1", topic_prefix="vigil")


def test_a_record_kafka_gave_up_on_is_a_topic_error(
    monkeypatch: pytest.MonkeyPatch, clock: list[float]
) -> None:
    # kafka-python's flush() returns normally even when a record failed.
    monkeypatch.setattr(FakeProducer, "refuse", b"e1")
    with pytest.raises(TopicError, match="refused 1 of 3 records"):
        produce(_events([0, 1, 2]), bootstrap="x:1", topic_prefix="t")
