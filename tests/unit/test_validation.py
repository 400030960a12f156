from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.events import AdtEvent, DeadLetterRecord, ImagingEvent, TopicKind
from streams.core.validation import (
    CanonicalObservation,
    DeadLetterReason,
    dead_letter,
    decode_input,
)
from vigil.errors import SchemaError

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LIMITS: dict[str, Any] = {"now": NOW, "max_future": timedelta(minutes=5), "max_bytes": 65_536}
PATIENT = "132539"


def vitals(**changes: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": "evt-1",
        "patient_id": PATIENT,
        "event_time": "2024-05-01T11:59:00Z",
        "source": "monitor-7",
        "observations": [
            {"code": "HR", "value": 0, "unit": "bpm"},
            {"code": "Temp", "value": 98.6, "unit": "[degF]"},
            {"code": "FiO2", "value": 40, "unit": "%"},
        ],
    } | changes


def encode(data: object) -> bytes:
    return json.dumps(data).encode()


def reason_of(kind: TopicKind, raw: bytes, **limits: Any) -> str:
    with pytest.raises(SchemaError) as caught:
        decode_input(kind, raw, **(LIMITS | limits))
    assert PATIENT not in caught.value.detail
    return caught.value.reason


def test_valid_vitals_are_normalised() -> None:
    decoded = decode_input(TopicKind.VITALS, encode(vitals()), **LIMITS)
    assert decoded.observations == (
        CanonicalObservation("HR", 0.0, "/min", artifact=False),
        CanonicalObservation("Temp", pytest.approx(37.0), "Cel", artifact=False),  # type: ignore[arg-type]
        CanonicalObservation("FiO2", 0.4, "1", artifact=False),
    )
    assert decoded.artifacts == ()
    assert len(decoded.valid) == 3
    assert decoded.event.patient_id == PATIENT


def test_labs_use_the_same_record() -> None:
    raw = encode(vitals(observations=[{"code": "Glucose", "value": 5.5, "unit": "mmol/L"}]))
    decoded = decode_input(TopicKind.LABS, raw, **LIMITS)
    assert decoded.valid[0].value == pytest.approx(99.0858)
    assert decoded.valid[0].unit == "mg/dL"


def test_artifacts_are_reported_not_raised() -> None:
    raw = encode(
        vitals(
            observations=[
                {"code": "Temp", "value": -17.8, "unit": "Cel"},
                {"code": "pH", "value": 735, "unit": "[pH]"},
                {"code": "HR", "value": 80, "unit": "/min"},
            ]
        )
    )
    decoded = decode_input(TopicKind.VITALS, raw, **LIMITS)
    assert [o.code for o in decoded.artifacts] == ["Temp", "pH"]
    assert [o.code for o in decoded.valid] == ["HR"]


def test_adt_descriptors_are_classified() -> None:
    raw = encode(
        {
            "event_id": "adt-1",
            "patient_id": PATIENT,
            "event_time": "2024-05-01T10:00:00+02:00",
            "source": "his",
            "action": "admit",
            "age_years": 54,
            "sex": "female",
            "height_cm": 431.8,
            "weight_kg": None,
            "icu_type": "surgical",
        }
    )
    decoded = decode_input(TopicKind.ADT, raw, **LIMITS)
    assert isinstance(decoded.event, AdtEvent)
    assert decoded.event.event_time == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    assert [(o.code, o.artifact) for o in decoded.observations] == [
        ("Age", False),
        ("Height", True),
    ]


def test_imaging_has_no_observations() -> None:
    raw = encode(
        {
            "event_id": "img-1",
            "patient_id": PATIENT,
            "event_time": "2024-05-01T11:00:00Z",
            "source": "pacs",
            "study_id": "1.2.3",
            "modality": "CR",
            "image_uri": "redis://vigil-images/img-1",
        }
    )
    decoded = decode_input(TopicKind.IMAGING, raw, **LIMITS)
    assert isinstance(decoded.event, ImagingEvent)
    assert decoded.observations == ()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", "invalid_json"),
        (b"", "invalid_json"),
        (b"\xff\xfe\x00", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'"text"', "invalid_json"),
        (encode({k: v for k, v in vitals().items() if k != "patient_id"}), "missing_field"),
        (encode({k: v for k, v in vitals().items() if k != "event_time"}), "missing_field"),
        (encode(vitals(observations=[{"code": "HR", "value": 1}])), "missing_field"),
        (encode(vitals(patient_id="")), "invalid_field"),
        (encode(vitals(schema_version=2)), "invalid_field"),
        (encode(vitals(extra=1)), "invalid_field"),
        (encode(vitals(observations=[])), "invalid_field"),
        (
            encode(vitals(observations=[{"code": "HR", "value": "72", "unit": "/min"}])),
            "invalid_field",
        ),
        (encode(vitals(event_time="yesterday")), "invalid_field"),
        (encode(vitals(event_time="2024-05-01T11:59:00")), "naive_timestamp"),
        (encode(vitals(observations=[{"code": "Foo", "value": 1, "unit": "1"}])), "unknown_code"),
        (encode(vitals(observations=[{"code": "HR", "value": 1, "unit": "Hz"}])), "unknown_unit"),
        (encode(vitals()).replace(b'"value": 0', b'"value": NaN'), "non_finite"),
        (
            encode(vitals()).replace(b'"value": 0', b'"value": Infinity'),
            "non_finite",
        ),
        (encode(vitals()).replace(b'"value": 0', b'"value": 1e400'), "non_finite"),
        (
            encode(vitals(observations=[{"code": "SysABP", "value": 1e308, "unit": "kPa"}])),
            "non_finite",
        ),
        (encode(vitals(event_time="2024-05-01T12:05:01Z")), "future_event"),
    ],
)
def test_reasons(raw: bytes, reason: str) -> None:
    assert reason_of(TopicKind.VITALS, raw) == reason


def test_first_error_decides_the_reason() -> None:
    raw = b'{"observations": [{"code": "HR", "value": NaN, "unit": "/min"}]}'
    assert reason_of(TopicKind.VITALS, raw) == "missing_field"


def test_adt_reasons() -> None:
    base = {"event_id": "a", "patient_id": PATIENT, "event_time": "2024-05-01T11:00:00Z"}
    raw = encode(base | {"source": "his", "action": "readmit"})
    assert reason_of(TopicKind.ADT, raw) == "invalid_field"
    raw = encode(base | {"source": "his"})
    assert reason_of(TopicKind.ADT, raw) == "missing_field"


def test_payload_too_large() -> None:
    raw = encode(vitals())
    assert reason_of(TopicKind.VITALS, raw, max_bytes=len(raw) - 1) == "payload_too_large"
    decode_input(TopicKind.VITALS, raw, **(LIMITS | {"max_bytes": len(raw)}))


def test_huge_payload_is_not_parsed() -> None:
    raw = b"{" * 10_000_000
    assert reason_of(TopicKind.VITALS, raw) == "payload_too_large"


def test_future_allowance_is_inclusive() -> None:
    raw = encode(vitals(event_time="2024-05-01T12:05:00Z"))
    decode_input(TopicKind.VITALS, raw, **LIMITS)
    assert reason_of(TopicKind.VITALS, raw, max_future=timedelta(0)) == "future_event"


def test_detail_is_bounded_and_lists_locations() -> None:
    raw = encode({"schema_version": 1})
    with pytest.raises(SchemaError) as caught:
        decode_input(TopicKind.VITALS, raw, **LIMITS)
    assert "event_id" in caught.value.detail
    assert "more" in caught.value.detail
    assert len(caught.value.detail) <= 2000


def test_caller_bugs_are_value_errors() -> None:
    with pytest.raises(ValueError, match="input topic"):
        decode_input(TopicKind.SCORES, b"{}", **LIMITS)
    with pytest.raises(ValueError, match="timezone"):
        decode_input(TopicKind.VITALS, b"{}", **(LIMITS | {"now": datetime(2024, 1, 1)}))  # noqa: DTZ001


def test_every_raised_reason_is_a_dead_letter_reason() -> None:
    raised = {"invalid_json", "missing_field", "invalid_field", "naive_timestamp"}
    raised |= {"unknown_code", "unknown_unit", "non_finite", "future_event", "payload_too_large"}
    # too_late and duplicate come from the state layer; the rest from actions on alerts.
    later = {"too_late", "duplicate", "unknown_alert", "alert_resolved", "missing_user"}
    later |= {"missing_reason", "snooze_expired", "snooze_too_long"}
    # ... and from reading imaging studies (the image source and the imaging model).
    later |= {"image_unavailable", "image_unreadable", "inference_failed"}
    assert raised == {r.value for r in DeadLetterReason} - later


@given(raw=st.binary(max_size=512))
def test_arbitrary_bytes_only_raise_schema_errors(raw: bytes) -> None:
    reason = None
    try:
        decode_input(TopicKind.VITALS, raw, **LIMITS)
    except SchemaError as error:
        reason = error.reason
    assert reason is None or reason in set(DeadLetterReason)


@given(
    value=st.one_of(st.floats(), st.integers(), st.text(max_size=5), st.none(), st.booleans()),
    code=st.sampled_from(["HR", "Temp", "FiO2", "Foo", ""]),
    unit=st.sampled_from(["/min", "Cel", "%", "1", "Hz", ""]),
)
def test_arbitrary_observations_only_raise_schema_errors(
    value: object, code: str, unit: str
) -> None:
    raw = json.dumps(vitals(observations=[{"code": code, "value": value, "unit": unit}]))
    reason = None
    try:
        decoded = decode_input(TopicKind.VITALS, raw.encode(), **LIMITS)
    except SchemaError as error:
        reason = error.reason
    else:
        assert len(decoded.observations) == 1
    assert reason is None or reason in set(DeadLetterReason)


def _dead_letter(raw: bytes, **changes: Any) -> DeadLetterRecord:
    fields: dict[str, Any] = {
        "topic": "vigil.vitals",
        "partition": 2,
        "offset": 41,
        "key": PATIENT.encode(),
        "raw": raw,
        "received_time": NOW,
    }
    return dead_letter(SchemaError("unknown_code", "code 'Foo'"), **(fields | changes))


def test_dead_letter_record() -> None:
    record = _dead_letter(b'{"a": 1}')
    assert record.reason is DeadLetterReason.UNKNOWN_CODE
    assert record.detail == "code 'Foo'"
    assert (record.payload, record.payload_encoding) == ('{"a": 1}', "utf-8")
    assert (record.payload_size_bytes, record.payload_truncated) == (8, False)
    assert (record.source_topic, record.partition, record.offset) == ("vigil.vitals", 2, 41)
    assert (record.key, record.key_encoding) == (PATIENT, "utf-8")
    assert DeadLetterRecord.model_validate_json(record.model_dump_json()) == record


def test_dead_letter_binary_payload_and_key() -> None:
    record = _dead_letter(b"\xff\x00\xfe", key=b"\xff")
    assert record.payload_encoding == "base64url"
    assert base64.urlsafe_b64decode(record.payload) == b"\xff\x00\xfe"
    assert record.key_encoding == "base64url"
    assert base64.urlsafe_b64decode(record.key or "") == b"\xff"


def test_dead_letter_without_kafka_origin() -> None:
    record = _dead_letter(b"{}", partition=None, offset=None, key=None)
    assert (record.partition, record.offset, record.key) == (None, None, None)


def test_dead_letter_truncates_large_payloads() -> None:
    raw = b"x" * 100
    record = _dead_letter(raw, max_payload_bytes=10)
    assert (record.payload, record.payload_truncated, record.payload_size_bytes) == (
        "x" * 10,
        True,
        100,
    )


def test_dead_letter_truncation_inside_a_utf8_character_stays_text() -> None:
    raw = "aé°".encode()  # 1 + 2 + 2 bytes
    record = _dead_letter(raw, max_payload_bytes=4)
    assert (record.payload, record.payload_encoding) == ("aé", "utf-8")


def test_dead_letter_from_decode_failure() -> None:
    raw = encode(vitals(event_time="2024-05-01T11:59:00"))
    with pytest.raises(SchemaError) as caught:
        decode_input(TopicKind.VITALS, raw, **LIMITS)
    record = dead_letter(
        caught.value,
        topic="vigil.vitals",
        partition=0,
        offset=7,
        key=None,
        raw=raw,
        received_time=NOW,
    )
    assert record.reason is DeadLetterReason.NAIVE_TIMESTAMP
    assert json.loads(record.payload) == json.loads(raw)


def test_dead_letter_rejects_unknown_reasons() -> None:
    with pytest.raises(ValueError, match="not_a_reason"):
        dead_letter(
            SchemaError("not_a_reason", "x"),
            topic="t",
            partition=0,
            offset=0,
            key=None,
            raw=b"",
            received_time=NOW,
        )
