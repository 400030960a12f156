"""Step bins (streams/core/step_features.py): the worker's per-bin path, the training path
and features_at agree on real demo stays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from streams.core.features import DELTA_CAP_HOURS, SERIES_CODES, StayArrays, features_at
from streams.core.step_features import (
    BINS_PER_REQUEST,
    bin_index,
    bin_inputs,
    pack_bins,
    stay_bins,
)
from streams.datasets.physionet2012 import load_stays

DEMO_DIR = Path(__file__).resolve().parents[2] / "data" / "physionet2012-demo"
ADMIT = datetime(2012, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def demo_stays():
    stays, _ = load_stays(DEMO_DIR)
    return stays[:12]


def test_stay_bins_are_features_at_rows_of_non_empty_bins(demo_stays):
    for stay in demo_stays:
        arrays = stay.arrays(ADMIT)
        end = ADMIT + timedelta(hours=30, minutes=17)
        bins = stay_bins(arrays, end)
        full = features_at(arrays, end, window=timedelta(hours=31))
        non_empty = np.flatnonzero(full.mask.any(axis=1))
        assert bins.index.tolist() == non_empty.tolist()
        np.testing.assert_array_equal(bins.values, full.values[non_empty])
        np.testing.assert_array_equal(bins.mask, full.mask[non_empty])
        np.testing.assert_array_equal(bins.delta_hours, full.delta_hours[non_empty])
        assert bins.mask.any(axis=1).all()


def test_bin_inputs_equal_stay_bins_closed_and_open(demo_stays):
    for stay in demo_stays:
        arrays = stay.arrays(ADMIT)
        observations = stay.observations(ADMIT)
        for end in (ADMIT + timedelta(hours=24), ADMIT + timedelta(hours=47, minutes=59)):
            bins = stay_bins(arrays, end)
            last = bin_index(ADMIT, end)
            by_index = {int(i): bins.bin(k) for k, i in enumerate(bins.index)}
            for index in range(last + 1):
                got = bin_inputs(
                    observations,
                    admit_time=ADMIT,
                    index=index,
                    end_time=end if index == last else None,
                )
                expected = by_index.get(index)
                if expected is None:
                    assert got is None
                    continue
                assert got is not None
                assert got.index == index
                np.testing.assert_array_equal(got.values, expected.values)
                np.testing.assert_array_equal(got.mask, expected.mask)
                np.testing.assert_array_equal(got.delta_hours, expected.delta_hours)


def test_open_bin_ignores_later_observations_and_measures_gaps_from_bin_end():
    obs = {
        "HR": [(ADMIT + timedelta(minutes=10), 80.0), (ADMIT + timedelta(minutes=50), 90.0)],
        "Temp": [(ADMIT + timedelta(minutes=5), 37.0)],
    }
    open_bin = bin_inputs(obs, admit_time=ADMIT, index=0, end_time=ADMIT + timedelta(minutes=20))
    assert open_bin is not None
    hr = SERIES_CODES.index("HR")
    assert open_bin.values[hr] == 80.0
    assert open_bin.delta_hours[hr] == pytest.approx(50 / 60)
    closed = bin_inputs(obs, admit_time=ADMIT, index=0)
    assert closed is not None
    assert closed.values[hr] == 90.0
    later = bin_inputs(obs, admit_time=ADMIT, index=3)
    assert later is None  # an hour without observations is no step
    assert closed.delta_hours[SERIES_CODES.index("Na")] == DELTA_CAP_HOURS


def test_observations_before_admission_and_non_finite_values_do_not_count():
    obs = {
        "HR": [(ADMIT - timedelta(minutes=30), 70.0), (ADMIT + timedelta(minutes=5), float("nan"))],
        "Na": [(ADMIT + timedelta(minutes=1), 140.0)],
    }
    got = bin_inputs(obs, admit_time=ADMIT, index=0)
    packed = StayArrays.from_observations(obs, {}, admit_time=ADMIT)
    row = features_at(packed, ADMIT + timedelta(minutes=59), window=timedelta(hours=1))
    assert got is not None
    np.testing.assert_array_equal(got.values, row.values[0])
    np.testing.assert_array_equal(got.mask, row.mask[0])
    np.testing.assert_array_equal(got.delta_hours, row.delta_hours[0])


def test_pack_bins_pads_and_refuses_too_many(demo_stays):
    bins = stay_bins(demo_stays[0].arrays(ADMIT), ADMIT + timedelta(hours=10))
    items = [bins.bin(i) for i in range(3)]
    values, mask, delta, valid = pack_bins(items)
    assert values.shape == mask.shape == delta.shape == (BINS_PER_REQUEST, len(SERIES_CODES))
    assert valid.tolist() == [1.0] * 3 + [0.0] * (BINS_PER_REQUEST - 3)
    np.testing.assert_array_equal(values[:3], bins.values[:3])
    assert not mask[3:].any()
    with pytest.raises(ValueError, match="at most"):
        pack_bins(items * 3)
    with pytest.raises(ValueError, match="inside the bin"):
        bin_inputs({}, admit_time=ADMIT, index=2, end_time=ADMIT)
