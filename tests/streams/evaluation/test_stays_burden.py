"""Per-stay predictions at a time, alert burden, sensitivity at a burden, lead times."""

from __future__ import annotations

import math

import pytest

from streams.evaluation.burden import (
    alert_burden,
    crossing_hours,
    lead_time_summary,
    patient_hours,
    sensitivity_at_burden,
    threshold_sweep,
)
from streams.evaluation.outcomes import StayOutcome
from streams.evaluation.stays import Track, alert_episodes, build_tracks, value_at

from .factory import ADMIT, alert, score


def _tracks() -> tuple[dict[str, Track], int]:
    scores = [
        # stay a: dies (end of stay at 60 h); risk rises, crosses 0.5 at 10 h
        score("a", 0, 0.1),
        score("a", 10, 0.6, news2=7),
        score("a", 20, None, news2=None),  # degraded: no risk, no NEWS2
        score("a", 50, 0.2),
        # stay b: survives; peak 0.4; spans 40 h
        score("b", 0, 0.4),
        score("b", 40, 0.3),
        # stay c: dies at 5 h; its only crossing (0.9 at 8 h) comes after the outcome
        score("c", 0, 0.2),
        score("c", 8, 0.9),
        score("c", 8, 0.95),  # same event time: replaces the one before
    ]
    return build_tracks(scores)


OUTCOMES = {
    "a": StayOutcome("a", 1, 60.0),
    "b": StayOutcome("b", 0, 100.0),
    "c": StayOutcome("c", 1, 5.0),
}


def test_last_value_at_or_before_a_time() -> None:
    tracks, superseded = _tracks()
    a = tracks["a"]
    assert superseded == 1
    assert value_at(a, "risk", 48) == pytest.approx(0.6)  # 20 h degraded, 50 h too late
    assert value_at(a, "risk", 10) == pytest.approx(0.6)  # "at or before" includes 10 h
    assert value_at(a, "risk", 9.99) == pytest.approx(0.1)
    assert value_at(a, "news2", 30) == 7  # the degraded score had no NEWS2
    assert math.isnan(value_at(a, "risk", -1))
    assert value_at(tracks["c"], "risk", 8) == pytest.approx(0.95)


def test_a_degraded_rescore_of_the_same_time_keeps_the_model_risk() -> None:
    # Seen in a full replay under load: the worker re-scored a state time while Triton
    # was unavailable; the model's risk of that time must not be dropped for it.
    tracks, superseded = build_tracks(
        [score("a", 0, 0.1), score("a", 5, 0.7, news2=2), score("a", 5, None, news2=4)]
    )
    assert superseded == 1
    assert value_at(tracks["a"], "risk", 6) == pytest.approx(0.7)
    assert value_at(tracks["a"], "news2", 6) == 4  # the later NEWS2 has seen more


def test_admission_can_be_given() -> None:
    tracks, _ = build_tracks([score("a", 3, 0.5)], admitted_at=ADMIT)
    assert tracks["a"].hours.tolist() == [3.0]
    tracks, _ = build_tracks([score("a", 3, 0.5)], first_score_hours={"a": 2.0})
    assert tracks["a"].hours.tolist() == [2.0]


def test_patient_time_and_alert_burden() -> None:
    tracks, _ = _tracks()
    stays = [tracks[p] for p in "abc"]
    # spans: a 50 h, b 40 h, c 8 h = 98 h
    assert patient_hours(stays) == pytest.approx(98.0)
    episodes = alert_episodes(
        [
            alert("a", 10),
            alert("a", 12, state="resolved", opened=10),  # same episode
            alert("a", 30),
            alert("b", 5),
            alert("zz", 1),  # no scores: ignored
        ],
        tracks,
    )
    assert episodes == {"a": [10.0, 30.0], "b": [5.0]}
    burden = alert_burden(episodes, stays)
    assert burden["alerts"] == 3
    assert burden["stays_alerted"] == 2
    assert burden["alerts_per_patient_hour"] == pytest.approx(3 / 98)
    assert burden["alerts_per_patient_day"] == pytest.approx(3 * 24 / 98)


def test_threshold_sweep_first_crossing_per_stay() -> None:
    tracks, _ = _tracks()
    stays = [tracks[p] for p in "abc"]
    sweep = threshold_sweep(stays, OUTCOMES, "risk")
    by_threshold = {round(p.threshold, 2): p for p in sweep}
    # peaks: a 0.6, b 0.4, c 0.95; c's peak before its outcome (5 h) is 0.2
    assert sorted(by_threshold) == [0.2, 0.4, 0.6, 0.95]
    p95 = by_threshold[0.95]  # only c alerts, after its outcome: no sensitivity
    assert (p95.stays_alerted, p95.sensitivity, p95.ppv) == (1, 0.0, 1.0)
    p60 = by_threshold[0.6]  # a (in time) and c (late)
    assert (p60.stays_alerted, p60.sensitivity, p60.ppv) == (2, 0.5, 1.0)
    assert p60.alerts_per_patient_hour == pytest.approx(2 / 98)
    p20 = by_threshold[0.2]  # everyone alerts; c crosses 0.2 at 0 h, before its outcome
    assert (p20.stays_alerted, p20.sensitivity) == (3, 1.0)
    assert p20.ppv == pytest.approx(2 / 3)
    # burden limit 2.5/98 allows 0.6 (2 stays) but not 0.4 (3 stays)
    chosen = sensitivity_at_burden(sweep, 2.5 / 98)
    assert chosen is not None
    assert chosen.threshold == pytest.approx(0.6)
    assert sensitivity_at_burden(sweep, 0.5 / 98) is None


def test_lead_time_before_the_outcome() -> None:
    tracks, _ = _tracks()
    first = {p: crossing_hours(tracks[p], "risk", 0.6) for p in "abc"}
    assert first == {"a": 10.0, "b": None, "c": 8.0}
    summary = lead_time_summary(first, OUTCOMES)
    # a: 60 - 10 = 50 h ahead; c: alert at 8 h after its outcome at 5 h (late)
    assert summary["positive_stays"] == 2
    assert summary["alerted"] == 2
    assert summary["alerted_before_outcome"] == 1
    assert summary["alerted_after_outcome"] == 1
    assert summary["lead_hours_median"] == pytest.approx(50.0)


def test_lead_time_with_nothing_to_measure() -> None:
    summary = lead_time_summary({}, {"a": StayOutcome("a", 1, None)})
    assert summary["alerted"] == 0
    assert summary["lead_hours_median"] is None
