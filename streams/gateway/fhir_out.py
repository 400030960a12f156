"""Vigil's outputs as FHIR R4 resources: a score as a RiskAssessment, an alert as a Flag.
Pure: no I/O.

- **RiskAssessment**: ``occurrenceDateTime`` is the scored state's event time; ``method``
  codes the model and its version; ``prediction[0].probabilityDecimal`` is the risk of
  deterioration (absent, with status ``preliminary``, when the score is degraded); the NEWS2
  total and band, the code version and how many input events the score saw are in ``note``;
  ``identifier`` carries a stable id of the score (hash of patient, time and model).
- **Flag**: ``status`` ``active`` for every alert state but ``resolved`` (``inactive``);
  ``code.text`` is the alert's kind, severity and explanation; ``period.start`` its event
  time; the alert id is the Flag id.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from streams.core.events import AlertRecord, ScoreRecord

__all__ = ["flag", "risk_assessment", "searchset"]

_MODEL_SYSTEM: Final = "urn:vigil:model"
_SCORE_SYSTEM: Final = "urn:vigil:score"
_ALERT_SYSTEM: Final = "urn:vigil:alert"
_FLAG_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/flag-category"


def _time(record: ScoreRecord | AlertRecord) -> str:
    return record.event_time.isoformat().replace("+00:00", "Z")


def risk_assessment(score: ScoreRecord) -> dict[str, Any]:
    """The RiskAssessment of one score (JSON-ready)."""
    stamp = _time(score)
    score_id = hashlib.sha256(
        "\x1f".join([score.patient_id, stamp, score.model, score.model_version]).encode()
    ).hexdigest()[:32]
    notes = [
        f"code version {score.provenance.code_version}; "
        f"{len(score.provenance.event_ids)} input events"
    ]
    if score.news2 is not None:
        notes.append(f"NEWS2 {score.news2.total} ({score.news2.band})")
    if score.degraded:
        notes.append(f"degraded: {score.degraded_reason or 'model unavailable'}")
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": score_id,
        "identifier": [{"system": _SCORE_SYSTEM, "value": score_id}],
        "status": "preliminary" if score.risk is None else "final",
        "subject": {"reference": f"Patient/{score.patient_id}"},
        "occurrenceDateTime": stamp,
        "method": {
            "coding": [
                {"system": _MODEL_SYSTEM, "code": score.model, "version": score.model_version}
            ],
            "text": f"{score.model} {score.model_version}",
        },
        "note": [{"text": text} for text in notes],
    }
    if score.risk is not None:
        resource["prediction"] = [
            {"outcome": {"text": "clinical deterioration"}, "probabilityDecimal": score.risk}
        ]
    return resource


def flag(alert: AlertRecord) -> dict[str, Any]:
    """The Flag of one alert's latest state (JSON-ready)."""
    return {
        "resourceType": "Flag",
        "id": alert.alert_id,
        "identifier": [{"system": _ALERT_SYSTEM, "value": alert.alert_id}],
        "status": "inactive" if alert.state == "resolved" else "active",
        "category": [{"coding": [{"system": _FLAG_CATEGORY, "code": "clinical"}]}],
        "code": {
            "coding": [{"system": _ALERT_SYSTEM, "code": alert.kind}],
            "text": f"{alert.kind} ({alert.severity}, {alert.state}): {alert.explanation}",
        },
        "subject": {"reference": f"Patient/{alert.patient_id}"},
        "period": {"start": _time(alert)},
    }


def searchset(resources: list[dict[str, Any]], base_url: str) -> dict[str, Any]:
    """A ``searchset`` Bundle of ``resources``."""
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {"fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}", "resource": r}
            for r in resources
        ],
    }
