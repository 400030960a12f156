"""Scores and alerts as FHIR RiskAssessment and Flag (streams.gateway.fhir_out)."""

from __future__ import annotations

from datetime import UTC, datetime

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.riskassessment import RiskAssessment

from streams.core.events import (
    AlertRecord,
    AlertState,
    News2Score,
    Provenance,
    ScoreRecord,
    make_alert_id,
)
from streams.gateway.fhir_out import flag, risk_assessment, searchset

AT = datetime(2025, 1, 2, 3, 4, tzinfo=UTC)


def score(risk: float | None = 0.42) -> ScoreRecord:
    return ScoreRecord(
        patient_id="p77",
        event_time=AT,
        risk=risk,
        news2=News2Score(total=5, band="medium", parameters={"pulse": 1}),
        model="deterioration",
        model_version="3",
        degraded=risk is None,
        degraded_reason=None if risk is not None else "circuit_open",
        provenance=Provenance(code_version="0.1.0", event_ids=("a", "b")),
        processing_time=AT,
    )


def alert(state: AlertState = "open") -> AlertRecord:
    return AlertRecord(
        alert_id=make_alert_id("p77", "deterioration", AT),
        patient_id="p77",
        event_time=AT,
        kind="deterioration",
        severity="high",
        state=state,
        risk=0.42,
        news2=None,
        reason="risk_above_threshold",
        explanation="risk 0.42 above 0.20",
        policy_version="2",
        degraded=False,
        processing_time=AT,
    )


def test_score_is_a_valid_risk_assessment() -> None:
    resource = risk_assessment(score())
    RiskAssessment.model_validate(resource)
    assert resource["status"] == "final"
    assert resource["subject"] == {"reference": "Patient/p77"}
    assert resource["prediction"][0]["probabilityDecimal"] == 0.42
    assert resource["method"]["coding"][0] == {
        "system": "urn:vigil:model",
        "code": "deterioration",
        "version": "3",
    }
    notes = " ".join(n["text"] for n in resource["note"])
    assert "NEWS2 5 (medium)" in notes
    assert "2 input events" in notes
    assert resource["id"] == risk_assessment(score())["id"]


def test_degraded_score_is_preliminary_without_prediction() -> None:
    resource = risk_assessment(score(None))
    RiskAssessment.model_validate(resource)
    assert resource["status"] == "preliminary"
    assert "prediction" not in resource
    assert "degraded: circuit_open" in " ".join(n["text"] for n in resource["note"])


def test_alert_is_a_valid_flag() -> None:
    resource = flag(alert())
    Flag.model_validate(resource)
    assert resource["status"] == "active"
    assert resource["code"]["text"].startswith("deterioration (high, open)")
    assert flag(alert("resolved"))["status"] == "inactive"


def test_searchset_bundle() -> None:
    bundle = searchset([flag(alert())], "/fhir")
    Bundle.model_validate(bundle)
    assert bundle["total"] == 1
    assert bundle["entry"][0]["fullUrl"].startswith("/fhir/Flag/")
