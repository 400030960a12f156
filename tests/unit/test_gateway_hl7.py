"""HL7 v2 messages to input events (streams.gateway.hl7_map), ACKs and the code table."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import hl7
import pytest

from streams.core.events import AdtEvent, DeadLetterReason, IcuType, ObservationEvent, TopicKind
from streams.gateway.codemap import DEFAULT_CODE_MAP, load_code_map
from streams.gateway.hl7_ack import build_ack
from streams.gateway.hl7_map import MappingOptions, map_hl7
from streams.gateway.hl7_parse import _Factory, peek_control_id
from streams.gateway.hl7_write import adt_message, oru_message
from streams.replay import read_physionet2012
from vigil.errors import ConfigError, MessageError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "physionet2012-demo" / "set-a"
OPTIONS = MappingOptions()
T0 = "20250101120000+0000"

MSH = "MSH|^~\\&|MON|ICU|VIGIL|HOSP|20250101120005+0000||ORU^R01|MSG1|P|2.5.1"


def oru(*obx: str, pid: str = "PID|1||1234^^^HOSP^MR", obr: str = f"OBR|1|||P|||{T0}") -> bytes:
    return "\r".join([MSH, pid, obr, *obx]).encode()


def hr(value: str = "80", unit: str = "/min", code: str = "8867-4^Heart rate^LN") -> str:
    return f"OBX|1|NM|{code}||{value}|{unit}^^UCUM|||||F"


def error_of(raw: bytes, options: MappingOptions = OPTIONS) -> MessageError:
    with pytest.raises(MessageError) as caught:
        map_hl7(raw, options)
    return caught.value


def test_oru_becomes_vitals_and_labs_events_keyed_by_patient() -> None:
    raw = oru(hr(), "OBX|2|NM|2524-7^Lactate^LN||2.1|mmol/L|||||F")
    mapped = map_hl7(raw, OPTIONS)
    assert mapped.control_id == "MSG1"
    assert mapped.message_type == "ORU^R01"
    kinds = [e.kind for e in mapped.events]
    assert kinds == [TopicKind.VITALS, TopicKind.LABS]
    vitals = mapped.events[0].event
    assert isinstance(vitals, ObservationEvent)
    assert vitals.patient_id == "1234"
    assert vitals.event_id == "hl7-MSG1-0"
    assert vitals.event_time == datetime(2025, 1, 1, 12, tzinfo=UTC)
    assert [(o.code, o.value, o.unit) for o in vitals.observations] == [("HR", 80.0, "/min")]
    assert mapped.events[0].key == b"1234"
    assert mapped.events[1].event.event_id == "hl7-MSG1-1"


def test_resent_message_has_the_same_event_ids() -> None:
    raw = oru(hr(), "OBX|2|NM|8310-5^Temp^LN||98.6|[degF]|||||F")
    first, second = map_hl7(raw, OPTIONS), map_hl7(raw, OPTIONS)
    assert [e.payload for e in first.events] == [e.payload for e in second.events]


def test_obx_time_wins_over_obr_and_offsets_become_utc() -> None:
    raw = oru(hr() + "|||20250101133000+0100", "OBX|2|NM|9279-1^RR^LN||18|/min|||||F")
    events = [e.event for e in map_hl7(raw, OPTIONS).events]
    assert [e.event_time for e in events] == [
        datetime(2025, 1, 1, 12, 30, tzinfo=UTC),
        datetime(2025, 1, 1, 12, tzinfo=UTC),
    ]


def test_same_code_twice_at_one_time_makes_a_second_event() -> None:
    events = map_hl7(oru(hr("80"), hr("82")), OPTIONS).events
    assert [[o.value for o in e.event.observations] for e in events] == [[80.0], [82.0]]  # type: ignore[union-attr]


def test_two_patients_in_one_message() -> None:
    raw = oru(hr(), f"PID|2||5678\rOBR|1|||P|||{T0}", hr("90"))
    assert [e.event.patient_id for e in map_hl7(raw, OPTIONS).events] == ["1234", "5678"]


@pytest.mark.parametrize(
    "code",
    ["HR^Heart rate^L", "MDC_ECG_HEART_RATE^^MDC", "XYZ^^99LOCAL~8867-4^HR^LN", "1^^L^HR^^L"],
)
def test_local_and_alternate_codes_resolve(code: str) -> None:
    (event,) = map_hl7(oru(hr(code=code)), OPTIONS).events
    assert event.event.observations[0].code == "HR"  # type: ignore[union-attr]


def test_code_map_file_adds_rows(tmp_path: Path) -> None:
    path = tmp_path / "codes.json"
    rows = {
        "codes": [{"system": "99PHI", "code": "1001", "vigil": "HR"}],
        "icu_types": {"4W": "surgical"},
    }
    path.write_text(json.dumps(rows))
    table = load_code_map(path)
    assert table.resolve("1001", "99phi") is not None
    assert table.resolve("1001", "OTHER") is None
    assert table.icu_type("4w") is IcuType.SURGICAL
    assert DEFAULT_CODE_MAP.resolve("1001", "99PHI") is None


@pytest.mark.parametrize(
    "content", ["not json", '{"codes": [{"code": "1", "vigil": "NoSuchCode"}]}', '{"bogus": 1}']
)
def test_bad_code_map_file_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "codes.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=r"code map codes\.json"):
        load_code_map(path)


def test_unit_is_checked_and_sent_as_written() -> None:
    (event,) = map_hl7(oru("OBX|1|NM|8310-5^Temp^LN||98.6|[degF]^degrees F^UCUM"), OPTIONS).events
    assert event.event.observations[0].unit == "[degF]"  # type: ignore[union-attr]
    (event,) = map_hl7(oru("OBX|1|NM|8310-5^Temp^LN||37|^deg C~|"), OPTIONS).events


def test_dimensionless_code_without_unit_takes_its_canonical_unit() -> None:
    (event,) = map_hl7(oru("OBX|1|NM|9269-2^GCS^LN||15||||||F"), OPTIONS).events
    assert event.event.observations[0].unit == "{score}"  # type: ignore[union-attr]


def test_deleted_and_unobtainable_results_are_skipped() -> None:
    mapped = map_hl7(oru(hr(), "OBX|2|NM|9279-1^RR^LN||18|/min|||||D"), OPTIONS)
    assert mapped.skipped == 1
    assert len(mapped.events[0].event.observations) == 1  # type: ignore[union-attr]


def test_unknown_code_rejects_or_is_skipped_by_option() -> None:
    raw = oru(hr(), "OBX|2|NM|99999-9^Mystery^LN||1|/min|||||F")
    error = error_of(raw)
    assert error.reason == DeadLetterReason.UNKNOWN_CODE
    assert error.control_id == "MSG1"
    assert "OBX 5-3" in error.detail
    mapped = map_hl7(raw, MappingOptions(unknown_codes="skip"))
    assert mapped.skipped == 1
    assert len(mapped.events) == 1


@pytest.mark.parametrize(
    ("obx", "reason", "where"),
    [
        (hr(unit="mmHg"), DeadLetterReason.UNKNOWN_UNIT, "OBX 4-6"),
        (hr(unit=""), DeadLetterReason.UNKNOWN_UNIT, "OBX 4-6"),
        (hr(value="eighty"), DeadLetterReason.INVALID_FIELD, "OBX 4-5"),
        (hr(value=""), DeadLetterReason.MISSING_FIELD, "OBX 4-5"),
        (hr(value="NaN"), DeadLetterReason.NON_FINITE, "OBX 4-5"),
        (hr(value="1e999"), DeadLetterReason.NON_FINITE, "OBX 4-5"),
        (hr(value="80~81"), DeadLetterReason.INVALID_FIELD, "OBX 4-5"),
        ("OBX|1|ST|8867-4^HR^LN||fast|/min", DeadLetterReason.INVALID_FIELD, "OBX 4-2"),
        (hr() + "|||202501011200", DeadLetterReason.NAIVE_TIMESTAMP, "OBX 4-14"),
        (hr() + "|||2025", DeadLetterReason.INVALID_FIELD, "OBX 4-14"),
        (hr() + "|||20251399999999+0000", DeadLetterReason.INVALID_FIELD, "OBX 4-14"),
        (hr() + "|||19000101000000+0000", DeadLetterReason.INVALID_FIELD, "OBX 4-14"),
    ],
)
def test_unusable_obx_names_the_field(obx: str, reason: str, where: str) -> None:
    error = error_of(oru(obx))
    assert error.reason == reason
    assert where in error.detail


def test_naive_times_are_read_in_the_configured_zone() -> None:
    zone = timezone(timedelta(hours=2))
    (event,) = map_hl7(oru(hr() + "|||202501011400"), MappingOptions(naive_time_zone=zone)).events
    assert event.event.event_time == datetime(2025, 1, 1, 12, tzinfo=UTC)


def test_no_time_at_all_is_missing() -> None:
    error = error_of(oru(hr(), obr="OBR|1"))
    assert error.reason == DeadLetterReason.MISSING_FIELD
    assert "OBR-7" in error.detail


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (f"{MSH}\rOBR|1|||P|||{T0}\r{hr()}".encode(), "OBR 2 comes before PID"),
        (f"{MSH}\rPID|1||1\r{hr()}\rOBR|1|||P|||{T0}".encode(), "before its PID and OBR"),
        (f"{MSH}\rOBR|1\rPID|1||1".encode(), "OBR 2 comes before PID"),
        (f"{MSH}\rPID|1||1\rOBR|1|||P|||{T0}".encode(), "no usable OBX"),
        (MSH.encode(), "no usable OBX"),
    ],
)
def test_wrong_segment_order_and_empty_results(raw: bytes, reason: str) -> None:
    assert reason in error_of(raw).detail


@pytest.mark.parametrize(
    ("pid", "reason"),
    [
        ("PID|1||", DeadLetterReason.MISSING_FIELD),
        ("PID|1||Doe, John", DeadLetterReason.INVALID_FIELD),
        ("PID|1||" + "9" * 65, DeadLetterReason.INVALID_FIELD),
    ],
)
def test_bad_patient_id_never_echoes_it(pid: str, reason: str) -> None:
    error = error_of(oru(hr(), pid=pid))
    assert error.reason == reason
    assert "John" not in str(error)
    assert "99999" not in str(error)


def test_visit_number_as_patient_id() -> None:
    raw = oru(hr(), pid="PID|1||1234\rPV1|1|I|ICU^1^1||||||||||||||||V77")
    (event,) = map_hl7(raw, MappingOptions(patient_id_field="PV1-19")).events
    assert event.event.patient_id == "V77"


@pytest.mark.parametrize(
    ("raw", "reason", "control_id"),
    [
        (b"", DeadLetterReason.INVALID_FIELD, None),
        (b"hello", DeadLetterReason.INVALID_FIELD, None),
        (b"MSH|^~\\&|MON", DeadLetterReason.MISSING_FIELD, None),  # truncated in MSH
        (b"PID|1||1\rMSH|^~\\&|M|I|||2025||ORU^R01|X|P|2.5", DeadLetterReason.INVALID_FIELD, "X"),
        (MSH.encode() + b"\rPID|1||\xff\xfe", DeadLetterReason.INVALID_FIELD, "MSG1"),
        (MSH.encode() + b"\rPID|1||1\x00", DeadLetterReason.INVALID_FIELD, "MSG1"),
        (MSH.replace("ORU^R01", "ORM^O01").encode(), DeadLetterReason.INVALID_FIELD, "MSG1"),
        (MSH.replace("2.5.1", "2.2").encode(), DeadLetterReason.INVALID_FIELD, "MSG1"),
        (MSH.replace("MSG1", "").encode(), DeadLetterReason.MISSING_FIELD, None),
    ],
)
def test_broken_messages_are_typed_errors(raw: bytes, reason: str, control_id: str | None) -> None:
    error = error_of(raw)
    assert error.reason == reason
    assert error.control_id == control_id


def test_truncated_oru_is_an_error_not_a_crash() -> None:
    raw = oru(hr(), "OBX|2|NM|2524-7^Lactate^LN||2.1|mmol/L|||||F")
    for cut in range(len(raw)):
        with contextlib.suppress(MessageError):
            map_hl7(raw[:cut], OPTIONS)


def test_oversized_message_keeps_its_control_id() -> None:
    raw = oru(*[hr(str(v)) for v in range(2000)])
    error = error_of(raw, MappingOptions(max_message_bytes=10_000))
    assert error.reason == DeadLetterReason.PAYLOAD_TOO_LARGE
    assert error.control_id == "MSG1"


def test_latin1_is_read_when_msh18_declares_it() -> None:
    header = MSH + "||||||8859/1"
    raw = "\r".join([header, "PID|1||1234||Müller", f"OBR|1|||P|||{T0}", hr()]).encode("latin-1")
    assert len(map_hl7(raw, OPTIONS).events) == 1
    assert error_of(raw.replace(b"8859/1", b"UNICODE UTF-8")).reason == "invalid_field"


def test_odd_control_id_is_hashed_into_a_stable_event_id() -> None:
    raw = oru(hr()).replace(b"MSG1", b"A B/C")
    first = map_hl7(raw, OPTIONS).events[0].event.event_id
    assert first.startswith("hl7-h")
    assert first == map_hl7(raw, OPTIONS).events[0].event.event_id


ADT = (
    "MSH|^~\\&|ADT|HOSP|VIGIL|HOSP|20250101120000+0000||ADT^{trigger}|ADT1|P|2.3\r"
    "EVN|{trigger}|20250101120000+0000\r"
    "PID|1||1234^^^HOSP^MR||Doe^Jane||19500601|F\r"
    "PV1|1|I|MICU^12^1||||||||MED"
)


@pytest.mark.parametrize(
    ("trigger", "action"),
    [("A01", "admit"), ("A02", "transfer"), ("A03", "discharge"), ("A08", "update")],
)
def test_adt_triggers(trigger: str, action: str) -> None:
    (event,) = map_hl7(ADT.format(trigger=trigger).encode(), OPTIONS).events
    assert event.kind == TopicKind.ADT
    adt = event.event
    assert isinstance(adt, AdtEvent)
    assert adt.action == action
    assert adt.event_id == "hl7-ADT1-0"
    assert adt.age_years == 74.0
    assert adt.sex == "female"
    assert adt.care_unit == "MICU"
    assert adt.icu_type is IcuType.MEDICAL


def test_adt_descriptors_from_obx_in_canonical_units() -> None:
    raw = ADT.format(trigger="A01") + (
        "\rOBX|1|NM|29463-7^Weight^LN||154|[lb_av]\rOBX|2|NM|8302-2^Height^LN||1.7|m"
        "\rOBX|3|ST|ALLERGY^^L||peanuts"
    )
    mapped = map_hl7(raw.encode(), OPTIONS)
    adt = mapped.events[0].event
    assert isinstance(adt, AdtEvent)
    assert adt.weight_kg == pytest.approx(69.85322498)
    assert adt.height_cm == pytest.approx(170.0)
    assert mapped.skipped == 1


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (ADT.format(trigger="A01").replace("EVN|A01|20250101120000+0000\r", ""), "no EVN"),
        (
            ADT.format(trigger="A01")
            .replace("PV1|1|I|MICU^12^1||||||||MED", "")
            .replace("EVN|", "PV1|1\rEVN|"),
            "PV1 comes before PID",
        ),
        (ADT.format(trigger="A04"), "MSH-9"),
        (ADT.format(trigger="A01").replace("EVN|A01|20250101120000+0000", "EVN|A01|"), "EVN-2"),
    ],
)
def test_bad_adt(raw: str, detail: str) -> None:
    assert detail in error_of(raw.encode()).detail


def test_physionet_stays_round_trip_to_the_replay_events() -> None:
    compared = 0
    for path in sorted(DEMO.glob("*.txt"))[:5]:
        for index, replayed in enumerate(read_physionet2012(path)):
            data = json.loads(replayed.payload)
            if replayed.kind is TopicKind.ADT:
                original: AdtEvent | ObservationEvent = AdtEvent.model_validate(data)
                raw = adt_message(original, f"c{index}")  # type: ignore[arg-type]
            else:
                original = ObservationEvent.model_validate(data)
                raw = oru_message(original, f"c{index}")
            (event,) = map_hl7(raw, OPTIONS).events
            assert event.kind == replayed.kind
            ignore = {"event_id", "source"}
            assert event.event.model_dump(exclude=ignore) == original.model_dump(exclude=ignore)
            compared += 1
    assert compared > 100


def test_acks_parse_and_carry_the_reason() -> None:
    message = hl7.parse(oru(hr()).decode())
    now = datetime(2025, 1, 1, 12, tzinfo=UTC)
    ack = hl7.parse(build_ack(message, "AA", control_id="MSG1", ack_id="A1", now=now).decode())
    assert str(ack.segment("MSA")) == "MSA|AA|MSG1|"
    assert ack.extract_field("MSH", 1, 5) == "MON"
    assert ack.extract_field("MSH", 1, 9, 1, 2) == "R01"
    text = build_ack(None, "AE", control_id=None, ack_id="A2", now=now, text="bad | ^ value\r")
    parsed = hl7.parse(text.decode())
    assert parsed.extract_field("MSA", 1, 1) == "AE"
    assert parsed.unescape(parsed.extract_field("MSA", 1, 3)) == "bad | ^ value"
    assert str(parsed.segment("ERR")(4)) == "E"


def test_peek_control_id() -> None:
    assert peek_control_id(MSH.encode()) == "MSG1"
    assert peek_control_id(b"MSH|^~\\&|A") is None
    assert peek_control_id(b"garbage") is None


@pytest.mark.parametrize(
    "text",
    [
        "MSH|^~\\&|MON|ICU|VIGIL|HOSP|20250101120005+0000||ORU^R01^ORU_R01|c1|P|2.5\r"
        "PID|1||123^^^HOSP^MR~456^^^HOSP^VN||DOE^JANE||19500101|F\r"
        "OBR|1|||P|||20250101120000+0000\r"
        "OBX|1|NM|8867-4^HR^LN~HR^Heart rate^L||80|/min^per minute^UCUM|||||F\r"
        "OBX|2|NM|X&sub^a\\T\\b^L||1.5|mmol/L&x|||||F\r"
        "NTE|1||free \\F\\ text",
        "MSH#*@!$%A#B#C#D#20250101120005#ORU*R01#c2#P#2.5\rPID#1##7@8*9$x\rOBX#1#NM#a*b",
        "MSH|^~\\&\rPID",
    ],
)
def test_fast_containers_parse_as_python_hl7_does(text: str) -> None:
    # The parser's own factory builds the same tree: classes, delimiters, text.
    def shape(node: object) -> object:
        if not isinstance(node, list):
            return node
        base = next(c for c in type(node).__mro__ if c.__module__ == "hl7.containers")
        extra = (node.separator, node.esc, node.separators)  # type: ignore[attr-defined]
        return (base.__name__, extra, [shape(child) for child in node])

    plain, fast = hl7.parse(text), hl7.parse(text, factory=_Factory)
    assert shape(fast) == shape(plain)
    assert str(fast) == str(plain)
    assert fast == plain
    assert all(isinstance(segment, hl7.Segment) for segment in fast)
