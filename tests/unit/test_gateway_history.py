"""The gateway's bounded score history (streams.gateway.history)."""

from __future__ import annotations

from datetime import timedelta

from streams.core.events import ScoreRecord
from streams.gateway.history import ScoreHistory
from tests.unit.test_gateway_fhir_out import AT, score


def at(patient: str, hours: int, risk: float = 0.1) -> ScoreRecord:
    return score(risk).model_copy(
        update={"patient_id": patient, "event_time": AT + timedelta(hours=hours)}
    )


def test_newest_first_and_a_repeat_replaces() -> None:
    history = ScoreHistory(max_patients=10, per_patient=10)
    for hours in (2, 0, 1):
        history.add(at("a", hours))
    history.add(at("a", 1, risk=0.9))
    scores = history.scores("a")
    assert [s.event_time for s in scores] == [AT + timedelta(hours=h) for h in (2, 1, 0)]
    assert scores[1].risk == 0.9
    assert history.scores("unknown") == []


def test_bounded_per_patient_and_in_patients() -> None:
    history = ScoreHistory(max_patients=2, per_patient=3)
    for hours in range(5):
        history.add(at("a", hours))
    assert [s.event_time.hour for s in history.scores("a")] == [7, 6, 5]  # AT is 03:04
    history.add(at("b", 0))
    history.add(at("a", 9))  # a is now the most recent
    history.add(at("c", 0))
    assert len(history) == 2
    assert history.scores("b") == []
    assert history.scores("a")
