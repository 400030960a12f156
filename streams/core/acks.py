"""Clinicians' actions on alerts, and the audit trail of every alert change (pure).

:func:`apply_ack` applies one :class:`~streams.core.events.AckEvent` to the patient's
alert state (the dict of :mod:`streams.core.alerting`) and returns the new state, the
alert change to publish and its :class:`~streams.core.events.AuditRecord`, or the
dead-letter reason when the action is invalid:

========================  ================================================================
``missing_user``          ``user`` is empty or blank
``missing_reason``        ``reason`` is empty or blank
``alert_resolved``        the alert was resolved already
``unknown_alert``         no such alert for this patient
``snooze_expired``        ``snooze_until`` is not after the action's event time
``snooze_too_long``       ``snooze_until`` is further than ``AlertPolicy.max_snooze``
========================  ================================================================

Actions: ``acknowledge`` (recorded; the alert stays live and may still escalate),
``snooze`` (no open/escalated/deferred output until ``snooze_until`` in event time, then
the alert re-arms; see :func:`streams.core.alerting.evaluate`), ``escalate`` (severity one
level up, ends a snooze), ``resolve`` (closes the episode; the refractory period starts).
An action whose ``ack_id`` was already applied changes nothing and yields nothing.

:func:`decision_audit` turns a policy decision into its audit record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from streams.core.alerting import POLICY_VERSION, AlertDecision, raise_severity
from streams.core.events import (
    AckEvent,
    AlertState,
    AuditRecord,
    DeadLetterReason,
    make_audit_id,
)

__all__ = ["AckRejection", "AckResult", "apply_ack", "decision_audit"]

MAX_ACK_IDS: Final = 64

_STATE: Final[dict[str, AlertState]] = {
    "acknowledge": "acknowledged",
    "snooze": "snoozed",
    "escalate": "escalated",
    "resolve": "resolved",
}


@dataclass(frozen=True)
class AckRejection:
    """Why an action was refused (goes to dead-letter)."""

    reason: DeadLetterReason
    detail: str


@dataclass(frozen=True)
class AckResult:
    """The effect of one action.

    Attributes:
        state: The new alert state (the old one, unchanged, when rejected or a duplicate).
        decision: The alert change to publish on ``alerts`` (and to Redis), if accepted.
        audit: Its audit record, if accepted.
        rejection: Why it was refused, if refused.
    """

    state: dict[str, Any]
    decision: AlertDecision | None = None
    audit: AuditRecord | None = None
    rejection: AckRejection | None = None


def _check(
    state: Mapping[str, Any], ack: AckEvent, max_snooze_seconds: float
) -> AckRejection | None:
    if not ack.user.strip():
        return AckRejection(DeadLetterReason.MISSING_USER, "an action needs the acting user")
    if not ack.reason.strip():
        return AckRejection(DeadLetterReason.MISSING_REASON, "an action needs a reason")
    active = state.get("active")
    if active is None or active["id"] != ack.alert_id:
        if ack.alert_id in state.get("resolved_ids", []):
            return AckRejection(DeadLetterReason.ALERT_RESOLVED, "the alert is resolved")
        return AckRejection(DeadLetterReason.UNKNOWN_ALERT, "no such open alert for the patient")
    if ack.snooze_until is not None:
        ahead = (ack.snooze_until - ack.event_time).total_seconds()
        if ahead <= 0:
            return AckRejection(DeadLetterReason.SNOOZE_EXPIRED, "snooze_until is not ahead")
        if ahead > max_snooze_seconds:
            return AckRejection(
                DeadLetterReason.SNOOZE_TOO_LONG,
                f"snooze longer than the maximum of {max_snooze_seconds / 3600:g} h",
            )
    return None


def apply_ack(
    state: Mapping[str, Any], ack: AckEvent, *, max_snooze_seconds: float, now: datetime
) -> AckResult:
    """Apply one action to the patient's alert state.

    Args:
        state: The patient's alert state; not mutated.
        ack: The action (its ``patient_id`` must be the state's patient).
        max_snooze_seconds: Longest snooze allowed (``AlertPolicy.max_snooze``), seconds.
        now: Wall-clock time for the audit record's ``processing_time``.

    Returns:
        The new state and either the decision with its audit record, or a rejection.
    """
    if ack.ack_id in state.get("ack_ids", []):
        return AckResult(dict(state))
    rejection = _check(state, ack, max_snooze_seconds)
    if rejection is not None:
        return AckResult(dict(state), rejection=rejection)
    new = dict(state)
    active = dict(state["active"])
    new["ack_ids"] = [*state.get("ack_ids", []), ack.ack_id][-MAX_ACK_IDS:]
    at_s = ack.event_time.timestamp()
    if ack.action == "acknowledge":
        active["acknowledged"] = {"user": ack.user, "at_s": at_s}
    elif ack.action == "snooze" and ack.snooze_until is not None:
        active["snoozed_until_s"] = ack.snooze_until.timestamp()
    elif ack.action == "escalate":
        active["severity"] = raise_severity(active["severity"])
        active["snoozed_until_s"] = None
    new["active"] = active
    if ack.action == "resolve":
        new["active"] = None
        new["up"] = None
        new["resolved_ids"] = [*state.get("resolved_ids", []), active["id"]][-16:]
        if active.get("confirmed", True):
            new["last_resolved_s"] = at_s
            new["last_peak"] = active.get("peak")
            new["last_kind"] = active["kind"]
    decision = AlertDecision(
        alert_id=active["id"],
        kind=active["kind"],
        state=_STATE[ack.action],
        severity=active["severity"],
        reason=f"{_STATE[ack.action]}_by_user",
        degraded=active["kind"] == "news2",
        detail=ack.reason,
    )
    audit = AuditRecord(
        audit_id=make_audit_id(decision.alert_id, decision.state, ack.event_time, ack.ack_id),
        patient_id=ack.patient_id,
        alert_id=decision.alert_id,
        event_time=ack.event_time,
        actor="user",
        user=ack.user,
        state=decision.state,
        action=ack.action,
        ack_id=ack.ack_id,
        severity=decision.severity,
        reason=decision.reason,
        detail=ack.reason,
        snooze_until=ack.snooze_until,
        policy_version=POLICY_VERSION,
        processing_time=now,
    )
    return AckResult(new, decision, audit)


def decision_audit(
    decision: AlertDecision, *, patient_id: str, at: datetime, now: datetime, detail: str = ""
) -> AuditRecord:
    """The audit record of a policy decision (from :func:`~streams.core.alerting.evaluate`).

    Args:
        decision: The decision.
        patient_id: The patient.
        at: Event time of the score that caused it.
        now: Wall-clock time (``processing_time``).
        detail: Explanation; defaults to the decision's own detail.
    """
    return AuditRecord(
        audit_id=make_audit_id(decision.alert_id, decision.state, at, None),
        patient_id=patient_id,
        alert_id=decision.alert_id,
        event_time=at,
        actor="policy",
        state=decision.state,
        severity=decision.severity,
        reason=decision.reason,
        detail=(detail or decision.detail)[:2000],
        policy_version=POLICY_VERSION,
        processing_time=now,
    )
