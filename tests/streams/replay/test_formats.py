"""Each replay format reads into events with the right topics, codes, values and times."""

from __future__ import annotations

import base64
import json
import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from streams.core.events import AdtEvent, ObservationEvent, TopicKind
from streams.replay import (
    DEFAULT_ANCHOR,
    RecordedMessage,
    merge,
    physionet2012_events,
    read_fhir,
    read_files,
    read_jsonl,
    read_physionet2012,
    read_physionet2019,
)
from streams.replay.event import Reader, ReplayEvent
from vigil.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
PN2019 = ROOT / "data" / "physionet2019-demo"
PN2012 = ROOT / "data" / "physionet2012-demo" / "set-a"
BUNDLE = Path(__file__).parent / "data" / "vitals-bundle.json"


def _observations(event: ReplayEvent) -> dict[str, tuple[float, str]]:
    record = ObservationEvent.model_validate_json(event.payload)
    return {o.code: (o.value, o.unit) for o in record.observations}


def _write_psv(path: Path, rows: list[str]) -> Path:
    header = (
        "HR|O2Sat|Temp|SBP|Resp|FiO2|Lactate|Age|Gender|Unit1|Unit2|HospAdmTime|ICULOS|SepsisLabel"
    )
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


# PhysioNet 2019 ---------------------------------------------------------------------------


def test_physionet2019_rows_become_admit_vitals_and_labs(tmp_path: Path) -> None:
    path = _write_psv(
        tmp_path / "p000777.psv",
        [
            "NaN|NaN|NaN|NaN|NaN|NaN|NaN|68.5|1|0|1|-2.5|1|0",
            "0|97|37.1|NaN|18|0.4|2.1|68.5|1|0|1|-2.5|2|1",
        ],
    )
    events = read_physionet2019(path)
    assert [(e.kind, e.event_time) for e in events] == [
        (TopicKind.ADT, DEFAULT_ANCHOR),
        (TopicKind.VITALS, DEFAULT_ANCHOR + timedelta(hours=2)),
        (TopicKind.LABS, DEFAULT_ANCHOR + timedelta(hours=2)),
    ]
    admit = AdtEvent.model_validate_json(events[0].payload)
    assert (admit.patient_id, admit.action, admit.age_years, admit.sex) == (
        "p000777",
        "admit",
        68.5,
        "male",
    )
    assert admit.icu_type is not None
    assert admit.icu_type.value == "surgical"
    assert admit.hospital_admit_time == DEFAULT_ANCHOR - timedelta(hours=2.5)
    # Zero is a value (asystole); O2Sat is pulse oximetry; FiO2 a fraction (device -> vitals).
    assert _observations(events[1]) == {
        "HR": (0.0, "/min"),
        "SpO2": (97.0, "%"),
        "Temp": (37.1, "Cel"),
        "RespRate": (18.0, "/min"),
        "FiO2": (0.4, "1"),
    }
    assert _observations(events[2]) == {"Lactate": (2.1, "mmol/L")}
    assert all(e.key == b"p000777" for e in events)
    assert b"Sepsis" not in b"".join(e.payload for e in events)


def test_physionet2019_shared_files_read_with_ids_unique_and_time_ordered() -> None:
    paths = sorted(PN2019.glob("*.psv"))
    assert len(paths) == 13
    per_file = read_files(paths, read_physionet2019)
    events = list(merge(per_file))
    assert [e.event_time for e in events] == sorted(e.event_time for e in events)
    ids = [json.loads(e.payload)["event_id"] for e in events]
    assert len(ids) == len(set(ids))
    assert {e.patient_id for e in events} == {p.stem for p in paths}
    first = read_physionet2019(PN2019 / "p000002.psv")
    # p000002.psv, second row: ICULOS 2, HR 61, O2Sat 99, Temp 36.44, SBP 124, MAP 65, DBP 43.
    hour2 = next(e for e in first if e.event_time == DEFAULT_ANCHOR + timedelta(hours=2))
    assert _observations(hour2) == {
        "HR": (61.0, "/min"),
        "SpO2": (99.0, "%"),
        "Temp": (36.44, "Cel"),
        "SysABP": (124.0, "mm[Hg]"),
        "MAP": (65.0, "mm[Hg]"),
        "DiasABP": (43.0, "mm[Hg]"),
        "RespRate": (17.5, "/min"),
    }


@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        (["1|2|3"], "3 fields, header has 14"),
        (["x|97|37.1|NaN|18|0.4|2.1|68.5|1|0|1|-2.5|2|0"], "malformed line"),
        (["80|97|37.1|NaN|18|0.4|2.1|68.5|1|0|1|-2.5|NaN|0"], "no ICULOS"),
        ([], "no rows"),
    ],
)
def test_physionet2019_bad_file_names_file_and_reason(
    tmp_path: Path, rows: list[str], reason: str
) -> None:
    path = _write_psv(tmp_path / "p1.psv", rows)
    with pytest.raises(ConfigError, match=reason) as caught:
        read_physionet2019(path)
    assert str(caught.value).startswith("p1.psv")


def test_physionet2019_unknown_column_and_not_a_psv(tmp_path: Path) -> None:
    odd = tmp_path / "odd.psv"
    odd.write_text("HR|Mood|ICULOS\n80|3|1\n")
    with pytest.raises(ConfigError, match="'Mood' is not a PhysioNet 2019 column"):
        read_physionet2019(odd)
    other = tmp_path / "other.psv"
    other.write_text("Time,Parameter,Value\n")
    with pytest.raises(ConfigError, match="not a PhysioNet 2019 file"):
        read_physionet2019(other)


# FHIR -------------------------------------------------------------------------------------


def test_fhir_bundle_maps_loinc_subject_time_and_units(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streams.replay.fhir"):
        events = read_fhir(BUNDLE)
    at = datetime(2025, 1, 1, tzinfo=UTC)
    got = [(e.patient_id, e.event_time, e.kind, _observations(e)) for e in events]
    assert got == [
        # Respiratory rate 0 is a value, not missing.
        (
            "synth-2",
            at + timedelta(hours=7, minutes=45),
            TopicKind.VITALS,
            {"RespRate": (0.0, "/min")},
        ),
        # HR at 08:00Z (subject via the Patient entry's urn:uuid) and the BP panel at
        # 09:00+01:00, the same instant: one event with the panel's components.
        (
            "synth-1",
            at + timedelta(hours=8),
            TopicKind.VITALS,
            {"HR": (112.0, "/min"), "SysABP": (94.0, "mm[Hg]"), "DiasABP": (51.0, "mm[Hg]")},
        ),
        (
            "synth-1",
            at + timedelta(hours=9, minutes=30),
            TopicKind.LABS,
            {"Lactate": (3.4, "mmol/L")},
        ),
        (
            "synth-1",
            at + timedelta(hours=9, minutes=30),
            TopicKind.VITALS,
            # [degF] is sent as written (the worker converts); 59408-5 wins over 2708-6.
            {"Temp": (101.3, "[degF]"), "SpO2": (91.0, "%")},
        ),
    ]
    assert all(e.key == e.patient_id.encode() for e in events)
    assert "1 with status entered-in-error" in caplog.text
    assert "1 without a LOINC-coded quantity Vigil knows" in caplog.text
    # Deterministic ids: reading twice gives the same events.
    assert read_fhir(BUNDLE) == events


def _bundle_with(tmp_path: Path, **changes: object) -> Path:
    doc = json.loads(BUNDLE.read_text())
    resource = doc["entry"][1]["resource"]  # hr-1
    for key, value in changes.items():
        if value is None:
            resource.pop(key)
        else:
            resource[key] = value
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"subject": None}, "no subject reference"),
        ({"effectiveDateTime": "2025-01-01"}, "no effectiveDateTime with a time of day"),
        (
            {"valueQuantity": {"value": 1, "unit": "furlong", "code": "[fur_us]"}},
            "HR: unit '\\[fur_us\\]' is not accepted",
        ),
        ({"effectiveDateTime": "yesterday"}, "not a FHIR R4 Bundle"),
    ],
)
def test_fhir_bad_observation_fails_the_file_with_its_entry(
    tmp_path: Path, changes: dict[str, object], reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason) as caught:
        read_fhir(_bundle_with(tmp_path, **changes))
    assert str(caught.value).startswith("changed.json: ")


def test_fhir_unit_text_used_when_the_ucum_code_is_not_accepted(tmp_path: Path) -> None:
    path = _bundle_with(tmp_path, valueQuantity={"value": 90, "unit": "bpm", "code": "{beat}/min"})
    hr = next(e for e in read_fhir(path) if "HR" in _observations(e))
    assert _observations(hr)["HR"] == (90.0, "bpm")


def test_fhir_rejects_what_is_not_a_bundle(tmp_path: Path) -> None:
    path = tmp_path / "patient.json"
    path.write_text('{"resourceType": "Patient", "id": "x"}')
    with pytest.raises(ConfigError, match=r"patient\.json: not a FHIR R4 Bundle"):
        read_fhir(path)


# JSONL recordings -------------------------------------------------------------------------


def _line(topic: str, offset: int, timestamp: int, key: bytes | None, value: bytes | None) -> str:
    return RecordedMessage.from_kafka(topic, 0, offset, timestamp, key, value).to_line()


def test_recorded_line_format_and_binary_fields() -> None:
    text = _line("vigil.vitals", 7, 1_735_689_600_000, b"132539", b'{"a": 1}')
    assert json.loads(text) == {
        "topic": "vigil.vitals",
        "partition": 0,
        "offset": 7,
        "timestamp": 1_735_689_600_000,
        "key": "132539",
        "value": '{"a": 1}',
    }
    binary = json.loads(_line("vigil.vitals", 8, 0, None, b"\xff\x00"))
    assert binary["key"] is None
    assert (binary["value"], binary["value_encoding"]) == (
        base64.b64encode(b"\xff\x00").decode(),
        "base64",
    )
    assert RecordedMessage.model_validate(binary).value_bytes() == b"\xff\x00"


def test_jsonl_plays_records_in_timestamp_order_with_their_kind_and_key(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    lines = [
        _line("run1.labs", 0, 2_000, b"p1", b"second"),
        _line("vigil.vitals", 0, 1_000, b"p1", b"first"),
        _line("a.b.adt", 1, 3_000, b"\xfe", b"\x00binary"),
        _line("vigil.vitals", 1, 3_000, b"p2", None),  # a tombstone: not replayed
    ]
    path.write_text("\n".join(lines) + "\n\n")
    events = read_jsonl(path)
    assert [(e.event_time, e.kind, e.key, e.payload) for e in events] == [
        (datetime.fromtimestamp(1, UTC), TopicKind.VITALS, b"p1", b"first"),
        (datetime.fromtimestamp(2, UTC), TopicKind.LABS, b"p1", b"second"),
        (datetime.fromtimestamp(3, UTC), TopicKind.ADT, b"\xfe", b"\x00binary"),
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not json", "rec.jsonl:2: "),
        ('{"topic": "vigil.vitals"}', "rec.jsonl:2: partition"),
        (_line("other.topic", 0, 0, b"k", b"v"), "'other.topic' is not a Vigil topic"),
        (
            '{"topic":"vigil.vitals","partition":0,"offset":0,"timestamp":0,'
            '"key":"k","value":"%%%","value_encoding":"base64"}',
            "rec.jsonl:2: ",
        ),
    ],
)
def test_jsonl_bad_line_fails_the_file_with_line_number(
    tmp_path: Path, line: str, reason: str
) -> None:
    path = tmp_path / "rec.jsonl"
    path.write_text(_line("vigil.vitals", 0, 0, b"k", b"v") + "\n" + line + "\n")
    with pytest.raises(ConfigError, match=reason):
        read_jsonl(path)


# Every format: a bad file beside good ones ------------------------------------------------


@pytest.mark.parametrize(
    ("reader", "good", "suffix"),
    [
        (read_physionet2012, PN2012 / "132545.txt", ".txt"),
        (read_physionet2019, PN2019 / "p000002.psv", ".psv"),
        (read_fhir, BUNDLE, ".json"),
    ],
)
def test_bad_file_beside_good_ones_is_reported_and_the_good_ones_read(
    tmp_path: Path, reader: Reader, good: Path, suffix: str
) -> None:
    first = shutil.copy(good, tmp_path / f"a{suffix}")
    bad = tmp_path / f"b{suffix}"
    bad.write_bytes(b"\xff\xfe garbage")
    missing = tmp_path / f"c{suffix}"
    errors: list[tuple[str, str]] = []
    per_file = read_files(
        [Path(first), bad, missing], reader, lambda path, reason: errors.append((path.name, reason))
    )
    assert [name for name, _ in errors] == [f"b{suffix}", f"c{suffix}"]
    assert all(reason.startswith(name) for name, reason in errors)
    assert len(per_file) == 1
    assert per_file[0] == reader(Path(first))
    with pytest.raises(ConfigError, match=f"b{suffix}"):
        read_files([bad], reader)


def test_physionet2012_still_merges_stays_in_event_time_order() -> None:
    paths = sorted(PN2012.glob("*.txt"))[:5]
    events = list(physionet2012_events(paths))
    assert [e.event_time for e in events] == sorted(e.event_time for e in events)
    assert events[0].kind is TopicKind.ADT
    assert events[0].key == events[0].patient_id.encode()
