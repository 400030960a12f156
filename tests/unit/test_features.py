"""Feature windows: alignment, no look-ahead, gaps, pre-admission bins, empty stays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from streams.core.features import (
    DELTA_CAP_HOURS,
    SERIES_CODES,
    STATIC_FEATURES,
    StayArrays,
    build_features,
    features_at,
)

ADMIT = datetime(2024, 3, 1, 6, 30, tzinfo=UTC)
HR = SERIES_CODES.index("HR")
TEMP = SERIES_CODES.index("Temp")


def at(hours: float) -> datetime:
    return ADMIT + timedelta(hours=hours)


def test_shapes_and_dtypes():
    w = build_features({}, {}, admit_time=ADMIT, end_time=at(10))
    assert w.values.shape == w.mask.shape == w.delta_hours.shape == (48, len(SERIES_CODES))
    assert w.statics.shape == w.static_mask.shape == (len(STATIC_FEATURES),)
    for a in (w.values, w.mask, w.delta_hours, w.statics, w.static_mask):
        assert a.dtype == np.float32
    assert w.end_time == at(10)


def test_empty_stay_is_all_missing():
    w = build_features({}, {}, admit_time=ADMIT, end_time=at(48))
    assert not w.values.any()
    assert not w.mask.any()
    assert (w.delta_hours == DELTA_CAP_HOURS).all()
    assert not w.static_mask.any()


def test_bins_aligned_to_admission_and_last_value_wins():
    obs = {"HR": [(at(2.1), 80.0), (at(2.9), 90.0), (at(3.0), 100.0)]}
    w = build_features(obs, {}, admit_time=ADMIT, end_time=at(5.5))
    # Window holds bins 5-47 .. 5: the last row is bin 5; bin k is row 47 - (5 - k).
    row = {k: 47 - (5 - k) for k in range(6)}
    assert w.values[row[2], HR] == 90.0
    assert w.values[row[3], HR] == 100.0
    assert w.mask[:, HR].sum() == 2
    assert w.values[row[4], HR] == 0.0


def test_duplicate_timestamps_keep_the_later_row():
    obs = {"HR": [(at(1.5), 70.0), (at(1.5), 75.0)]}
    w = build_features(obs, {}, admit_time=ADMIT, end_time=at(2))
    assert w.values[-2, HR] == 75.0


def test_zero_is_a_value():
    obs = {"HR": [(at(1.5), 0.0)]}
    w = build_features(obs, {}, admit_time=ADMIT, end_time=at(2))
    assert w.mask[-2, HR] == 1.0
    assert w.values[-2, HR] == 0.0


def test_no_look_ahead():
    obs = {"HR": [(at(4.0), 80.0), (at(4.5), 120.0), (at(9.0), 60.0)]}
    w = build_features(obs, {}, admit_time=ADMIT, end_time=at(4.25))
    assert w.values[-1, HR] == 80.0
    assert w.mask.sum() == 1
    # The same window whether or not later observations exist.
    w2 = build_features({"HR": obs["HR"][:1]}, {}, admit_time=ADMIT, end_time=at(4.25))
    np.testing.assert_array_equal(w.values, w2.values)
    np.testing.assert_array_equal(w.delta_hours, w2.delta_hours)


def test_observation_at_end_time_counts():
    w = build_features({"HR": [(at(6.0), 77.0)]}, {}, admit_time=ADMIT, end_time=at(6))
    assert w.values[-1, HR] == 77.0


def test_bins_before_admission_are_empty():
    obs = {"HR": [(at(-0.5), 99.0), (at(0.25), 80.0)]}
    w = build_features(obs, {}, admit_time=ADMIT, end_time=at(3.5))
    # Rows 0..43 are bins -44..-1: empty, with the gap at the cap.
    assert not w.mask[:44].any()
    assert (w.delta_hours[:44] == DELTA_CAP_HOURS).all()
    assert w.values[44, HR] == 80.0  # bin 0; the pre-admission row never counts
    assert w.mask[:, HR].sum() == 1


def test_end_before_admission_gives_empty_window():
    w = build_features({"HR": [(at(1), 80.0)]}, {}, admit_time=ADMIT, end_time=at(-2))
    assert not w.mask.any()


def test_delta_semantics():
    obs = {"HR": [(at(0.5), 80.0), (at(3.25), 85.0)]}
    w = build_features(obs, {}, admit_time=ADMIT, end_time=at(5))
    last = 47  # bin 5
    d = w.delta_hours[:, HR]
    assert d[last - 5] == pytest.approx(0.5)  # bin 0 ends at 1 h, seen at 0.5 h
    assert d[last - 4] == pytest.approx(1.5)
    assert d[last - 2] == pytest.approx(0.75)  # bin 3 ends at 4 h, seen at 3.25 h
    assert d[last] == pytest.approx(2.75)  # bin 5 ends at 6 h
    assert d[last - 6] == DELTA_CAP_HOURS  # before any observation
    assert (w.delta_hours[:, TEMP] == DELTA_CAP_HOURS).all()


def test_delta_counts_observations_before_the_window_and_is_capped():
    obs = {"HR": [(at(1.0), 80.0)], "Temp": [(at(10.0), 37.0)]}
    w = build_features(obs, {}, admit_time=ADMIT, end_time=at(60))
    assert not w.mask[:, HR].any()  # bin 1 is outside the window (bins 13..60)
    assert w.delta_hours[0, HR] == pytest.approx(13.0)  # bin 13 ends at 14 h
    assert w.delta_hours[-1, HR] == DELTA_CAP_HOURS  # 60 h > cap
    assert w.delta_hours[0, TEMP] == pytest.approx(4.0)


def test_statics_encoding():
    w = build_features(
        {},
        {"Age": 0.0, "Gender": 1.0, "Height": None, "Weight": 80.0, "ICUType": 3.0},
        admit_time=ADMIT,
        end_time=at(1),
    )
    np.testing.assert_array_equal(w.statics, [0, 1, 0, 80, 0, 0, 1, 0])
    np.testing.assert_array_equal(w.static_mask, [1, 1, 0, 1, 1, 1, 1, 1])


def test_other_step_and_window():
    obs = {"HR": [(at(0.2), 1.0), (at(0.7), 2.0)]}
    w = build_features(
        obs,
        {},
        admit_time=ADMIT,
        end_time=at(1),
        window=timedelta(hours=2),
        step=timedelta(minutes=30),
    )
    assert w.values.shape == (4, len(SERIES_CODES))
    # Bins -1, 0, 1, 2 (the last contains end_time = 1 h).
    np.testing.assert_array_equal(w.values[:, HR], [0.0, 1.0, 2.0, 0.0])


def test_bad_arguments():
    naive = datetime(2024, 1, 1)  # noqa: DTZ001 - testing the rejection of naive times
    with pytest.raises(ValueError, match="timezone-aware"):
        build_features({}, {}, admit_time=naive, end_time=at(1))
    with pytest.raises(ValueError, match="multiple"):
        build_features({}, {}, admit_time=ADMIT, end_time=at(1), window=timedelta(minutes=90))


def test_build_features_equals_features_at_on_packed_arrays():
    rng = np.random.default_rng(0)
    obs = {
        code: sorted(
            (at(float(t)), float(v))
            for t, v in zip(rng.uniform(0, 50, 30), rng.normal(size=30), strict=True)
        )
        for code in SERIES_CODES[:10]
    }
    stay = StayArrays.from_observations(obs, {"Age": 50.0}, admit_time=ADMIT)
    for hours in (0.0, 6.0, 23.5, 48.0, 55.0):
        a = build_features(obs, {"Age": 50.0}, admit_time=ADMIT, end_time=at(hours))
        b = features_at(stay, at(hours))
        for name in ("values", "mask", "delta_hours", "statics", "static_mask"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
