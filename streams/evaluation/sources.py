"""Read what ``vigil evaluate`` judges: recorded lines, a Kafka topic, outcome files.

The only module of the package that touches files or Kafka. A missing or unreadable
input is a :class:`~vigil.errors.ConfigError` (a bad argument); Kafka that cannot be
reached or a topic that does not exist is a :class:`~vigil.errors.TopicError`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from streams.datasets.physionet2012 import read_outcomes
from streams.evaluation.outcomes import StayOutcome, from_physionet2012, parse_psv
from vigil.errors import ConfigError, ModelError, TopicError

__all__ = ["read_file_lines", "read_outcomes_2012", "read_outcomes_2019", "read_topic_lines"]


def read_file_lines(path: Path) -> list[str]:
    """The lines of a JSONL file.

    Raises:
        ConfigError: The file cannot be read.
    """
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc


def read_topic_lines(
    topic: str,
    bootstrap: str,
    *,
    kafka_options: Mapping[str, Any] | None = None,
    idle_timeout_seconds: float = 30.0,
) -> Iterator[bytes]:
    """Every record value of ``topic``, from the beginning to the end offsets seen at start.

    Reads all partitions without a consumer group (nothing is committed) and stops once
    each partition reaches the end offset it had when reading began.

    Raises:
        TopicError: Kafka cannot be reached, the topic does not exist, or no record
            arrived for ``idle_timeout_seconds`` before the end was reached.
    """
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            **(kafka_options or {}),
        )
    except KafkaError as exc:
        raise TopicError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise TopicError(f"topic {topic!r} does not exist on {bootstrap}")
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        end = consumer.end_offsets(assigned)
        last_progress = time.monotonic()
        while any(consumer.position(tp) < end[tp] for tp in assigned):
            batch = consumer.poll(timeout_ms=1000)
            if batch:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > idle_timeout_seconds:
                raise TopicError(f"reading {topic!r} stalled before its end offsets")
            for tp, messages in batch.items():
                for message in messages:
                    if message.offset < end[tp] and message.value is not None:
                        yield message.value
    except KafkaError as exc:
        raise TopicError(f"cannot read {topic!r} from {bootstrap}: {exc}") from exc
    finally:
        consumer.close()


def read_outcomes_2012(path: Path) -> dict[str, StayOutcome]:
    """Outcomes of a PhysioNet 2012 ``Outcomes-a.txt``.

    Raises:
        ConfigError: The file is missing, unreadable or not an outcomes file.
    """
    try:
        return from_physionet2012(read_outcomes(path))
    except ModelError as exc:
        raise ConfigError(str(exc)) from exc


def read_outcomes_2019(paths: Sequence[Path]) -> tuple[dict[str, StayOutcome], list[str]]:
    """Outcomes of PhysioNet 2019 ``.psv`` files (folders are searched for ``*.psv``).

    Returns:
        Outcomes keyed by file stem, and ``"name: reason"`` of each file skipped as
        unreadable or malformed.

    Raises:
        ConfigError: A path does not exist, or no ``.psv`` file was found.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.rglob("*.psv")))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"no such file or folder: {path}")
    if not files:
        raise ConfigError("no .psv files under --outcomes")
    out: dict[str, StayOutcome] = {}
    skipped: list[str] = []
    for file in files:
        try:
            out[file.stem] = parse_psv(file.stem, file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            skipped.append(f"{file.name}: {exc}")
    return out, skipped
