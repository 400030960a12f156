"""OOD input channel (features, hour buckets, thresholds), time course and the writer of
shifted stay files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.ood.inputs import (
    bucket_distance,
    bucket_index,
    fit_buckets,
    hours_observed,
    longest_identical_run,
)
from models.ood.shifts import SHIFTS, apply_shift, shift_stay_text, write_shifted_stays
from models.ood.timeline import first_flag_hours, sample_stays
from streams.datasets.physionet2012 import read_outcomes, read_stay
from tests.models.conftest import DEMO_DIR


def test_longest_identical_run_skips_gaps_and_counts_repeats():
    # One window, 8 bins, 3 parameters.
    values = torch.zeros(1, 8, 3)
    mask = torch.zeros(1, 8, 3)
    readings = {0: 80.0, 1: 80.0, 3: 80.0, 4: 81.0, 5: 81.0, 7: 80.0}  # bin 2, 6 empty
    for t, v in readings.items():
        values[0, t, 0], mask[0, t, 0] = v, 1.0
    values[0, :, 1], mask[0, :, 1] = torch.arange(8, dtype=torch.float32), 1.0  # never equal
    values[0, 5, 2] = 99.0  # a value without its mask bit does not count
    runs = longest_identical_run(values, mask)
    assert runs.tolist() == [[3.0, 1.0, 0.0]]


def test_hours_observed_reads_the_mask():
    mask = torch.zeros(3, 48, 2)
    mask[0, 40, 1] = 1.0  # first seen in bin 40: bins 40..47
    mask[1, 0, 0] = 1.0
    assert hours_observed(mask).tolist() == [8.0, 48.0, 0.0]


def test_bucket_index_upper_edges_inclusive():
    edges = torch.tensor([1.0, 2.0, 6.0, 48.0])
    hours = torch.tensor([0.0, 1.0, 1.5, 2.0, 6.0, 7.0, 48.0, 60.0])
    assert bucket_index(hours, edges).tolist() == [0, 0, 1, 1, 2, 3, 3, 3]


def _two_buckets(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    """Early windows (hours 1-2) near 0 with unit spread; late windows (hours 10-48)
    near 10 with spread 3."""
    rng = np.random.default_rng(seed)
    hours = np.where(rng.random(n) < 0.5, rng.integers(1, 3, n), rng.integers(10, 49, n))
    late = hours > 2
    x = np.where(
        late[:, None], 10.0 + 3.0 * rng.standard_normal((n, 4)), rng.standard_normal((n, 4))
    )
    return x, hours.astype(np.float64)


def test_fit_buckets_calibrates_each_bucket():
    x, hours = _two_buckets(20_000, seed=0)
    xv, hv = _two_buckets(20_000, seed=1)
    fit = fit_buckets(x, hours, xv, hv, edges=(2, 48), percentile=99.0)
    assert list(fit.edges) == [2, 48]
    xt, ht = _two_buckets(20_000, seed=2)
    distance, threshold = bucket_distance(fit, xt, ht)
    for early in (True, False):
        sel = (ht <= 2) == early
        assert 0.005 < float((distance[sel] > threshold[sel]).mean()) < 0.02
    # A typical late window is far out when it claims to be early, and not the reverse.
    late_point = np.full((1, 4), 10.0)
    assert bucket_distance(fit, late_point, np.array([1.0]))[0][0] > fit.thresholds[0]
    assert bucket_distance(fit, late_point, np.array([30.0]))[0][0] < fit.thresholds[1]


def test_fit_buckets_merges_empty_buckets():
    x, hours = _two_buckets(4_000, seed=3)
    fit = fit_buckets(x, hours, x, hours, edges=(2, 5, 48), min_windows=10)
    assert list(fit.edges) == [2, 48]  # nothing between 3 and 5 hours
    with pytest.raises(ValueError, match="increase"):
        fit_buckets(x, hours, x, hours, edges=(5, 2))


def test_first_flag_hours_and_sample():
    hours = np.array([0.5, 1.0, 1.5, 2.0])
    flagged = np.array(
        [[True, False, False], [False, False, False], [True, True, False], [True, True, False]]
    )
    assert first_flag_hours(flagged, hours).tolist() == [0.5, 1.5, np.inf]
    assert first_flag_hours(flagged, hours, from_hour=1.0).tolist() == [1.5, 1.5, np.inf]
    stays = list(range(10))
    assert sample_stays(stays, 4, seed=0) == sample_stays(stays, 4, seed=0)  # type: ignore[arg-type]
    assert len(sample_stays(stays, 20, seed=0)) == 10  # type: ignore[arg-type]


# --- Shifted stay files for replay ---


def _stays_back(path: Path) -> tuple[np.ndarray, ...]:  # type: ignore[type-arg]
    stay = read_stay(path)
    order = np.lexsort((stay.values, stay.code_index, stay.minutes))
    return stay.code_index[order], stay.minutes[order], stay.values[order]


@pytest.mark.parametrize("shift", SHIFTS)
def test_written_files_read_back_as_the_evaluated_shift(shift: str, tmp_path: Path):
    ids = sorted(int(p.stem) for p in (DEMO_DIR / "set-a").glob("*.txt"))[:25]
    written = write_shifted_stays(
        DEMO_DIR, tmp_path, shift, record_ids=ids, onset_hours=12, id_offset=900_000
    )
    assert [p.name for p in written] == [f"{r + 900_000}.txt" for r in ids]
    outcomes, source = (
        read_outcomes(tmp_path / "Outcomes-a.txt"),
        read_outcomes(DEMO_DIR / "Outcomes-a.txt"),
    )
    assert sorted(outcomes) == [r + 900_000 for r in ids]
    for rid, path in zip(ids, written, strict=True):
        assert outcomes[rid + 900_000].in_hospital_death == source[rid].in_hospital_death
        original = read_stay(DEMO_DIR / "set-a" / f"{rid}.txt")
        expected = apply_shift(original, shift, onset_hours=12)
        back = read_stay(path)
        assert back.record_id == rid + 900_000
        assert back.descriptors.keys() == expected.descriptors.keys()
        for key, value in expected.descriptors.items():
            assert back.descriptors[key] == pytest.approx(value, abs=1e-6)
        codes, minutes, values = _stays_back(path)
        order = np.lexsort((expected.values, expected.code_index, expected.minutes))
        np.testing.assert_array_equal(codes, expected.code_index[order])
        np.testing.assert_array_equal(minutes, expected.minutes[order])
        np.testing.assert_allclose(values, expected.values[order], atol=1e-6)


def test_written_unit_error_is_raw(tmp_path: Path):
    rid = next(
        int(p.stem) for p in sorted((DEMO_DIR / "set-a").glob("*.txt")) if ",Temp," in p.read_text()
    )
    text = (DEMO_DIR / "set-a" / f"{rid}.txt").read_text()
    shifted = shift_stay_text(text, "temperature_fahrenheit")
    temps = [float(line.split(",")[2]) for line in shifted.splitlines() if ",Temp," in line]
    assert temps
    assert all(t > 45 for t in temps if t > 30)  # what the source sent, filter left to the stream
    with pytest.raises(ValueError, match="unknown shift"):
        shift_stay_text(text, "solar_flare")
    with pytest.raises(ValueError, match="RecordID"):
        write_shifted_stays(DEMO_DIR, tmp_path, "stuck_hr", record_ids=[1])
