"""The first alert policy: threshold with hysteresis and a refractory period (pure).

One alert episode per patient at a time:

* **open** when the model risk reaches ``arm_risk`` (or, in degraded mode without the
  model, when NEWS2 reaches ``news2_threshold``), unless the patient is in the refractory
  period after a resolved episode and the risk has not risen by ``realert_margin``;
* **escalated** when the severity of an open episode rises;
* **resolved** when the risk falls to ``disarm_risk`` or below (NEWS2 at or below
  ``news2_threshold - 2`` for an episode NEWS2 opened). Hysteresis (``disarm < arm``) stops
  an alert flapping around one threshold.

An episode NEWS2 opened (degraded mode) is judged by NEWS2 until it resolves, even once
the model is back; an episode the model opened waits for the model. The refractory
period applies to a new episode of the same kind as the one that resolved.

Alert ids are deterministic (patient, kind, episode start), so reprocessing the same
events cannot create a second alert. State lives in the patient state as a plain dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from streams.core.events import make_alert_id
from streams.core.news2 import News2Band, News2Result

__all__ = ["POLICY_VERSION", "AlertDecision", "AlertPolicy", "evaluate"]

POLICY_VERSION = "threshold-hysteresis-1"

Severity = Literal["low", "medium", "high"]
_SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2}


@dataclass(frozen=True)
class AlertPolicy:
    """Thresholds of the first policy (see ``WorkerSettings``)."""

    arm_risk: float = 0.5
    disarm_risk: float = 0.35
    refractory: timedelta = timedelta(hours=6)
    realert_margin: float = 0.15
    news2_threshold: int = 7

    def __post_init__(self) -> None:
        if not 0 < self.disarm_risk < self.arm_risk < 1:
            raise ValueError("need 0 < disarm_risk < arm_risk < 1")
        if self.refractory < timedelta(0) or self.realert_margin < 0:
            raise ValueError("need refractory >= 0 and realert_margin >= 0")
        # NEWS2 is 0-20 and resolves at news2_threshold - 2: below 2 it could never resolve.
        if not 2 <= self.news2_threshold <= 20:
            raise ValueError("need 2 <= news2_threshold <= 20")


@dataclass(frozen=True)
class AlertDecision:
    """One alert state change to publish."""

    alert_id: str
    kind: Literal["deterioration", "news2"]
    state: Literal["open", "escalated", "resolved"]
    severity: Severity
    reason: str
    degraded: bool


def _severity(risk: float | None, news2: News2Result | None) -> Severity:
    level: Severity = "low"
    if risk is not None:
        level = "high" if risk >= 0.8 else "medium" if risk >= 0.65 else "low"
    if news2 is not None:
        band = news2.band
        from_news: Severity = (
            "high" if band is News2Band.HIGH else "medium" if band is News2Band.MEDIUM else "low"
        )
        if _SEVERITY_RANK[from_news] > _SEVERITY_RANK[level]:
            level = from_news
    return level


def evaluate(
    state: Mapping[str, Any],
    *,
    patient_id: str,
    at: datetime,
    risk: float | None,
    news2: News2Result | None,
    policy: AlertPolicy,
) -> tuple[dict[str, Any], list[AlertDecision]]:
    """Apply one score to the alert state.

    Args:
        state: The patient's alert state (``{}`` initially).
        patient_id: Used only inside the hashed alert id.
        at: Event time of the score.
        risk: Model risk 0-1, or None in degraded mode.
        news2: NEWS2 of the same state, if computable.
        policy: Thresholds.

    Returns:
        The new alert state and the decisions to publish (possibly none).
    """
    new = dict(state)
    at_s = at.timestamp()
    active = new.get("active")
    # NEWS2 is computed with the model on too, so an episode NEWS2 opened keeps being
    # judged by it; otherwise it could never resolve once the model is back, and would
    # block model alerts for ever.
    degraded = risk is None or (active is not None and active["kind"] == "news2")
    if degraded:
        value = None if news2 is None else float(news2.total)
        arm = float(policy.news2_threshold)
        disarm = float(policy.news2_threshold - 2)
        kind: Literal["deterioration", "news2"] = "news2"
    else:
        value = risk
        arm, disarm = policy.arm_risk, policy.disarm_risk
        kind = "deterioration"
    if value is None:
        return new, []
    severity = _severity(risk, news2)
    decisions: list[AlertDecision] = []
    if active is not None:
        if active["kind"] != kind:
            # Mode changed (degraded <-> model): judge the open episode by its own signal
            # only when that signal is available again.
            return new, []
        if value <= disarm:
            decisions.append(
                AlertDecision(
                    active["id"],
                    kind,
                    "resolved",
                    active["severity"],
                    "below_disarm_threshold",
                    degraded,
                )
            )
            new["active"] = None
            new["last_resolved_s"] = at_s
            new["last_peak"] = active.get("peak", value)
            new["last_kind"] = kind
        else:
            active = dict(active)
            active["peak"] = max(float(active.get("peak", value)), value)
            if _SEVERITY_RANK[severity] > _SEVERITY_RANK[active["severity"]]:
                active["severity"] = severity
                decisions.append(
                    AlertDecision(
                        active["id"], kind, "escalated", severity, "severity_rose", degraded
                    )
                )
            new["active"] = active
        return new, decisions
    if value < arm:
        return new, []
    last_resolved = new.get("last_resolved_s")
    # The last peak is in the resolved episode's own unit (risk 0-1 or NEWS2 points).
    same_kind = new.get("last_kind", kind) == kind
    if (
        same_kind
        and last_resolved is not None
        and at_s - last_resolved < policy.refractory.total_seconds()
    ):
        margin = policy.realert_margin if not degraded else 2.0
        if value < float(new.get("last_peak", arm)) + margin:
            return new, []
    alert_id = make_alert_id(patient_id, kind, at)
    new["active"] = {
        "id": alert_id,
        "kind": kind,
        "severity": severity,
        "opened_s": at_s,
        "peak": value,
    }
    reason = "risk_above_threshold" if not degraded else "news2_above_threshold"
    decisions.append(AlertDecision(alert_id, kind, "open", severity, reason, degraded))
    return new, decisions
