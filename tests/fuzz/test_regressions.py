"""Regressions found by the fuzz properties: each raw record once crashed the processor or
was accepted against the wire contract (docs/events.md, "Conventions")."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from streams.core.events import DeadLetterReason, TopicKind
from streams.core.pipeline import Processor, ProcessorConfig
from streams.core.state import Origin, Outcome, PatientState

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ORIGIN = Origin("fuzz.vitals", 3, 41)

VITALS: dict[str, Any] = {
    "schema_version": 1,
    "event_id": "ev-1",
    "patient_id": "p1",
    "event_time": "2024-05-01T10:00:00Z",
    "source": "monitor",
    "observations": [{"code": "HR", "value": 80, "unit": "/min"}],
}
ADMIT: dict[str, Any] = {
    "schema_version": 1,
    "event_id": "adt-1",
    "patient_id": "p1",
    "event_time": "2024-05-01T10:00:00Z",
    "source": "his",
    "action": "admit",
}
IMAGING: dict[str, Any] = {
    "schema_version": 1,
    "event_id": "img-1",
    "patient_id": "p1",
    "event_time": "2024-05-01T10:00:00Z",
    "source": "pacs",
    "study_id": "1.2.3",
    "modality": "CR",
    "image_uri": "file:///images/1.png",
}


def ingest(kind: TopicKind, payload: dict[str, Any] | bytes) -> tuple[Any, dict[str, Any]]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    states: dict[str, PatientState] = {}
    result = Processor(ProcessorConfig(), clock=lambda: NOW).ingest(
        states, kind, b"p1", raw, ORIGIN
    )
    return result, states


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        # Year 1 or 9999 with an offset overflowed in the UTC conversion (OverflowError
        # out of pydantic); year 1 in UTC overflowed later, in NEWS2's "at - max_age".
        (TopicKind.VITALS, {**VITALS, "event_time": "0001-01-01T00:00:00+01:00"}),
        (TopicKind.VITALS, {**VITALS, "event_time": "0001-01-01T00:00:00Z"}),
        (TopicKind.VITALS, {**VITALS, "event_time": "9999-12-31T23:59:59-01:00"}),
        (TopicKind.ADT, {**ADMIT, "hospital_admit_time": "0001-01-01T00:00:00+05:00"}),
        (TopicKind.IMAGING, {**IMAGING, "event_time": "0001-01-01T03:00:00Z"}),
        (TopicKind.VITALS, {**VITALS, "event_time": "1969-12-31T23:59:59.999Z"}),
        # Numbers were read as epoch seconds or milliseconds (guessed from their size).
        (TopicKind.VITALS, {**VITALS, "event_time": 1714557600}),
        (TopicKind.VITALS, {**VITALS, "event_time": 1714557600000}),
        (TopicKind.ADT, {**ADMIT, "event_time": 1714557600.5}),
        (TopicKind.ADT, {**ADMIT, "hospital_admit_time": True}),
        # Literal[1] took true and 1.0.
        (TopicKind.VITALS, {**VITALS, "schema_version": True}),
        (TopicKind.IMAGING, {**IMAGING, "schema_version": 1.0}),
    ],
)
def test_out_of_contract_times_and_versions_are_invalid_fields(
    kind: TopicKind, payload: dict[str, Any]
) -> None:
    result, states = ingest(kind, payload)
    assert result.deadletter is not None
    assert result.deadletter.reason is DeadLetterReason.INVALID_FIELD
    assert (result.deadletter.partition, result.deadletter.offset) == (3, 41)
    assert states == {}


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_imaging_metadata_is_non_finite(literal: bytes) -> None:
    # metadata values were `str | float | bool`, and float took NaN and Infinity.
    raw = json.dumps({**IMAGING, "metadata": {"kvp": "__X__"}}).encode()
    result, states = ingest(TopicKind.IMAGING, raw.replace(b'"__X__"', literal))
    assert result.deadletter is not None
    assert result.deadletter.reason is DeadLetterReason.NON_FINITE
    assert states == {}


def test_the_earliest_time_and_ordinary_metadata_are_accepted() -> None:
    result, _ = ingest(TopicKind.VITALS, {**VITALS, "event_time": "1970-01-01T00:00:00Z"})
    assert result.deadletter is None
    assert result.snapshot is not None
    metadata = {"view": "AP", "kvp": 120, "exposure": 2.5, "portable": True}
    result, _ = ingest(TopicKind.IMAGING, {**IMAGING, "metadata": metadata})
    assert result.deadletter is None
    assert result.imaging is not None
    assert result.imaging.metadata == metadata


def test_a_duplicate_study_is_not_handed_to_the_imaging_model() -> None:
    # ingest returned the event as `imaging` for a duplicate too, so the worker read and
    # analysed the pixels again (and dead-lettered an unreadable duplicate).
    processor = Processor(ProcessorConfig(), clock=lambda: NOW)
    states: dict[str, PatientState] = {}
    raw = json.dumps(IMAGING).encode()
    first = processor.ingest(states, TopicKind.IMAGING, b"p1", raw, ORIGIN)
    assert first.imaging is not None
    processor.add_study(states, first.imaging, None, ORIGIN)
    again = processor.ingest(states, TopicKind.IMAGING, b"p1", raw, Origin("fuzz.imaging", 3, 42))
    assert again.outcome is Outcome.DUPLICATE
    assert (again.imaging, again.deadletter, again.snapshot) == (None, None, None)
