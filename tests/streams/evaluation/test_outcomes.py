"""Outcomes: PhysioNet 2012 rows and PhysioNet 2019 .psv files."""

from __future__ import annotations

import pytest

from streams.datasets.physionet2012 import Outcome
from streams.evaluation.outcomes import from_physionet2012, parse_psv


def test_physionet2012_end_of_stay_and_missing_scores() -> None:
    rows = {
        132539: Outcome(132539, 6.0, 1.0, 5.0, None, 0),
        132540: Outcome(132540, None, None, None, 3.0, 1),  # -1 in the file
    }
    outcomes = from_physionet2012(rows)
    assert outcomes["132539"].outcome_hours == pytest.approx(120.0)  # 5 days
    assert outcomes["132540"].label == 1
    assert outcomes["132540"].outcome_hours is None
    assert outcomes["132540"].saps_i is None


def _psv(labels: list[int], first_iculos: int = 3) -> str:
    rows = [f"80|{first_iculos + i}|{label}" for i, label in enumerate(labels)]
    return "\n".join(["HR|ICULOS|SepsisLabel", *rows]) + "\n"


def test_physionet2019_onset_is_six_hours_after_the_first_label() -> None:
    outcome = parse_psv("p1", _psv([0, 0, 0, 1, 1]))
    # rows sit at ICULOS 3..7 h; first label at ICULOS 6, onset 6 + 6 = 12 h
    assert outcome.label == 1
    assert outcome.row_hours.tolist() == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert outcome.outcome_hours == pytest.approx(12.0)
    never = parse_psv("p2", _psv([0, 0]))
    assert (never.label, never.outcome_hours) == (0, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("HR|ICULOS\n80|1\n", "no SepsisLabel"),
        ("HR|ICULOS|SepsisLabel\n80|1\n", "2 cells"),
        ("HR|ICULOS|SepsisLabel\n80|1|2\n", "must be 0 or 1"),
        ("HR|ICULOS|SepsisLabel\n", "no rows"),
    ],
)
def test_bad_psv(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_psv("p", text)
