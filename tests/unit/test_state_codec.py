"""The compact binary state (``streams.core.state_codec``): every field round-trips exactly,
version-1 JSON stays readable, and bad data raises ``StateError``."""

from __future__ import annotations

import contextlib
import json
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.core.events import TopicKind
from streams.core.pipeline import Processor, ProcessorConfig
from streams.core.state import Origin, PatientState, from_ms
from streams.core.state_codec import STATE_FORMAT_VERSION, decode_state, encode_state
from streams.core.stepping import ModelState
from streams.replay import physionet2012_events, read_length_of_stay
from vigil.errors import StateError, VigilError

DEMO = Path(__file__).resolve().parents[2] / "data" / "physionet2012-demo"
T0 = 1_714_560_000_000
INT64 = st.integers(-(2**63), 2**63 - 1)


def _rich_state() -> PatientState:
    return PatientState(
        patient_id="p-1",
        admit_ms=T0,
        statics={"Age": 67.0, "Gender": 0.0, "Height": None},
        series={
            "HR": [(T0 + 60_000, 88.0), (T0 + 120_000, 400.0), (T0 + 120_000, 91.0)],
            "Temp": [(T0 + 60_000, 38.4)],
            "NIMAP": [(T0 + 60_000, 75.33), (T0 + 180_000, 1e-7), (T0 + 240_000, -0.0)],
            "Platelets": [(T0 + 3_600_000, 402.0), (T0 + 7_200_000, 1234567.0)],
            "Empty": [],
        },
        watermark_ms=T0 + 7_200_000,
        stream_watermarks={"adt": T0, "vitals": T0 + 240_000, "labs": T0 + 7_200_000},
        recent_ids={"adt-1": T0, "v1": T0 + 60_000, "v2": T0 + 120_000, "l1": T0 + 7_200_000},
        last_scored_ms=T0 + 120_000,
        changed=True,
        pending_ids=["l1"],
        pending_offsets={"vigil.labs\x1f0": [3, 3]},
        discharged_ms=None,
        images=[(T0 + 90_000, [0.25, -1.5, 3.0]), (T0 + 95_000, [])],
        studies=[{"study_id": "s1", "finding_id": None, "class_probability": 0.7, "t": T0}],
        last_score={"at_ms": T0 + 120_000, "risk": 0.42, "news2": 5, "degraded": False},
        alert={"active": {"id": "0" * 32, "kind": "deterioration", "peak": 0.61}},
        artifacts=2,
    )


def _float_bits(state: PatientState) -> list[Any]:
    """Values and embeddings bit for bit (``==`` does not tell -0.0 from 0.0)."""
    bits: list[Any] = [
        (code, [(t, struct.pack("<d", v)) for t, v in points])
        for code, points in state.series.items()
    ]
    bits.append([(t, struct.pack(f"<{len(e)}d", *e)) for t, e in state.images])
    return bits


def _assert_round_trip(state: PatientState) -> bytes:
    data = encode_state(state)
    restored = decode_state(data)
    assert restored == state
    assert _float_bits(restored) == _float_bits(state)
    assert list(restored.recent_ids) == list(state.recent_ids)  # eviction breaks ties by order
    assert list(restored.series) == list(state.series)
    return data


def test_round_trip_is_exact_for_every_field() -> None:
    state = _rich_state()
    data = _assert_round_trip(state)
    assert data[:3] == b"VPS"
    assert data[3] == STATE_FORMAT_VERSION == 3


def test_the_step_model_state_round_trips_bit_for_bit() -> None:
    state = _rich_state()
    vector = struct.pack("<4f", 0.5, -0.0, float("inf"), 1e-30)
    state.model_state = ModelState("deterioration_step/1", T0, 7, vector)
    data = _assert_round_trip(state)
    restored = decode_state(data)
    assert restored.model_state is not None
    assert restored.model_state.vector == vector
    assert PatientState.from_dict(state.to_dict()) == state


def test_a_version_2_record_is_read_without_a_model_state() -> None:
    state = _rich_state()
    data = bytearray(encode_state(state))
    data[3] = 2  # no model state flagged: the layout is version 2's
    assert decode_state(bytes(data)) == state
    state.model_state = ModelState("deterioration_step/1", T0, 0, b"\x00" * 8)
    flagged = bytearray(encode_state(state))
    flagged[3] = 2
    with pytest.raises(StateError, match="version-2"):
        decode_state(bytes(flagged))


def test_empty_state_round_trips() -> None:
    _assert_round_trip(PatientState("p-0"))


def test_restored_state_behaves_the_same() -> None:
    state = _rich_state()
    restored = decode_state(encode_state(state))
    lateness = timedelta(minutes=10)
    assert restored.admissible("v1", from_ms(T0), lateness, "vitals") is not None
    assert restored.admissible("v9", from_ms(T0 - 3_600_000), lateness, "vitals") is not None
    assert restored.take_provenance() == state.take_provenance()
    window = timedelta(hours=48)
    at = from_ms(T0 + 7_200_000)
    assert restored.news2(timedelta(hours=4), at) == state.news2(timedelta(hours=4), at)
    got, want = restored.features(window, at), state.features(window, at)
    for name in ("values", "mask", "delta_hours", "statics", "static_mask"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))


def test_version_1_is_read_as_a_dict_and_as_json_bytes() -> None:
    state = _rich_state()
    state.series.pop("Empty")  # to_dict/from_dict keep it too, but JSON-free keys are tidier
    v1 = state.to_dict()
    text = json.dumps(v1).encode()
    assert decode_state(v1) == state
    for data in (text, bytearray(text), memoryview(text), b"  \n" + text):
        assert decode_state(data) == state


def test_ids_with_newlines_and_lone_surrogates_fall_back_to_json() -> None:
    state = _rich_state()
    state.recent_ids = {"a\nb": T0, "\ud800": T0 + 1, "": T0 + 2, "é": T0 + 3}
    state.pending_ids = ["a\nb", ""]
    state.patient_id = "\udfff\n"
    _assert_round_trip(state)


def test_long_id_lists_are_deflated_and_still_exact() -> None:
    state = _rich_state()
    state.recent_ids = {f"p12-132545-{i}-vitals-0": T0 + 60_000 * i for i in range(4096)}
    state.pending_ids = [f"p12-132545-{i}-vitals-0" for i in range(1024)]
    data = _assert_round_trip(state)
    assert len(data) < len(json.dumps(state.to_dict())) / 4


def test_times_use_the_narrowest_width_and_survive_any_int64_span() -> None:
    state = PatientState("p", series={"HR": [(T0 + 60_000 * i, 80.0) for i in range(200)]})
    minutes = encode_state(state)
    state.series["HR"][-1] = (T0 + 60_000 * 199 + 1, 80.0)  # gcd 1 ms: four bytes a time
    milliseconds = encode_state(state)
    assert len(milliseconds) - len(minutes) == 2 * 200
    state.series["HR"] = [(-(2**63), 1.0), (2**63 - 1, 2.0)]
    state.recent_ids = {"x": 0}
    _assert_round_trip(state)


def test_values_that_are_not_short_decimals_are_kept_as_float64() -> None:
    values = [1 / 3, float("inf"), -float("inf"), 5e-324, 1.7976931348623157e308, -0.0, 2.5e9]
    state = PatientState("p", series={"X": [(T0 + i, v) for i, v in enumerate(values)]})
    _assert_round_trip(state)
    state.series["Y"] = [(T0, 0.001), (T0, 12.345)]  # thousandths
    _assert_round_trip(state)


# -- property test ------------------------------------------------------------------------------

_floats = st.floats(allow_nan=False)
_short = st.one_of(
    _floats,
    st.integers(-(10**6), 10**6).map(lambda i: i / 100),
    st.integers(-400, 400).map(float),
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _floats | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@st.composite
def _states(draw: st.DrawFn) -> PatientState:
    series = draw(
        st.dictionaries(
            st.text(max_size=6),
            st.lists(st.tuples(INT64, _short), max_size=30).map(sorted),
            max_size=6,
        )
    )
    optional = st.none() | INT64
    return PatientState(
        patient_id=draw(st.text(max_size=12)),
        admit_ms=draw(optional),
        statics=draw(st.dictionaries(st.text(max_size=6), st.none() | _floats, max_size=5)),
        series=series,
        watermark_ms=draw(optional),
        stream_watermarks=draw(st.dictionaries(st.text(max_size=6), INT64, max_size=4)),
        recent_ids=draw(st.dictionaries(st.text(max_size=30), INT64, max_size=40)),
        last_scored_ms=draw(optional),
        changed=draw(st.booleans()),
        pending_ids=draw(st.lists(st.text(max_size=30), max_size=10)),
        pending_offsets=draw(
            st.dictionaries(st.text(max_size=10), st.lists(INT64, min_size=2, max_size=2))
        ),
        discharged_ms=draw(optional),
        images=draw(st.lists(st.tuples(INT64, st.lists(_floats, max_size=8)), max_size=4)),
        studies=draw(st.lists(st.dictionaries(st.text(max_size=5), _json), max_size=3)),
        last_score=draw(st.none() | st.dictionaries(st.text(max_size=5), _json, max_size=4)),
        alert=draw(st.dictionaries(st.text(max_size=5), _json, max_size=3)),
        artifacts=draw(st.integers(0, 2**63 - 1)),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_states())
def test_any_state_round_trips_exactly(state: PatientState) -> None:
    _assert_round_trip(state)


# -- real stays ---------------------------------------------------------------------------------


def test_real_stays_round_trip_with_the_same_features_and_news2() -> None:
    paths = sorted((DEMO / "set-a").glob("*.txt"))[:10]
    los = read_length_of_stay(DEMO / "Outcomes-a.txt")
    processor = Processor(ProcessorConfig(), lambda: datetime.now(UTC))
    states: dict[str, PatientState] = {}
    window, max_age = timedelta(hours=48), timedelta(hours=4)
    compared = 0
    for offset, event in enumerate(physionet2012_events(paths, length_of_stay=los)):
        origin = Origin(f"t.{event.kind.value}", 0, offset)
        result = processor.ingest(
            states, event.kind, event.patient_id.encode(), event.payload, origin
        )
        if result.snapshot is not None:
            processor.finish(states, result.snapshot, None, "test")
        state = states.get(event.patient_id)
        if state is None or state.watermark_ms is None or offset % 7:
            continue
        data = _assert_round_trip(state)
        json_bytes = len(json.dumps(state.to_dict(), separators=(",", ":")))
        assert json_bytes < 4000 or len(data) < json_bytes / 3
        if event.kind is TopicKind.ADT or not state.series:
            continue
        restored = decode_state(data)
        at = state.observation_time
        for moment in (at, at - timedelta(minutes=37)):
            assert restored.news2(max_age, moment) == state.news2(max_age, moment)
            got, want = restored.features(window, moment), state.features(window, moment)
            for name in ("values", "mask", "delta_hours", "statics", "static_mask"):
                np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        compared += 1
    assert compared > 100
    for state in states.values():  # after discharge, as the changelog keeps them
        _assert_round_trip(state)


# -- bad data -----------------------------------------------------------------------------------


def test_state_error_is_a_value_error_and_a_vigil_error() -> None:
    assert issubclass(StateError, ValueError)
    assert issubclass(StateError, VigilError)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 200, b"VPS", b"not a state", b"{not json", b"[1, 2]", b"{}"],
)
def test_garbage_raises_state_error(data: bytes) -> None:
    with pytest.raises(StateError):
        decode_state(data)


def test_other_versions_and_types_raise_state_error() -> None:
    data = bytearray(encode_state(_rich_state()))
    data[3] = 4
    with pytest.raises(StateError, match="version"):
        decode_state(data)
    v1 = _rich_state().to_dict()
    v1["v"] = 3
    with pytest.raises(StateError, match="version"):
        decode_state(v1)
    with pytest.raises(StateError, match="version"):
        PatientState.from_dict(v1)
    with pytest.raises(StateError):
        decode_state({"v": 1, "patient_id": "x"})
    with pytest.raises(StateError):
        decode_state("{}")  # type: ignore[arg-type]


def test_truncated_or_padded_records_raise_state_error() -> None:
    data = encode_state(_rich_state())
    for end in range(len(data)):
        with pytest.raises(StateError):
            decode_state(data[:end])
    with pytest.raises(StateError):
        decode_state(data + b"\x00")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_corrupted_records_raise_nothing_but_state_error(data: st.DataObject) -> None:
    record = bytearray(encode_state(_rich_state()))
    for _ in range(data.draw(st.integers(1, 4))):
        record[data.draw(st.integers(0, len(record) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(StateError):
        decode_state(bytes(record))


def test_unencodable_state_raises_state_error() -> None:
    state = PatientState("p", series={"HR": [(2**64, 80.0)]})
    with pytest.raises(StateError):
        encode_state(state)
    state = PatientState("p", alert={"x": object()})
    with pytest.raises(StateError):
        encode_state(state)


def test_expiry_fields_sit_at_the_documented_offsets() -> None:
    data = encode_state(PatientState("p", watermark_ms=T0, discharged_ms=T0 + 5))
    (flags,) = struct.unpack_from("<H", data, 4)
    assert flags & 2
    assert flags & 8
    assert struct.unpack_from("<q", data, 16) == (T0,)
    assert struct.unpack_from("<q", data, 32) == (T0 + 5,)
    (flags,) = struct.unpack_from("<H", encode_state(PatientState("p")), 4)
    assert not flags & 2
    assert not flags & 8
