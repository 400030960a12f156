"""PatientState: dedup, lateness per stream, artifacts, bounds, expiry, scoring inputs."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from streams.core.codes import CODES
from streams.core.events import (
    AdtEvent,
    IcuType,
    Observation,
    ObservationEvent,
    OffsetRange,
    TopicKind,
)
from streams.core.features import SERIES_CODES, build_features
from streams.core.news2 import News2Parameter
from streams.core.state import (
    MAX_LATE_RECORDS,
    MAX_POINTS_PER_CODE,
    MAX_PROVENANCE_IDS,
    MAX_RECENT_IDS,
    Origin,
    Outcome,
    PatientState,
    from_ms,
    to_ms,
)
from streams.core.stepping import ModelState
from streams.core.validation import CanonicalObservation, decode_input

PID = "stay-132539"
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
LATENESS = timedelta(hours=2)
WINDOW = timedelta(hours=48)
NOW = datetime(2024, 6, 1, tzinfo=UTC)  # wall clock for decoding only


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def ms(minutes: float) -> int:
    return to_ms(at(minutes))


def decoded(
    event_id: str, minutes: float, values: dict[str, float], kind: TopicKind = TopicKind.VITALS
) -> tuple[ObservationEvent, tuple[CanonicalObservation, ...]]:
    """An ObservationEvent in canonical units, through the real edge validation."""
    event = ObservationEvent(
        event_id=event_id,
        patient_id=PID,
        event_time=at(minutes),
        source="monitor-bed-7",
        observations=tuple(
            Observation(code=code, value=value, unit=CODES[code].unit)
            for code, value in values.items()
        ),
    )
    result = decode_input(
        kind,
        event.model_dump_json().encode(),
        now=NOW,
        max_future=timedelta(minutes=5),
        max_bytes=256 * 1024,
    )
    assert isinstance(result.event, ObservationEvent)
    return result.event, result.observations


def apply(
    state: PatientState,
    event_id: str,
    minutes: float,
    values: dict[str, float],
    *,
    stream: str = "vitals",
    origin: Origin | None = None,
    window: timedelta = WINDOW,
) -> Outcome:
    kind = TopicKind.LABS if stream == "labs" else TopicKind.VITALS
    event, observations = decoded(event_id, minutes, values, kind)
    return state.apply_observations(
        event.event_id,
        event.event_time,
        observations,
        origin=origin,
        lateness=LATENESS,
        window=window,
        stream=stream,
    )


def adt(event_id: str, minutes: float, action: str = "admit", **descriptors: object) -> AdtEvent:
    return AdtEvent.model_validate(
        {
            "event_id": event_id,
            "patient_id": PID,
            "event_time": at(minutes),
            "source": "adt-feed",
            "action": action,
            **descriptors,
        }
    )


def hr_series(state: PatientState) -> list[tuple[int, float]]:
    return state.series["HR"]


# -- de-duplication and ordering ---------------------------------------------------------------


def test_duplicate_event_id_is_ignored():
    state = PatientState(PID)
    assert apply(state, "ev-1", 0, {"HR": 80.0}) is Outcome.ACCEPTED
    before = state.to_dict()
    # Same id, even with other content and a later time: ignored entirely.
    assert apply(state, "ev-1", 5, {"HR": 140.0}) is Outcome.DUPLICATE
    assert state.to_dict() == before
    assert hr_series(state) == [(ms(0), 80.0)]


def test_duplicate_adt_event_is_ignored():
    state = PatientState(PID)
    event = adt("adt-1", 0, age_years=67.0)
    assert state.apply_adt(event, origin=None, lateness=LATENESS) is Outcome.ACCEPTED
    assert state.apply_adt(event, origin=None, lateness=LATENESS) is Outcome.DUPLICATE
    assert state.pending_ids == ["adt-1"]


def test_out_of_order_within_lateness_is_inserted_in_time_order():
    state = PatientState(PID)
    for event_id, minute, hr in [("a", 60, 80.0), ("b", 30, 90.0), ("c", 45, 100.0), ("d", 0, 70)]:
        assert apply(state, event_id, minute, {"HR": hr}) is Outcome.ACCEPTED
    assert hr_series(state) == [(ms(0), 70.0), (ms(30), 90.0), (ms(45), 100.0), (ms(60), 80.0)]
    assert state.watermark_ms == ms(60)
    assert [t for t, _ in state.observations()["HR"]] == [at(0), at(30), at(45), at(60)]


def test_equal_times_keep_arrival_order():
    state = PatientState(PID)
    apply(state, "first", 0, {"RespRate": 18.0})
    apply(state, "a", 60, {"HR": 80.0})
    apply(state, "b", 30, {"HR": 70.0})  # late: inserted
    apply(state, "c", 30, {"HR": 75.0})  # late, same time: after "b"
    apply(state, "d", 60, {"HR": 85.0})  # in order, same time: after "a"
    assert hr_series(state) == [(ms(30), 70.0), (ms(30), 75.0), (ms(60), 80.0), (ms(60), 85.0)]
    # The feature code takes the last value of a bin: the later arrival wins.
    hr = SERIES_CODES.index("HR")
    window = state.features(WINDOW, at=at(40))
    assert window.values[-1, hr] == 75.0


def test_beyond_lateness_is_too_late():
    state = PatientState(PID)
    apply(state, "now", 300, {"HR": 80.0})
    before = state.to_dict()
    late_minutes = 300 - LATENESS / timedelta(minutes=1)
    assert apply(state, "late", late_minutes - 0.001, {"HR": 60.0}) is Outcome.TOO_LATE
    assert state.to_dict() == before
    # Exactly at the bound is still accepted.
    assert apply(state, "edge", late_minutes, {"HR": 61.0}) is Outcome.ACCEPTED
    assert hr_series(state)[0] == (ms(late_minutes), 61.0)
    # A rejected event is not remembered: it stays too late, it does not become a duplicate.
    assert apply(state, "late", late_minutes - 0.001, {"HR": 60.0}) is Outcome.TOO_LATE


def test_lateness_is_judged_per_stream():
    state = PatientState(PID)
    apply(state, "v1", 300, {"HR": 80.0}, stream="vitals")
    # A lab drawn 4 h before the latest vitals (> 2 h lateness) is on time for its stream.
    assert apply(state, "l1", 60, {"Lactate": 3.1}, stream="labs") is Outcome.ACCEPTED
    assert state.series["Lactate"] == [(ms(60), 3.1)]
    assert apply(state, "l2", 30, {"Lactate": 2.0}, stream="labs") is Outcome.ACCEPTED
    # The same lag on the vitals stream is too late.
    assert apply(state, "v2", 60, {"HR": 81.0}, stream="vitals") is Outcome.TOO_LATE
    # And the labs stream has its own bound.
    apply(state, "l3", 400, {"Lactate": 4.0}, stream="labs")
    assert apply(state, "l4", 200, {"Lactate": 1.0}, stream="labs") is Outcome.TOO_LATE
    assert state.stream_watermarks == {"vitals": ms(300), "labs": ms(400)}
    assert state.watermark_ms == ms(400)


def test_adt_has_its_own_lateness_stream():
    state = PatientState(PID)
    apply(state, "v1", 600, {"HR": 80.0})
    admit = adt("adt-1", 0, age_years=71.0)
    assert state.apply_adt(admit, origin=None, lateness=LATENESS) is Outcome.ACCEPTED
    assert state.admit_ms == ms(0)
    assert state.stream_watermarks["adt"] == ms(0)
    late = adt("adt-2", -200, action="transfer")
    assert state.apply_adt(late, origin=None, lateness=LATENESS) is Outcome.TOO_LATE


# -- artifacts -------------------------------------------------------------------------------


def test_artifacts_are_counted_and_kept_out_of_the_series():
    state = PatientState(PID)
    # HR 400 and Temp 20 °C are outside the physiological range; SpO2 0 % is a value.
    outcome = apply(state, "ev-1", 0, {"HR": 400.0, "Temp": 20.0, "SpO2": 0.0, "RespRate": 18})
    assert outcome is Outcome.ACCEPTED
    assert state.artifacts == 2
    assert state.series == {"SpO2": [(ms(0), 0.0)], "RespRate": [(ms(0), 18.0)]}
    # An all-artifact event is still accepted (and cited), but adds no point.
    assert apply(state, "ev-2", 5, {"HR": -1.0}) is Outcome.ACCEPTED
    assert state.artifacts == 3
    assert "HR" not in state.series
    assert state.pending_ids == ["ev-1", "ev-2"]


def test_adt_descriptor_artifacts_are_counted_and_not_used():
    state = PatientState(PID)
    event = AdtEvent(
        event_id="adt-1",
        patient_id=PID,
        event_time=at(0),
        source="adt-feed",
        action="admit",
        age_years=67.0,
        height_cm=172.0,
        weight_kg=950.0,  # a unit slip (pounds × 2?), beyond 400 kg
        sex="female",
        icu_type=IcuType.MEDICAL,
    )
    result = decode_input(
        TopicKind.ADT,
        event.model_dump_json().encode(),
        now=NOW,
        max_future=timedelta(minutes=5),
        max_bytes=256 * 1024,
    )
    state.apply_adt(event, origin=None, lateness=LATENESS, artifacts=result.artifacts)
    assert state.artifacts == 1
    assert state.statics == {"Age": 67.0, "Height": 172.0, "Gender": 0.0, "ICUType": 3.0}


# -- bounds ----------------------------------------------------------------------------------


def test_window_prunes_old_points_and_empty_codes():
    state = PatientState(PID)
    window = timedelta(hours=6)
    apply(state, "a", 0, {"HR": 80.0, "Temp": 37.2}, window=window)
    apply(state, "b", 120, {"HR": 82.0}, window=window)
    apply(state, "c", 300, {"HR": 84.0}, window=window)
    assert [t for t, _ in hr_series(state)] == [ms(0), ms(120), ms(300)]
    apply(state, "d", 480, {"HR": 86.0}, window=window)  # horizon 120: exactly kept
    assert [t for t, _ in hr_series(state)] == [ms(120), ms(300), ms(480)]
    assert "Temp" not in state.series
    apply(state, "e", 481, {"HR": 88.0}, window=window)
    assert [t for t, _ in hr_series(state)] == [ms(300), ms(480), ms(481)]


def test_point_cap_per_code_keeps_the_newest():
    state = PatientState(PID)
    extra = 10
    for i in range(MAX_POINTS_PER_CODE + extra):
        apply(state, f"ev-{i}", i / 60, {"HR": 60.0 + i % 100})  # one per second
    points = hr_series(state)
    assert len(points) == MAX_POINTS_PER_CODE
    assert points[0][0] == ms(extra / 60)
    assert points[-1][0] == ms((MAX_POINTS_PER_CODE + extra - 1) / 60)


def _feed(state: PatientState, first: int, stop: int) -> PatientState:
    """Events ``first..stop-1``, one minute apart, four vitals each (built directly)."""
    for i in range(first, stop):
        observations = [
            CanonicalObservation("HR", 60.0 + i % 40, "/min", False),
            CanonicalObservation("RespRate", 12.0 + i % 20, "/min", False),
            CanonicalObservation("SpO2", 88.0 + i % 12, "%", False),
            CanonicalObservation("Temp", round(36.0 + (i % 30) / 10, 1), "Cel", False),
        ]
        state.apply_observations(
            f"ev-{i:07d}",
            at(i),
            observations,
            origin=Origin("vigil.vitals", 3, 1_000_000 + i),
            lateness=LATENESS,
            window=WINDOW,
        )
    return state


def _json_size(state: PatientState) -> int:
    return len(json.dumps(state.to_dict()).encode())


def test_state_size_is_bounded_for_a_long_unscored_stay():
    # 10,000 events over ~7 days, never scored: the worst case for pending provenance.
    state = _feed(PatientState(PID), 0, 6_000)
    size_at_6000 = _json_size(state)
    _feed(state, 6_000, 10_000)
    assert all(len(points) == MAX_POINTS_PER_CODE for points in state.series.values())
    assert len(state.series) == 4
    assert len(state.recent_ids) == MAX_RECENT_IDS
    assert len(state.pending_ids) == MAX_PROVENANCE_IDS
    assert state.pending_offsets == {"vigil.vitals\x1f3": [1_000_000, 1_009_999]}
    # The newest ids are the ones remembered.
    assert "ev-0009999" in state.recent_ids
    assert "ev-0000000" not in state.recent_ids
    # Bound, from the JSON text of each part:
    #   series: 4 codes x 512 points x len('[1714560000000, 36.9], ') <= 24 -> 49,152
    #   recent_ids: 4096 x len('"ev-0009999": 1714560000000, ') = 29   -> 118,784
    #   pending_ids: 1024 x len('"ev-0000000", ') = 14                   -> 14,336
    #   everything else (a few scalars and keys)                        <  1,024
    bound = 4 * 512 * 24 + 4096 * 29 + 1024 * 14 + 1024
    assert _json_size(state) <= bound
    # Every bound was reached long before 6,000 events: the size no longer grows.
    assert _json_size(state) == size_at_6000


def test_dedup_memory_keeps_the_most_recent_ids():
    state = _feed(PatientState(PID), 0, MAX_RECENT_IDS + 5)
    assert len(state.recent_ids) == MAX_RECENT_IDS
    assert min(state.recent_ids.values()) == ms(5)


# -- admission and expiry ----------------------------------------------------------------------


def test_admit_before_observations_sets_the_time_origin_and_statics():
    state = PatientState(PID)
    admit = adt(
        "adt-1",
        0,
        age_years=54.0,
        sex="male",
        height_cm=180.0,
        weight_kg=82.5,
        icu_type=IcuType.SURGICAL,
    )
    state.apply_adt(admit, origin=None, lateness=LATENESS)
    apply(state, "ev-1", 90, {"HR": 95.0})
    assert state.admit_ms == ms(0)
    assert state.statics == {
        "Age": 54.0,
        "Height": 180.0,
        "Weight": 82.5,
        "Gender": 1.0,
        "ICUType": 4.0,
    }
    hr = SERIES_CODES.index("HR")
    # Bins are aligned to admission: 08:00 + 1 h, so 09:30 falls in the last bin at 09:45.
    window = state.features(WINDOW)
    assert window.values[-1, hr] == 95.0
    assert window.end_time == at(90)


def test_default_origin_is_the_earliest_event_not_the_first_to_arrive():
    # Without an ADT admit, a lab that arrives after later vitals is not "pre-admission".
    state = PatientState(PID)
    apply(state, "v1", 90, {"HR": 95.0})
    apply(state, "l1", 20, {"Lactate": 4.2}, stream="labs")
    assert state.admit_ms == ms(20)
    lactate = SERIES_CODES.index("Lactate")
    assert state.features(WINDOW).mask[:, lactate].sum() == 1


def test_adt_admit_is_the_origin_even_for_earlier_observations():
    state = PatientState(PID)
    state.apply_adt(adt("adt-1", 60), origin=None, lateness=LATENESS)
    apply(state, "v1", 30, {"HR": 95.0})
    assert state.admit_ms == ms(60)
    hr = SERIES_CODES.index("HR")
    assert state.features(WINDOW).mask[:, hr].sum() == 0  # before admission: not counted


def test_admit_after_observations_moves_the_time_origin_back():
    state = PatientState(PID)
    apply(state, "ev-1", 90, {"HR": 95.0})
    assert state.admit_ms == ms(90)  # default origin: the first event
    state.apply_adt(adt("adt-1", 0, age_years=54.0), origin=None, lateness=LATENESS)
    assert state.admit_ms == ms(0)
    assert state.statics == {"Age": 54.0}


def test_expires_on_discharge_regardless_of_time():
    state = PatientState(PID)
    apply(state, "ev-1", 0, {"HR": 80.0})
    state.apply_adt(adt("adt-9", 10, action="discharge"), origin=None, lateness=LATENESS)
    assert state.discharged_ms == ms(10)
    assert state.expired(at(10), silence=timedelta(hours=24))


def test_a_discharge_far_ahead_keeps_the_history_since_admission_complete():
    """A discharge read after the last vital signs but dated weeks later moves the
    watermark, not the prune horizon: the history since admission is still whole, so the
    stay's final score may rebuild its step state like the score before it (a replay once
    gave that final score a stale vector in one run and a rebuilt one in the other)."""
    state = PatientState(PID)
    state.apply_adt(adt("adt-1", 0), origin=None, lateness=LATENESS)
    apply(state, "ev-1", 47 * 60, {"HR": 80.0})
    assert state.holds_since_admission(WINDOW, ms(47 * 60))
    state.apply_adt(adt("adt-9", 75 * 24 * 60, action="discharge"), origin=None, lateness=LATENESS)
    assert state.watermark_ms == ms(75 * 24 * 60)
    assert state.holds_since_admission(WINDOW, ms(47 * 60))
    apply(state, "ev-2", 49 * 60, {"HR": 82.0})  # the data itself passes the window
    assert not state.holds_since_admission(WINDOW, ms(49 * 60))


def test_history_is_not_complete_without_an_admission_time():
    assert not PatientState(PID).holds_since_admission(WINDOW, ms(0))


def test_readmission_clears_the_discharge():
    state = PatientState(PID)
    state.apply_adt(adt("adt-1", 0, action="discharge"), origin=None, lateness=LATENESS)
    state.apply_adt(adt("adt-2", 60), origin=None, lateness=LATENESS)
    assert state.discharged_ms is None
    assert not state.expired(at(60), silence=timedelta(hours=24))


def test_update_takes_descriptors_and_changes_neither_admission_nor_discharge():
    state = PatientState(PID)
    state.apply_adt(adt("adt-1", 0, age_years=54.0), origin=None, lateness=LATENESS)
    state.apply_adt(adt("adt-2", 30, action="discharge"), origin=None, lateness=LATENESS)
    update = adt("adt-3", 45, action="update", weight_kg=80.0)
    assert state.apply_adt(update, origin=None, lateness=LATENESS) is Outcome.ACCEPTED
    assert (state.admit_ms, state.discharged_ms) == (ms(0), ms(30))
    assert state.statics == {"Age": 54.0, "Weight": 80.0}


def test_expires_after_silence_measured_in_event_time():
    state = PatientState(PID)
    silence = timedelta(hours=24)
    assert not state.expired(at(0), silence)  # nothing seen yet
    apply(state, "ev-1", 0, {"HR": 80.0})
    # The wall clock (long after 2024) plays no part: only the event time passed in.
    assert not state.expired(at(0), silence)
    assert not state.expired(at(24 * 60 - 0.001), silence)
    assert state.expired(at(24 * 60), silence)
    apply(state, "ev-2", 23 * 60, {"HR": 82.0})
    assert not state.expired(at(24 * 60), silence)


def test_removable_reads_the_stored_state_as_expired_and_the_lateness_rule_do():
    """The worker's sweep judges stored states without decoding them: silent for
    ``silence``, or discharged at least ``lateness`` ago (late events may still come)."""
    silence = timedelta(hours=24)
    lateness = timedelta(hours=2)
    quiet = PatientState(PID)
    assert not PatientState.removable(quiet.to_dict(), at(10_000), silence, lateness)
    apply(quiet, "ev-1", 0, {"HR": 80.0})
    assert not PatientState.removable(quiet.to_dict(), at(24 * 60 - 1), silence, lateness)
    assert PatientState.removable(quiet.to_dict(), at(24 * 60), silence, lateness)
    gone = PatientState(PID)
    apply(gone, "ev-1", 0, {"HR": 80.0})
    gone.apply_adt(adt("adt-9", 10, action="discharge"), origin=None, lateness=LATENESS)
    assert gone.expired(at(10), silence)  # discharged ...
    assert not PatientState.removable(gone.to_dict(), at(10 + 119), silence, lateness)
    assert PatientState.removable(gone.to_dict(), at(10 + 120), silence, lateness)


# -- serialisation -----------------------------------------------------------------------------


def _rich_state() -> PatientState:
    state = PatientState(PID)
    origin = Origin("vigil.adt", 0, 7)
    state.apply_adt(adt("adt-1", 0, age_years=67.0, sex="female"), origin=origin, lateness=LATENESS)
    apply(
        state,
        "v1",
        10,
        {"HR": 88.0, "SpO2": 94.0, "Temp": 38.4},
        origin=Origin("vigil.vitals", 1, 40),
    )
    apply(state, "l1", 5, {"Lactate": 2.7}, stream="labs", origin=Origin("vigil.labs", 0, 3))
    apply(state, "v2", 20, {"HR": 400.0, "RespRate": 24.0}, origin=Origin("vigil.vitals", 1, 41))
    state.add_image(at(15), [0.25, -1.5, 3.0])
    state.take_provenance()
    state.mark_scored({"at_ms": state.watermark_ms, "risk": 0.42, "news2": 5})
    state.alert = {"active": {"id": "0" * 32, "kind": "deterioration", "peak": 0.61}}
    apply(state, "v3", 30, {"HR": 91.0}, origin=Origin("vigil.vitals", 1, 42))
    return state


def test_dict_round_trip_is_exact():
    state = _rich_state()
    assert PatientState.from_dict(state.to_dict()) == state


def test_dict_round_trip_through_json():
    state = _rich_state()
    restored = PatientState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored == state
    assert restored.to_dict() == state.to_dict()
    # The restored state behaves the same: it remembers ids and stream watermarks.
    assert apply(restored, "v1", 10, {"HR": 88.0}) is Outcome.DUPLICATE
    assert apply(restored, "v9", -200, {"HR": 88.0}) is Outcome.TOO_LATE
    assert restored.take_provenance() == state.take_provenance()


def test_from_dict_rejects_other_versions():
    data = _rich_state().to_dict()
    data["v"] = 2
    with pytest.raises(ValueError, match="version"):
        PatientState.from_dict(data)


# -- model input and NEWS2 ---------------------------------------------------------------------


def test_features_equal_build_features_on_the_same_observations():
    state = _rich_state()
    expected = build_features(
        {
            "HR": [(at(10), 88.0), (at(30), 91.0)],
            "SpO2": [(at(10), 94.0)],
            "Temp": [(at(10), 38.4)],
            "Lactate": [(at(5), 2.7)],
            "RespRate": [(at(20), 24.0)],
        },
        {"Age": 67.0, "Gender": 0.0},
        admit_time=at(0),
        end_time=at(30),
        window=WINDOW,
    )
    for moment in (None, at(30)):
        got = state.features(WINDOW, at=moment)
        for name in ("values", "mask", "delta_hours", "statics", "static_mask"):
            np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), name)
        assert got.end_time == expected.end_time
    assert state.features(WINDOW).mask.sum() > 0


def test_news2_uses_the_latest_values():
    state = PatientState(PID)
    apply(state, "a", 0, {"HR": 80.0, "RespRate": 16.0})
    apply(state, "b", 30, {"HR": 135.0})
    result = state.news2(timedelta(hours=6))
    assert result.sub_scores[News2Parameter.PULSE] == 3
    assert result.sub_scores[News2Parameter.RESPIRATION_RATE] == 0
    # Scored at an earlier time, the later value is not yet known.
    earlier = state.news2(timedelta(hours=6), at=at(10))
    assert earlier.sub_scores[News2Parameter.PULSE] == 0


def test_news2_treats_stale_values_as_missing():
    state = PatientState(PID)
    apply(state, "a", 0, {"RespRate": 26.0, "HR": 80.0})
    apply(state, "b", 6 * 60 + 1, {"HR": 82.0})
    result = state.news2(timedelta(hours=6))
    assert News2Parameter.RESPIRATION_RATE in result.missing
    assert result.sub_scores[News2Parameter.RESPIRATION_RATE] is None
    assert result.total == 0
    # At exactly max_age it still counts.
    assert (
        state.news2(timedelta(hours=6), at=at(6 * 60)).sub_scores[News2Parameter.RESPIRATION_RATE]
        == 3
    )


def test_news2_zero_spo2_is_a_value_not_missing():
    state = PatientState(PID)
    apply(state, "a", 0, {"SpO2": 0.0})
    result = state.news2(timedelta(hours=6))
    assert result.sub_scores[News2Parameter.SPO2] == 3


def test_news2_survives_an_unusable_ventilation_value():
    state = PatientState(PID)
    apply(state, "a", 0, {"MechVent": 0.5, "FiO2": 0.4, "HR": 135.0})
    result = state.news2(timedelta(hours=6))
    assert result.sub_scores[News2Parameter.PULSE] == 3
    assert News2Parameter.AIR_OR_OXYGEN in result.missing


def test_features_and_news2_need_an_event_time():
    state = PatientState(PID)
    with pytest.raises(ValueError, match="event time"):
        state.news2(timedelta(hours=6))
    with pytest.raises(ValueError, match="event time"):
        state.features(WINDOW)


# -- provenance and scheduling -----------------------------------------------------------------


def test_take_provenance_returns_and_clears_ids_and_offset_ranges():
    state = PatientState(PID)
    apply(state, "v1", 0, {"HR": 80.0}, origin=Origin("vigil.vitals", 2, 100))
    apply(state, "v2", 1, {"HR": 81.0}, origin=Origin("vigil.vitals", 2, 104))
    apply(state, "v0", -1, {"HR": 79.0}, origin=Origin("vigil.vitals", 2, 102))
    apply(state, "l1", 2, {"K": 4.1}, stream="labs", origin=Origin("vigil.labs", 0, 9))
    apply(state, "x1", 3, {"HR": 82.0})  # offline: no origin
    apply(state, "v1", 0, {"HR": 80.0}, origin=Origin("vigil.vitals", 2, 150))  # duplicate
    apply(state, "v9", -500, {"HR": 80.0}, origin=Origin("vigil.vitals", 2, 151))  # too late
    ids, offsets = state.take_provenance()
    assert ids == ("v1", "v2", "v0", "l1", "x1")
    assert offsets == (
        OffsetRange(topic="vigil.labs", partition=0, first_offset=9, last_offset=9),
        OffsetRange(topic="vigil.vitals", partition=2, first_offset=100, last_offset=104),
    )
    assert state.take_provenance() == ((), ())
    apply(state, "v3", 4, {"HR": 83.0}, origin=Origin("vigil.vitals", 2, 105))
    assert state.take_provenance() == (
        ("v3",),
        (OffsetRange(topic="vigil.vitals", partition=2, first_offset=105, last_offset=105),),
    )


def test_due_for_score_with_the_interval():
    interval = timedelta(minutes=30)
    state = PatientState(PID)
    assert not state.due_for_score(interval)  # nothing yet
    apply(state, "a", 0, {"HR": 80.0})
    assert state.due_for_score(interval)  # never scored
    state.mark_scored({"at_ms": state.watermark_ms})
    assert state.last_scored_ms == ms(0)
    assert not state.due_for_score(interval)
    apply(state, "b", 29, {"HR": 81.0})
    assert not state.due_for_score(interval)
    apply(state, "c", 10, {"HR": 82.0})  # late: does not move the watermark
    assert not state.due_for_score(interval)
    apply(state, "d", 30, {"HR": 83.0})
    assert state.due_for_score(interval)
    state.mark_scored({"at_ms": state.watermark_ms})
    # No change since the last score: never due, however much time passes.
    assert apply(state, "d", 30, {"HR": 83.0}) is Outcome.DUPLICATE
    assert not state.due_for_score(interval)


def test_images_keep_the_most_recent_in_time_order():
    state = PatientState(PID)
    for minute in (50, 10, 40, 20, 30, 60):
        state.add_image(at(minute), [float(minute)])
    assert [t for t, _ in state.images] == [ms(m) for m in (30, 40, 50, 60)]


def test_epoch_ms_helpers():
    assert from_ms(to_ms(at(12.5))) == at(12.5)
    with pytest.raises(ValueError, match="timezone-aware"):
        to_ms(datetime(2024, 5, 1, 8, 0))  # noqa: DTZ001 - the naive input under test


def _assert_sorted(series: Iterable[tuple[int, float]]) -> None:
    times = [t for t, _ in series]
    assert times == sorted(times)


def test_series_stay_time_sorted_under_shuffled_arrival():
    # A deterministic shuffle of 200 events within the lateness bound.
    state = PatientState(PID)
    order = [(i * 37) % 200 for i in range(200)]
    for i in order:
        apply(state, f"ev-{i}", i * 0.5, {"HR": 60.0 + i % 50})
    _assert_sorted(hr_series(state))
    assert len(hr_series(state)) == 200


def test_a_discharge_read_ahead_of_the_data_does_not_prune_it():
    # A replay's ADT topic can run days ahead of the vitals topic: the discharge (day 6)
    # arrives before the last vitals (hour 40). The window must follow the observations.
    state = PatientState(PID)
    state.apply_adt(adt("admit", 0), origin=None, lateness=LATENESS)
    state.apply_adt(adt("discharge", 6 * 24 * 60, "discharge"), origin=None, lateness=LATENESS)
    assert apply(state, "v1", 30 * 60, {"HR": 90.0}) is Outcome.ACCEPTED
    assert apply(state, "v2", 40 * 60, {"HR": 95.0}) is Outcome.ACCEPTED
    assert hr_series(state) == [(ms(30 * 60), 90.0), (ms(40 * 60), 95.0)]
    assert state.observation_time == at(40 * 60)
    window = state.features(WINDOW, at=state.observation_time)
    assert window.mask[:, SERIES_CODES.index("HR")].sum() == 2


def test_may_drop_is_the_stored_state_rule() -> None:
    state = PatientState("p-drop")
    state.watermark_ms = 1_700_000_000_000
    now = datetime.fromtimestamp(1_700_000_000 + 3600, tz=UTC)
    silence, lateness = timedelta(hours=2), timedelta(minutes=30)
    assert not state.may_drop(now, silence, lateness)
    assert state.may_drop(now + timedelta(hours=1), silence, lateness)
    state.discharged_ms = 1_700_000_000_000
    assert state.may_drop(now, silence, lateness)  # discharged an hour ago, lateness 30 min
    assert state.may_drop(now, silence, lateness) == PatientState.removable(
        state.to_dict(), now, silence, lateness
    )


def test_out_of_order_records_are_listed_within_a_bound_that_keeps_the_earliest():
    state = PatientState(PID)
    apply(state, "v-first", 100, {"HR": 80.0})
    assert state.late_records == []  # in order: nothing to list
    for i in range(MAX_LATE_RECORDS + 10):
        apply(state, f"l{i}", 99 - i * 0.5, {"HR": 81.0}, stream="labs")
    assert len(state.late_records) == MAX_LATE_RECORDS
    counts = [n for n, _ in state.late_records]
    assert counts == sorted(counts)
    earliest = min(t for _, t in state.late_records)
    assert earliest == state.series["HR"][0][0]  # the earliest late record is still covered
    state.keep_model_state(ModelState("m/1", 0, 1, b""), counts[-1])
    assert state.late_records == []
