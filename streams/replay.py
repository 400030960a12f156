"""Replay recorded ICU stays into Vigil's input topics.

PhysioNet 2012 files become events exactly as a bedside integration would send them:
the 00:00 descriptors become an ``admit`` ADT event, and the observations that share a
time become one event per category (vitals, labs). Values are sent raw, artifacts
included: judging them is the worker's job. Times count from a fixed, configurable
admission anchor, so a replay is deterministic; event ids are derived from the record,
time and category, so replaying twice produces the same ids (and the worker ignores the
second copy as duplicates).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kafka import KafkaProducer

from models.physionet2012 import read_outcomes
from streams.core.codes import CODES, Category
from streams.core.events import AdtEvent, IcuType, Observation, ObservationEvent, TopicKind
from vigil.errors import ConfigError, ModelError

__all__ = [
    "DEFAULT_ANCHOR",
    "ReplayEvent",
    "ReplayReport",
    "physionet2012_events",
    "produce",
    "read_length_of_stay",
    "read_physionet2012",
]

DEFAULT_ANCHOR = datetime(2025, 1, 1, tzinfo=UTC)
"""Admission time of every replayed PhysioNet 2012 stay unless told otherwise."""

_DESCRIPTORS = {"RecordID", "Age", "Gender", "Height", "ICUType", "Weight"}
_SOURCE = "physionet2012-replay"


@dataclass(frozen=True, order=True)
class ReplayEvent:
    """One record to produce: ordered by event time, then patient, then sequence."""

    event_time: datetime
    patient_id: str
    seq: int
    kind: TopicKind
    payload: bytes


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


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def read_length_of_stay(outcomes: Path) -> dict[str, float]:
    """ICU length of stay in days per RecordID from ``Outcomes-a.txt`` (known ones only).

    Raises:
        ConfigError: The file cannot be read or is not a PhysioNet 2012 outcomes file.
    """
    try:
        rows = read_outcomes(outcomes)
    except ModelError as exc:
        raise ConfigError(str(exc)) from exc
    return {
        str(rid): row.length_of_stay_days
        for rid, row in rows.items()
        if row.length_of_stay_days is not None and row.length_of_stay_days > 0
    }


def read_physionet2012(
    path: Path,
    anchor: datetime = DEFAULT_ANCHOR,
    length_of_stay: Mapping[str, float] | None = None,
) -> list[ReplayEvent]:
    """Turn one PhysioNet 2012 stay file into time-ordered input events.

    When ``length_of_stay`` (days per RecordID, from ``Outcomes-a.txt``) knows the stay,
    a ``discharge`` ADT event closes it at admission plus that length of stay (and never
    before the last observation).

    Raises:
        ConfigError: The file cannot be read or is not a PhysioNet 2012 stay; the message
            names the file and the line.
    """
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: unreadable: {exc}") from exc
    if not lines or lines[0].strip() != "Time,Parameter,Value":
        raise ConfigError(f"{path.name}: not a PhysioNet 2012 file (bad header)")
    descriptors: dict[str, float] = {}
    groups: dict[tuple[int, TopicKind], list[list[tuple[str, float]]]] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            stamp, parameter, raw_value = line.split(",")
            minute = _minutes(stamp)
            value = float(raw_value)
        except ValueError as exc:
            raise ConfigError(f"{path.name}:{number}: malformed line {line!r}") from exc
        if minute == 0 and parameter in _DESCRIPTORS and parameter not in descriptors:
            descriptors[parameter] = value
            continue
        info = CODES.get(parameter)
        if info is None:
            raise ConfigError(f"{path.name}:{number}: unknown parameter {parameter!r}")
        kind = TopicKind.LABS if info.category is Category.LAB else TopicKind.VITALS
        batches = groups.setdefault((minute, kind), [[]])
        if any(code == parameter for code, _ in batches[-1]):
            batches.append([])  # same parameter twice at one time: a second event
        batches[-1].append((parameter, value))
    if "RecordID" not in descriptors:
        raise ConfigError(f"{path.name}: no RecordID descriptor")
    patient_id = str(int(descriptors["RecordID"]))
    events = [_admit(patient_id, descriptors, anchor)]
    for (minute, kind), batches in sorted(groups.items()):
        at = anchor + timedelta(minutes=minute)
        for index, batch in enumerate(batches):
            event = ObservationEvent(
                event_id=f"p12-{patient_id}-{minute}-{kind.value}-{index}",
                patient_id=patient_id,
                event_time=at,
                source=_SOURCE,
                observations=tuple(
                    Observation(code=code, value=value, unit=CODES[code].unit)
                    for code, value in batch
                ),
            )
            events.append(
                ReplayEvent(at, patient_id, len(events), kind, event.model_dump_json().encode())
            )
    length_of_stay_days = None if length_of_stay is None else length_of_stay.get(patient_id)
    if length_of_stay_days is not None:
        last = max(e.event_time for e in events)
        at = max(anchor + timedelta(days=length_of_stay_days), last + timedelta(minutes=1))
        discharge = AdtEvent(
            event_id=f"p12-{patient_id}-discharge",
            patient_id=patient_id,
            event_time=at,
            source=_SOURCE,
            action="discharge",
        )
        events.append(
            ReplayEvent(
                at, patient_id, len(events), TopicKind.ADT, discharge.model_dump_json().encode()
            )
        )
    return events


def _admit(patient_id: str, d: dict[str, float], anchor: datetime) -> ReplayEvent:
    def known(name: str) -> float | None:
        value = d.get(name)
        return None if value is None or value < 0 else value

    gender = known("Gender")
    icu = known("ICUType")
    event = AdtEvent(
        event_id=f"p12-{patient_id}-admit",
        patient_id=patient_id,
        event_time=anchor,
        source=_SOURCE,
        action="admit",
        age_years=known("Age"),
        sex=None if gender is None else ("male" if gender == 1 else "female"),
        height_cm=known("Height"),
        weight_kg=known("Weight"),
        icu_type=None if icu is None else IcuType.from_physionet(int(icu)),
    )
    return ReplayEvent(anchor, patient_id, 0, TopicKind.ADT, event.model_dump_json().encode())


def physionet2012_events(
    paths: Sequence[Path],
    *,
    anchor: datetime = DEFAULT_ANCHOR,
    length_of_stay: Mapping[str, float] | None = None,
    on_error: Callable[[Path, str], None] | None = None,
) -> Iterator[ReplayEvent]:
    """All stays' events merged in event-time order; unreadable files are reported and
    skipped.

    Args:
        paths: Stay files.
        anchor: Admission time of every stay.
        length_of_stay: Days per RecordID; stays found there end with a discharge.
        on_error: Called with the path and reason of an unreadable file; None to raise.
    """
    per_stay: list[list[ReplayEvent]] = []
    for path in paths:
        try:
            per_stay.append(read_physionet2012(path, anchor, length_of_stay))
        except ConfigError as exc:
            if on_error is None:
                raise
            on_error(path, str(exc))
    return heapq.merge(*per_stay)


def produce(
    events: Iterable[ReplayEvent],
    *,
    bootstrap: str,
    topic_prefix: str,
    speed: float | None = None,
    limit: int | None = None,
    progress: Callable[[int, datetime], None] | None = None,
) -> int:
    """Send events to Kafka in order, keyed by patient id.

    Args:
        events: Events in event-time order.
        bootstrap: Kafka bootstrap servers.
        topic_prefix: Topic prefix (``vigil``).
        speed: Event-time speed-up (``60`` = an hour per minute); None = as fast as
            Kafka takes them.
        limit: Stop after this many events.
        progress: Called with the count and event time now and then.

    Returns:
        How many events were produced.
    """
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        retries=5,
        max_in_flight_requests_per_connection=1,
    )
    sent = 0
    first: datetime | None = None
    started = time.monotonic()
    try:
        for event in events:
            if limit is not None and sent >= limit:
                break
            if speed is not None:
                first = first or event.event_time
                due = (event.event_time - first).total_seconds() / speed
                pause = due - (time.monotonic() - started)
                if pause > 0:
                    time.sleep(pause)
            producer.send(
                f"{topic_prefix}.{event.kind.value}",
                key=event.patient_id.encode(),
                value=event.payload,
            )
            sent += 1
            if progress is not None and sent % 500 == 0:
                progress(sent, event.event_time)
        producer.flush()
    finally:
        producer.close()
    return sent
