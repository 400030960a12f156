"""The 2019 utility against vectors worked out by hand from the published definition.

Constants: dt_early=-12, dt_optimal=-6, dt_late=3, max_u_tp=1, min_u_fn=-2, u_fp=-0.05,
u_tn=0. For a septic stay, t_sepsis = first SepsisLabel==1 row + 6 and dt = t - t_sepsis.
"""

from __future__ import annotations

import numpy as np
import pytest

from streams.evaluation.utility import (
    normalised_utility,
    row_utilities,
    sepsis_onset_row,
    stay_utility,
)


def _septic_labels() -> list[int]:
    # 24 rows (0..23); SepsisLabel is 1 from row 14, so t_sepsis = 14 + 6 = 20 and the
    # rows have dt = t - 20 = -20 .. 3.
    return [0] * 14 + [1] * 10


def test_onset_is_first_label_plus_six() -> None:
    assert sepsis_onset_row(_septic_labels()) == 20
    assert sepsis_onset_row([0, 0, 0]) is None


@pytest.mark.parametrize(
    ("dt", "predicted", "expected"),
    [
        # positive, early side: max(-0.05, 1 * (dt + 12) / 6)
        (-13, True, -0.05),  # (-13 + 12) / 6 = -1/6 < -0.05, so -0.05
        (-12, True, 0.0),  # (-12 + 12) / 6 = 0
        (-9, True, 0.5),  # (-9 + 12) / 6 = 3/6
        (-6, True, 1.0),  # (-6 + 12) / 6 = 1, the optimum
        # positive, late side: 1 * (3 - dt) / 9
        (0, True, 1 / 3),  # (3 - 0) / 9
        (3, True, 0.0),  # (3 - 3) / 9
        (4, True, 0.0),  # after dt_late nothing counts
        # negative: 0 until -6, then -2 * (dt + 6) / 9
        (-7, False, 0.0),
        (-3, False, -2 / 3),  # -2 * 3 / 9
        (3, False, -2.0),  # -2 * 9 / 9
        (5, False, 0.0),  # after dt_late nothing counts
    ],
)
def test_one_row_of_a_septic_stay(dt: int, predicted: bool, expected: float) -> None:
    onset = 20
    predictions = np.zeros(onset + dt + 1, dtype=bool)
    predictions[-1] = predicted
    assert row_utilities(predictions, onset)[-1] == pytest.approx(expected)


def test_non_septic_stay_pays_only_false_alarms() -> None:
    # 3 positives x -0.05 + 1 negative x 0 = -0.15
    assert stay_utility([1, 0, 1, 1], None) == pytest.approx(-0.15)


def test_septic_stay_predicted_once_at_the_optimum() -> None:
    # Row 14 (dt = -6) positive: +1. Rows 15..23 (dt = -5..3) negative:
    # -2/9 * (1 + 2 + ... + 9) = -2/9 * 45 = -10. Rows 0..13 negative with dt <= -6: 0.
    # Total 1 - 10 = -9.
    predictions = np.zeros(24, dtype=bool)
    predictions[14] = True
    assert stay_utility(predictions, 20) == pytest.approx(-9.0)


def test_normalised_utility_of_a_two_stay_cohort() -> None:
    septic = _septic_labels()
    clean = [0] * 10
    # Best: septic rows with -12 <= dt <= 3 (rows 8..23) positive.
    #   dt -12..-6: (dt + 12) / 6 = 0, 1/6, ..., 6/6 -> 21/6 = 3.5
    #   dt  -5.. 3: (3 - dt) / 9 = 8/9, ..., 0/9   -> 36/9 = 4
    #   best = 7.5 (the clean stay adds 0).
    # Inaction: septic rows dt -5..3 negative -> -10 (as above); clean stay 0.
    # All-positive: septic dt -20..-13 (8 rows) x -0.05 = -0.4, plus 7.5 -> 7.1;
    #   clean 10 x -0.05 = -0.5; observed = 6.6.
    # Normalised = (6.6 - (-10)) / (7.5 - (-10)) = 16.6 / 17.5.
    result = normalised_utility([np.ones(24), np.ones(10)], [septic, clean])
    assert result["best"] == pytest.approx(7.5)
    assert result["inaction"] == pytest.approx(-10.0)
    assert result["observed"] == pytest.approx(6.6)
    assert result["normalised"] == pytest.approx(16.6 / 17.5)


def test_best_scores_one_and_inaction_zero() -> None:
    septic = _septic_labels()
    best = np.zeros(24)
    best[8:24] = 1  # rows with -12 <= dt <= 3
    assert normalised_utility([best], [septic])["normalised"] == pytest.approx(1.0)
    assert normalised_utility([np.zeros(24)], [septic])["normalised"] == pytest.approx(0.0)


def test_onset_past_the_last_row() -> None:
    # Labelled only in the last row 4 -> t_sepsis = 10, beyond the 5 rows (dt -10..-6).
    # Best: dt -10..-6 positive = 2/6 + 3/6 + 4/6 + 5/6 + 6/6 = 20/6; inaction: 0.
    result = normalised_utility([np.zeros(5)], [[0, 0, 0, 0, 1]])
    assert result["best"] == pytest.approx(20 / 6)
    assert result["normalised"] == pytest.approx(0.0)


def test_no_septic_stay_has_no_normalised_value() -> None:
    assert np.isnan(normalised_utility([[1, 0]], [[0, 0]])["normalised"])


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        normalised_utility([[1, 0]], [[0, 0, 0]])
