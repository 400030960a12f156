"""The scaling benchmark's comparison of two runs' outputs."""

from __future__ import annotations

from typing import Any

from bench.scaling import compare


def _score(pid: str, at: str, risk: float | None) -> dict[str, Any]:
    return {"patient_id": pid, "event_time": at, "risk": risk}


def _alert(alert_id: str, state: str, at: str) -> dict[str, Any]:
    return {"alert_id": alert_id, "state": state, "severity": "high", "event_time": at}


def test_repeats_of_the_same_output_are_identical() -> None:
    one = ([_score("1", "t0", 0.2), _score("1", "t1", 0.3)], [_alert("a", "open", "t1")])
    # At-least-once after a rebalance: a score written twice, same key and risk.
    two = (
        [_score("1", "t0", 0.2), _score("1", "t1", 0.3), _score("1", "t1", 0.3 + 1e-9)],
        [_alert("a", "open", "t1"), _alert("a", "open", "t1")],
    )
    result = compare(one, two)
    assert result["identical"]
    assert result["repeated_score_records"] == [0, 1]


def test_other_scoring_times_risks_and_alerts_are_counted() -> None:
    one = (
        [_score("1", "t0", 0.2), _score("1", "t1", 0.3), _score("2", "t0", None)],
        [_alert("a", "open", "t1")],
    )
    two = (
        [_score("1", "t0", 0.25), _score("1", "t2", 0.3), _score("2", "t0", None)],
        [_alert("a", "open", "t2")],
    )
    result = compare(one, two)
    assert not result["identical"]
    assert result["score_keys_in_both"] == 2
    assert result["score_keys_only_in_one_worker_run"] == 1
    assert result["score_keys_only_in_two_worker_run"] == 1
    assert result["risk_differs_on_common_keys"] == 1
    assert result["alert_changes_only_in_one_worker_run"] == 1
    assert result["alert_changes_only_in_two_worker_run"] == 1
