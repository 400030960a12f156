"""PhysioNet 2012 stay files (``Time,Parameter,Value``) as replay events.

PhysioNet 2012 files become events exactly as a bedside integration would send them:
the 00:00 descriptors become an ``admit`` ADT event, and the observations that share a
time become one event per category (vitals, labs). Values are sent raw, artifacts
included: judging them is the worker's job. Times count from a fixed, configurable
admission anchor, so a replay is deterministic; event ids are derived from the record,
time and category, so replaying twice produces the same ids (and the worker ignores the
second copy as duplicates).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

from streams.core.codes import CODES, Category
from streams.core.events import AdtEvent, IcuType, Observation, ObservationEvent, TopicKind
from streams.datasets.physionet2012 import read_outcomes
from streams.replay.event import (
    DEFAULT_ANCHOR,
    ReplayEvent,
    merge,
    one_line,
    read_files,
    replay_event,
)
from vigil.errors import ConfigError, ModelError

__all__ = [
    "physionet2012_events",
    "read_length_of_stay",
    "read_physionet2012",
]

_DESCRIPTORS = {"RecordID", "Age", "Gender", "Height", "ICUType", "Weight"}
_SOURCE = "physionet2012-replay"


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
    try:
        return _stay_events(descriptors, groups, anchor, length_of_stay)
    except ValueError as exc:  # a value or descriptor that the event records refuse
        raise ConfigError(f"{path.name}: {one_line(exc)}") from exc


def _stay_events(
    descriptors: dict[str, float],
    groups: dict[tuple[int, TopicKind], list[list[tuple[str, float]]]],
    anchor: datetime,
    length_of_stay: Mapping[str, float] | None,
) -> list[ReplayEvent]:
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
            events.append(replay_event(event, kind, len(events)))
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
        events.append(replay_event(discharge, TopicKind.ADT, len(events)))
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
    return replay_event(event, TopicKind.ADT, 0)


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
    reader = partial(read_physionet2012, anchor=anchor, length_of_stay=length_of_stay)
    return merge(read_files(paths, reader, on_error))
