from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from streams.core.events import (
    INPUT_TOPICS,
    MAX_INLINE_IMAGE_BYTES,
    AdtEvent,
    AlertRecord,
    DeadLetterReason,
    DeadLetterRecord,
    IcuType,
    ImagingEvent,
    News2Score,
    Observation,
    ObservationEvent,
    OffsetRange,
    Provenance,
    ScoreRecord,
    TopicKind,
    make_alert_id,
    topic_name,
)
from vigil.errors import ConfigError

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def observation_event(**changes: Any) -> ObservationEvent:
    fields: dict[str, Any] = {
        "event_id": "evt-1",
        "patient_id": "132539",
        "event_time": T0,
        "source": "monitor/bed-7",
        "observations": (
            Observation(code="HR", value=72.0, unit="/min"),
            Observation(code="SpO2", value=0.0, unit="%"),
        ),
    }
    return ObservationEvent(**(fields | changes))


def news2() -> News2Score:
    return News2Score(
        total=5,
        band="medium",
        parameters={"respiration_rate": 2, "pulse": 1, "temperature": 0, "spo2": 2},
        missing=("consciousness", "systolic_bp", "air_or_oxygen"),
    )


def score_record(**changes: Any) -> ScoreRecord:
    fields: dict[str, Any] = {
        "patient_id": "132539",
        "event_time": T0,
        "risk": 0.42,
        "news2": news2(),
        "model": "deterioration_gru",
        "model_version": "3",
        "degraded": False,
        "provenance": Provenance(
            code_version="0.1.0",
            event_ids=("evt-1", "evt-2"),
            offsets=(
                OffsetRange(topic="vigil.vitals", partition=0, first_offset=10, last_offset=12),
            ),
        ),
        "processing_time": T0 + timedelta(seconds=1),
    }
    return ScoreRecord(**(fields | changes))


def alert_record() -> AlertRecord:
    return AlertRecord(
        alert_id=make_alert_id("132539", "deterioration", T0),
        patient_id="132539",
        event_time=T0,
        kind="deterioration",
        severity="high",
        state="open",
        risk=0.81,
        news2=news2(),
        reason="risk_above_threshold",
        explanation="risk 0.81 >= 0.7 for 2 consecutive scores",
        contributing=("RespRate", "spo2"),
        policy_version="1",
        degraded=False,
        processing_time=T0,
    )


def records() -> list[BaseModel]:
    return [
        observation_event(),
        AdtEvent(
            event_id="adt-1",
            patient_id="132539",
            event_time=T0,
            source="his",
            action="admit",
            age_years=54.0,
            sex="female",
            height_cm=None,
            weight_kg=80.5,
            icu_type=IcuType.SURGICAL,
            care_unit="SICU-3",
            hospital_admit_time=T0 - timedelta(hours=5),
        ),
        AdtEvent(event_id="adt-2", patient_id="1", event_time=T0, source="his", action="discharge"),
        ImagingEvent(
            event_id="img-1",
            patient_id="132539",
            event_time=T0,
            source="pacs",
            study_id="1.2.840.113619.2",
            modality="CR",
            image_uri="s3://bucket/key.dcm",
            content_type="application/dicom",
            metadata={"view": "AP", "rows": 28, "portable": True},
        ),
        ImagingEvent(
            event_id="img-2",
            patient_id="132539",
            event_time=T0,
            source="pacs",
            study_id="s2",
            modality="DX",
            inline_data=bytes(range(256)),
        ),
        score_record(),
        score_record(risk=None, degraded=True, degraded_reason="circuit_open", news2=None),
        alert_record(),
        DeadLetterRecord(
            reason=DeadLetterReason.UNKNOWN_CODE,
            detail="code 'Foo' is not in the vocabulary",
            payload='{"x": 1}',
            payload_encoding="utf-8",
            payload_size_bytes=8,
            payload_truncated=False,
            source_topic="vigil.vitals",
            partition=3,
            offset=0,
            key="132539",
            received_time=T0,
        ),
    ]


@pytest.mark.parametrize("record", records(), ids=lambda r: type(r).__name__)
def test_json_round_trip(record: BaseModel) -> None:
    wire = record.model_dump_json()
    assert type(record).model_validate_json(wire) == record
    assert json.loads(wire)["schema_version"] == 1


@pytest.mark.parametrize("record", records(), ids=lambda r: type(r).__name__)
def test_records_are_frozen(record: BaseModel) -> None:
    with pytest.raises(ValidationError):
        record.schema_version = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("record", records(), ids=lambda r: type(r).__name__)
def test_unknown_fields_and_versions_are_rejected(record: BaseModel) -> None:
    data = json.loads(record.model_dump_json())
    with pytest.raises(ValidationError, match="Extra inputs"):
        type(record).model_validate(data | {"surprise": 1})
    with pytest.raises(ValidationError, match="schema_version"):
        type(record).model_validate(data | {"schema_version": 2})


def test_datetimes_on_the_wire_are_utc() -> None:
    wire = json.loads(observation_event().model_dump_json())
    assert wire["event_time"] == "2024-05-01T12:00:00Z"


def test_offsets_are_normalised_to_utc() -> None:
    local = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    event = observation_event(event_time=local)
    assert event.event_time == T0
    assert event.event_time.utcoffset() == timedelta(0)


def test_naive_event_time_is_rejected() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        observation_event(event_time=datetime(2024, 5, 1, 12, 0))  # noqa: DTZ001


@pytest.mark.parametrize(
    "changes",
    [
        {"patient_id": ""},
        {"patient_id": " 1"},
        {"patient_id": "x" * 65},
        {"event_id": ""},
        {"source": ""},
        {"observations": ()},
        {"observations": (Observation(code="HR", value=1.0, unit="/min"),) * 2},
        {"observations": tuple(Observation(code=f"C{i}", value=1.0, unit="1") for i in range(257))},
    ],
)
def test_invalid_observation_events(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        observation_event(**changes)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), "72", True])
def test_observation_value_must_be_a_finite_number(value: object) -> None:
    with pytest.raises(ValidationError):
        Observation(code="HR", value=value, unit="/min")


def test_observation_accepts_integers() -> None:
    observation = Observation.model_validate_json('{"code": "HR", "value": 72, "unit": "/min"}')
    assert observation.value == 72.0


def test_imaging_needs_pixels() -> None:
    with pytest.raises(ValidationError, match="image_uri or inline_data"):
        ImagingEvent(
            event_id="i", patient_id="p", event_time=T0, source="s", study_id="s", modality="CT"
        )


@pytest.mark.parametrize("uri", ["ftp://x/y", "bucket/key", "s3://", "file:///a b"])
def test_imaging_uri_schemes(uri: str) -> None:
    with pytest.raises(ValidationError):
        ImagingEvent(
            event_id="i",
            patient_id="p",
            event_time=T0,
            source="s",
            study_id="s",
            modality="CT",
            image_uri=uri,
        )


def test_imaging_inline_limit() -> None:
    fields: dict[str, Any] = {
        "event_id": "i",
        "patient_id": "p",
        "event_time": T0,
        "source": "s",
        "study_id": "s",
        "modality": "CT",
    }
    ImagingEvent(**fields, inline_data=b"\0" * MAX_INLINE_IMAGE_BYTES)
    with pytest.raises(ValidationError, match="inline_data"):
        ImagingEvent(**fields, inline_data=b"\0" * (MAX_INLINE_IMAGE_BYTES + 1))


def test_inline_data_is_base64url_on_the_wire() -> None:
    event = records()[4]
    assert isinstance(event, ImagingEvent)
    encoded = json.loads(event.model_dump_json())["inline_data"]
    assert "+" not in encoded
    assert "/" not in encoded


def test_score_without_risk_must_be_degraded() -> None:
    with pytest.raises(ValidationError, match="degraded"):
        score_record(risk=None)


@pytest.mark.parametrize("risk", [-0.01, 1.01, float("nan")])
def test_risk_is_a_probability(risk: float) -> None:
    with pytest.raises(ValidationError):
        score_record(risk=risk)


def test_news2_bounds() -> None:
    with pytest.raises(ValidationError):
        News2Score(total=21, band="high", parameters={})
    with pytest.raises(ValidationError):
        News2Score(total=3, band="low_medium", parameters={"pulse": 4})
    with pytest.raises(ValidationError):
        News2Score(total=3, band="low", parameters={"heart": 3})


def test_offset_range_is_ordered() -> None:
    with pytest.raises(ValidationError, match="last_offset"):
        OffsetRange(topic="t", partition=0, first_offset=5, last_offset=4)


def test_alert_id_is_deterministic_and_hides_the_patient() -> None:
    first = make_alert_id("132539", "deterioration", T0)
    same_instant = T0.astimezone(timezone(timedelta(hours=-5)))
    assert make_alert_id("132539", "deterioration", same_instant) == first
    assert make_alert_id("132540", "deterioration", T0) != first
    assert make_alert_id("132539", "news2", T0) != first
    assert make_alert_id("132539", "deterioration", T0 + timedelta(seconds=1)) != first
    assert "132539" not in first
    assert len(first) == 32
    with pytest.raises(ValueError, match="timezone"):
        make_alert_id("1", "k", datetime(2024, 1, 1))  # noqa: DTZ001


def test_topic_names() -> None:
    assert topic_name(TopicKind.VITALS) == "vigil.vitals"
    assert topic_name(TopicKind.DEADLETTER, "test-42") == "test-42.deadletter"
    assert {kind.value for kind in TopicKind} == {
        "vitals",
        "labs",
        "imaging",
        "adt",
        "scores",
        "alerts",
        "deadletter",
        "findings",
        "acks",
        "audit",
        "explanations",
    }
    assert {TopicKind.VITALS, TopicKind.LABS, TopicKind.IMAGING, TopicKind.ADT} == INPUT_TOPICS


@pytest.mark.parametrize("prefix", ["", "a b", "ü", "x" * 201])
def test_invalid_topic_prefix(prefix: str) -> None:
    with pytest.raises(ConfigError):
        topic_name(TopicKind.VITALS, prefix)


def test_icu_type_physionet_numbers() -> None:
    assert [IcuType.from_physionet(n) for n in (1, 2, 3, 4)] == list(IcuType)
    assert [member.physionet for member in IcuType] == [1, 2, 3, 4]
    for bad in (0, 5, -1):
        with pytest.raises(ValueError, match="ICUType"):
            IcuType.from_physionet(bad)


def test_dead_letter_reasons() -> None:
    assert {reason.value for reason in DeadLetterReason} == {
        "payload_too_large",
        "invalid_json",
        "missing_field",
        "invalid_field",
        "naive_timestamp",
        "unknown_code",
        "unknown_unit",
        "non_finite",
        "future_event",
        "too_late",
        "duplicate",
        "unknown_alert",
        "alert_resolved",
        "missing_user",
        "missing_reason",
        "snooze_expired",
        "snooze_too_long",
        "image_unavailable",
        "image_unreadable",
        "inference_failed",
    }


@given(
    value=st.floats(allow_nan=False, allow_infinity=False),
    seconds=st.integers(min_value=0, max_value=10**10),
)
def test_observation_event_round_trip_property(value: float, seconds: int) -> None:
    event = observation_event(
        event_time=datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds),
        observations=(Observation(code="HR", value=value, unit="/min"),),
    )
    assert ObservationEvent.model_validate_json(event.model_dump_json()) == event
