"""What every replay format produces, and how files are read and merged in event time."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from streams.core.events import AdtEvent, ObservationEvent, TopicKind
from vigil.errors import ConfigError

__all__ = [
    "DEFAULT_ANCHOR",
    "Reader",
    "ReplayEvent",
    "ReplayReport",
    "merge",
    "one_line",
    "read_files",
    "replay_event",
]

DEFAULT_ANCHOR = datetime(2025, 1, 1, tzinfo=UTC)
"""Admission time of every replayed PhysioNet stay unless told otherwise."""


@dataclass(frozen=True, order=True)
class ReplayEvent:
    """One record to produce: ordered by event time, then patient, then sequence.

    Attributes:
        event_time: Event time (a recording's record timestamp), timezone-aware UTC.
        patient_id: Patient id; for a recording, its key as text ("" when none or binary).
        seq: Position within its file, to keep a file's order among equal times.
        kind: Topic kind; the topic is ``<prefix>.<kind>``.
        payload: Record value.
        key: Kafka key (the patient id for the PhysioNet and FHIR formats).
    """

    event_time: datetime
    patient_id: str
    seq: int
    kind: TopicKind
    payload: bytes
    key: bytes | None = field(compare=False)


@dataclass
class ReplayReport:
    """What a replay did."""

    produced: int = 0
    files_ok: int = 0
    files_failed: list[tuple[str, str]] | None = None

    @property
    def ok(self) -> bool:
        """True when every file was read."""
        return not self.files_failed


Reader = Callable[[Path], list[ReplayEvent]]
"""Reads one file into events sorted in event-time order; raises ConfigError."""


def read_files(
    paths: Sequence[Path],
    reader: Reader,
    on_error: Callable[[Path, str], None] | None = None,
) -> list[list[ReplayEvent]]:
    """Read each file with ``reader``; an unreadable file is reported and skipped.

    Args:
        paths: Input files.
        reader: One format's reader.
        on_error: Called with the path and reason of an unreadable file; None to raise.

    Returns:
        One event list per file that was read, each in event-time order.
    """
    per_file: list[list[ReplayEvent]] = []
    for path in paths:
        try:
            per_file.append(reader(path))
        except ConfigError as exc:
            if on_error is None:
                raise
            on_error(path, str(exc))
    return per_file


def merge(per_file: Sequence[Sequence[ReplayEvent]]) -> Iterator[ReplayEvent]:
    """Merge per-file event lists (each already sorted) into one event-time order."""
    return heapq.merge(*per_file)


def replay_event(record: ObservationEvent | AdtEvent, kind: TopicKind, seq: int) -> ReplayEvent:
    """Wrap an input event as a replay event keyed by its patient id."""
    return ReplayEvent(
        record.event_time,
        record.patient_id,
        seq,
        kind,
        record.model_dump_json().encode(),
        key=record.patient_id.encode(),
    )


def one_line(exc: ValueError) -> str:
    """A short reason for a refused value: a pydantic error's first location and message."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    return str(exc)
