"""Send replay events to Kafka in event-time order, optionally paced in event time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from streams.core.events import topic_name
from streams.replay.event import ReplayEvent
from vigil.errors import TopicError

__all__ = ["produce"]

_PROGRESS_INTERVAL_SECONDS = 0.1


def produce(
    events: Iterable[ReplayEvent],
    *,
    bootstrap: str,
    topic_prefix: str,
    kafka_options: Mapping[str, Any] | None = None,
    speed: float | None = None,
    limit: int | None = None,
    progress: Callable[[int, datetime], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Send events to ``<topic_prefix>.<kind>`` in order, with each event's key.

    Args:
        events: Events in event-time order.
        bootstrap: Kafka bootstrap servers.
        topic_prefix: Topic prefix (``vigil``).
        kafka_options: Security options (``streams.adapters.security.kafka_python_options``).
        speed: Event-time speed-up: gaps in event time are divided by it (``60`` = an
            hour per minute); None = as fast as Kafka takes them.
        limit: Stop after this many events.
        progress: Called with the count and the event time reached, at most every 0.1 s
            of wall time and once at the end.
        clock: Monotonic wall clock in seconds (injected by tests).
        sleep: Sleeps that many seconds (injected by tests).

    Returns:
        How many events were produced.

    Raises:
        TopicError: Kafka cannot be reached or refused a record.
    """
    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=5,
            # Retry until the delivery timeout (kafka-python's default, 120 s) rather than
            # five times: a broker that has just restarted or created the topic answers
            # NotLeaderForPartition for a while. One request in flight keeps the order.
            delivery_timeout_ms=120_000,
            max_in_flight_requests_per_connection=1,
            **(kafka_options or {}),
        )
    except KafkaError as exc:
        raise TopicError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    sent = 0
    # kafka-python's flush() does not raise for records it gave up on: collect them.
    failed: list[BaseException] = []
    first: datetime | None = None
    last: datetime | None = None
    started = clock()
    reported = started
    try:
        for event in events:
            if limit is not None and sent >= limit:
                break
            if speed is not None:
                first = first or event.event_time
                due = (event.event_time - first).total_seconds() / speed
                pause = due - (clock() - started)
                if pause > 0:
                    sleep(pause)
            producer.send(
                topic_name(event.kind, topic_prefix), key=event.key, value=event.payload
            ).add_errback(failed.append)
            sent += 1
            last = event.event_time
            if progress is not None and clock() - reported >= _PROGRESS_INTERVAL_SECONDS:
                reported = clock()
                progress(sent, last)
        producer.flush()
        if failed:
            raise TopicError(
                f"Kafka at {bootstrap} refused {len(failed)} of {sent} records: {failed[0]!r}"
            )
    except KafkaError as exc:
        raise TopicError(f"producing to Kafka at {bootstrap} failed: {exc}") from exc
    finally:
        producer.close()
    if progress is not None and last is not None:
        progress(sent, last)
    return sent
