"""Record Kafka topics into Vigil's recording format (see :mod:`streams.replay.jsonl`)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from streams.core.events import TopicKind, topic_name
from streams.replay.jsonl import RecordedMessage
from vigil.errors import ConfigError, TopicError

__all__ = ["record", "resolve_topics"]

_POLL_MS = 200


def resolve_topics(names: Sequence[str], topic_prefix: str) -> list[str]:
    """Full topic names: a bare kind (``vitals``) gets the prefix, anything else is kept.

    Raises:
        ConfigError: No topic was named.
    """
    if not names:
        raise ConfigError("name at least one topic")
    kinds = {kind.value: kind for kind in TopicKind}
    resolved = [topic_name(kinds[n], topic_prefix) if n in kinds else n for n in names]
    return list(dict.fromkeys(resolved))


def record(
    topics: Sequence[str],
    out: Path,
    *,
    bootstrap: str,
    kafka_options: Mapping[str, Any] | None = None,
    from_beginning: bool = False,
    until_idle: timedelta | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Append every record of ``topics`` to ``out`` (JSON Lines), one line per record.

    The file is replaced. Lines are flushed after each poll, so what was recorded is on
    disk if the process is stopped.

    Args:
        topics: Full topic names (see :func:`resolve_topics`).
        out: Output file.
        bootstrap: Kafka bootstrap servers.
        kafka_options: Security options (``streams.adapters.security.kafka_python_options``).
        from_beginning: Start at each partition's earliest offset instead of its end.
        until_idle: Stop when no record arrived for this long; None = until ``stop``.
        stop: Set to stop recording. KeyboardInterrupt (Ctrl-C) stops it too, keeping
            what was written.
        progress: Called with 0 once every partition's start offset is known (records
            sent from then on are recorded), then with the count after each poll that
            returned records.
        clock: Monotonic wall clock in seconds (injected by tests).

    Returns:
        How many records were written.

    Raises:
        TopicError: Kafka cannot be reached or a topic does not exist.
        ConfigError: ``out`` cannot be written.
    """
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            **(kafka_options or {}),
        )
    except KafkaError as exc:
        raise TopicError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        partitions = _partitions(consumer, topics)
        consumer.assign(partitions)
        if from_beginning:
            consumer.seek_to_beginning(*partitions)
        else:
            consumer.seek_to_end(*partitions)
        for partition in partitions:
            consumer.position(partition)  # resolve now: later records are recorded
        return _drain(consumer, out, until_idle, stop, progress, clock)
    except KafkaError as exc:
        raise TopicError(f"recording from Kafka at {bootstrap} failed: {exc}") from exc
    finally:
        consumer.close()


def _partitions(consumer: KafkaConsumer, topics: Sequence[str]) -> list[TopicPartition]:
    partitions: list[TopicPartition] = []
    for topic in topics:
        numbers = consumer.partitions_for_topic(topic)
        if not numbers:
            raise TopicError(f"no such topic: {topic}")
        partitions.extend(TopicPartition(topic, n) for n in sorted(numbers))
    return partitions


def _drain(
    consumer: KafkaConsumer,
    out: Path,
    until_idle: timedelta | None,
    stop: threading.Event | None,
    progress: Callable[[int], None] | None,
    clock: Callable[[], float],
) -> int:
    written = 0
    last_seen = clock()
    try:
        handle = out.open("w", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc}") from exc
    if progress is not None:
        progress(0)
    with handle, contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends a recording
        while stop is None or not stop.is_set():
            batches = consumer.poll(timeout_ms=_POLL_MS)
            for records in batches.values():
                for r in records:
                    line = RecordedMessage.from_kafka(
                        r.topic, r.partition, r.offset, r.timestamp, r.key, r.value
                    )
                    handle.write(line.to_line() + "\n")
                    written += 1
            if batches:
                handle.flush()
                last_seen = clock()
                if progress is not None:
                    progress(written)
            elif until_idle is not None and clock() - last_seen >= until_idle.total_seconds():
                break
    return written
