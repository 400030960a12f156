"""Small builders of score and alert records for the evaluation tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Literal

from streams.core.events import AlertRecord, News2Score, Provenance, ScoreRecord, make_alert_id

ADMIT = datetime(2025, 1, 1, tzinfo=UTC)


def score(patient_id: str, hours: float, risk: float | None, news2: int | None = 3) -> ScoreRecord:
    """A score ``hours`` after :data:`ADMIT`; ``risk=None`` makes it degraded."""
    return ScoreRecord(
        patient_id=patient_id,
        event_time=ADMIT + timedelta(hours=hours),
        risk=risk,
        news2=None
        if news2 is None
        else News2Score(total=news2, band="low" if news2 < 5 else "medium", parameters={}),
        model="deterioration",
        model_version="1",
        degraded=risk is None,
        degraded_reason="circuit_open" if risk is None else None,
        provenance=Provenance(code_version="test"),
        processing_time=ADMIT + timedelta(hours=hours, seconds=1),
    )


def alert(
    patient_id: str,
    hours: float,
    state: Literal["open", "escalated", "acknowledged", "resolved"] = "open",
    opened: float | None = None,
) -> AlertRecord:
    """An alert state change; every change of one episode shares the opening time's id."""
    opened_at = ADMIT + timedelta(hours=hours if opened is None else opened)
    return AlertRecord(
        alert_id=make_alert_id(patient_id, "deterioration", opened_at),
        patient_id=patient_id,
        event_time=ADMIT + timedelta(hours=hours),
        kind="deterioration",
        severity="medium",
        state=state,
        risk=0.6,
        news2=None,
        reason="risk_above_threshold",
        explanation="test",
        policy_version="test",
        degraded=False,
        processing_time=ADMIT + timedelta(hours=hours, seconds=1),
    )


def envelope(record: ScoreRecord | AlertRecord, offset: int, topic: str = "vigil.scores") -> str:
    """The line ``vigil record`` writes for ``record``."""
    return json.dumps(
        {
            "topic": topic,
            "partition": 0,
            "offset": offset,
            "timestamp": 0,
            "key": record.patient_id,
            "value": record.model_dump_json(),
        }
    )
