"""``PatientState.features`` (integer offsets straight to ``StayArrays.from_arrays``)
equals the training path ``build_features(state.observations(), ...)`` bit for bit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from streams.core.events import TopicKind
from streams.core.features import FeatureWindow, build_features
from streams.core.pipeline import Processor, ProcessorConfig
from streams.core.state import Origin, PatientState, from_ms, to_ms
from streams.core.validation import CanonicalObservation
from streams.replay import physionet2012_events, read_length_of_stay

DEMO = Path(__file__).resolve().parents[2] / "data" / "physionet2012-demo"
WINDOW = timedelta(hours=48)


def _reference(state: PatientState, at: datetime) -> FeatureWindow:
    assert state.admit_ms is not None
    return build_features(
        state.observations(),
        state.statics,
        admit_time=from_ms(state.admit_ms),
        end_time=at,
        window=WINDOW,
    )


def _assert_same(got: FeatureWindow, want: FeatureWindow) -> None:
    for name in ("values", "mask", "delta_hours", "statics", "static_mask"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype, name
        assert a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert got.end_time == want.end_time


def test_features_equal_training_path_on_real_stays() -> None:
    paths = sorted((DEMO / "set-a").glob("*.txt"))[:12]
    los = read_length_of_stay(DEMO / "Outcomes-a.txt")
    processor = Processor(ProcessorConfig(), lambda: datetime.now(UTC))
    states: dict[str, PatientState] = {}
    compared = 0
    for offset, event in enumerate(physionet2012_events(paths, length_of_stay=los)):
        origin = Origin(f"t.{event.kind.value}", 0, offset)
        processor.ingest(states, event.kind, event.patient_id.encode(), event.payload, origin)
        state = states.get(event.patient_id)
        if state is None or state.watermark_ms is None or event.kind is TopicKind.ADT:
            continue
        at = state.observation_time
        for moment in (at, at - timedelta(minutes=37, seconds=11), at + timedelta(hours=3)):
            _assert_same(state.features(WINDOW, at=moment), _reference(state, moment))
            compared += 1
    assert compared > 500


def test_features_equal_training_path_with_early_unknown_and_tied_points() -> None:
    admit = datetime(2025, 1, 1, tzinfo=UTC)
    state = PatientState("p1", admit_ms=to_ms(admit))
    state.series = {
        "HR": [(to_ms(admit - timedelta(hours=1)), 80.0), (to_ms(admit), 81.0)],
        "Temp": [(to_ms(admit + timedelta(minutes=5)), 37.1)] * 2,
        "NotAModelCode": [(to_ms(admit + timedelta(hours=2)), 1.0)],
    }
    state.watermark_ms = to_ms(admit + timedelta(hours=2))
    state.statics = {"Age": 70.0, "ICUType": 3.0}
    at = admit + timedelta(hours=2, microseconds=250)
    _assert_same(state.features(WINDOW, at=at), _reference(state, at))


def test_features_without_admission_time_still_match() -> None:
    state = PatientState("p2")
    now = datetime(2025, 1, 2, tzinfo=UTC)
    state.apply_observations(
        "e1",
        now,
        [CanonicalObservation(code="HR", value=90.0, unit="bpm", artifact=False)],
        origin=None,
        lateness=timedelta(hours=2),
        window=WINDOW,
    )
    state.admit_ms = None
    got = state.features(WINDOW)
    want = build_features(
        state.observations(), state.statics, admit_time=now, end_time=now, window=WINDOW
    )
    _assert_same(got, want)


@pytest.mark.parametrize("hours", [0, 47, 60])
def test_window_edges(hours: int) -> None:
    admit = datetime(2025, 1, 1, tzinfo=UTC)
    state = PatientState("p3", admit_ms=to_ms(admit))
    state.series = {"HR": [(to_ms(admit + timedelta(hours=h)), 70.0 + h) for h in range(61)]}
    state.watermark_ms = to_ms(admit + timedelta(hours=60))
    at = admit + timedelta(hours=hours)
    _assert_same(state.features(WINDOW, at=at), _reference(state, at))
