"""Actions on alerts (acknowledge, snooze, escalate, resolve), their rejections, the
audit records, and the ``acks`` path through the processor."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from streams.core.acks import apply_ack, decision_audit
from streams.core.alerting import POLICY_VERSION, AlertDecision, AlertPolicy, evaluate
from streams.core.events import AckEvent, AuditRecord, DeadLetterReason, make_audit_id
from streams.core.pipeline import Processor, ProcessorConfig
from streams.core.state import Origin, PatientState

PID = "stay-140502"
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
NOW = datetime(2024, 5, 2, tzinfo=UTC)
MAX = 7200.0
POLICY = AlertPolicy(arm_risk=0.3, disarm_risk=0.2, arm_scores=1, arm_duration=timedelta(0))


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def opened_state(risk: float = 0.5) -> dict[str, Any]:
    state, [opened] = evaluate({}, patient_id=PID, at=at(0), risk=risk, news2=None, policy=POLICY)
    assert opened.state == "open"
    return state


def ack(action: str, minutes: float = 10, **changes: Any) -> AckEvent:
    fields: dict[str, Any] = {
        "ack_id": f"ack-{action}-{minutes}",
        "patient_id": PID,
        "alert_id": opened_state()["active"]["id"],
        "event_time": at(minutes),
        "action": action,
        "user": "rn-0412",
        "reason": "reviewed at the bedside",
    }
    if action == "snooze":
        fields["snooze_until"] = at(minutes + 60)
    fields.update(changes)
    return AckEvent(**fields)


def test_acknowledge_records_who_and_audits():
    state = opened_state()
    result = apply_ack(state, ack("acknowledge"), max_snooze_seconds=MAX, now=NOW)
    assert result.rejection is None
    assert result.decision is not None
    assert result.audit is not None
    assert (result.decision.state, result.decision.reason) == (
        "acknowledged",
        "acknowledged_by_user",
    )
    assert result.state["active"]["acknowledged"] == {"user": "rn-0412", "at_s": at(10).timestamp()}
    audit = result.audit
    assert (audit.actor, audit.user, audit.action, audit.state) == (
        "user",
        "rn-0412",
        "acknowledge",
        "acknowledged",
    )
    assert audit.detail == "reviewed at the bedside"
    assert audit.audit_id == make_audit_id(
        audit.alert_id, "acknowledged", at(10), "ack-acknowledge-10"
    )
    assert AuditRecord.model_validate_json(audit.model_dump_json()) == audit
    assert state == opened_state()  # not mutated


def test_acknowledged_alert_still_escalates():
    state = apply_ack(opened_state(), ack("acknowledge"), max_snooze_seconds=MAX, now=NOW).state
    _, [escalated] = evaluate(state, patient_id=PID, at=at(30), risk=0.9, news2=None, policy=POLICY)
    assert escalated.state == "escalated"


def test_snooze_sets_the_expiry():
    result = apply_ack(opened_state(), ack("snooze"), max_snooze_seconds=MAX, now=NOW)
    assert result.decision is not None
    assert result.audit is not None
    assert result.decision.state == "snoozed"
    assert result.state["active"]["snoozed_until_s"] == at(70).timestamp()
    assert result.audit.snooze_until == at(70)


def test_escalate_raises_one_level_and_ends_a_snooze():
    state = apply_ack(opened_state(), ack("snooze"), max_snooze_seconds=MAX, now=NOW).state
    result = apply_ack(state, ack("escalate", 20), max_snooze_seconds=MAX, now=NOW)
    assert result.decision is not None
    assert (result.decision.state, result.decision.severity) == ("escalated", "medium")
    assert result.state["active"]["snoozed_until_s"] is None
    again = apply_ack(result.state, ack("escalate", 21), max_snooze_seconds=MAX, now=NOW)
    top = apply_ack(again.state, ack("escalate", 22), max_snooze_seconds=MAX, now=NOW)
    assert top.decision is not None
    assert top.decision.severity == "high"


def test_resolve_closes_the_episode_and_starts_the_refractory_period():
    result = apply_ack(opened_state(0.5), ack("resolve"), max_snooze_seconds=MAX, now=NOW)
    assert result.decision is not None
    assert result.decision.state == "resolved"
    assert "active" not in result.state or result.state["active"] is None
    assert result.state["last_peak"] == 0.5
    _, decisions = evaluate(
        result.state, patient_id=PID, at=at(30), risk=0.6, news2=None, policy=POLICY
    )
    assert decisions == []  # 0.6 < 0.5 + 0.15 within refractory


def test_a_retried_action_is_applied_once():
    first = apply_ack(opened_state(), ack("acknowledge"), max_snooze_seconds=MAX, now=NOW)
    again = apply_ack(first.state, ack("acknowledge"), max_snooze_seconds=MAX, now=NOW)
    assert (again.decision, again.audit, again.rejection) == (None, None, None)
    assert again.state == first.state


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (lambda: ack("acknowledge", user=""), DeadLetterReason.MISSING_USER),
        (lambda: ack("acknowledge", user="   "), DeadLetterReason.MISSING_USER),
        (lambda: ack("resolve", reason=" "), DeadLetterReason.MISSING_REASON),
        (lambda: ack("acknowledge", alert_id="0" * 32), DeadLetterReason.UNKNOWN_ALERT),
        (lambda: ack("snooze", snooze_until=at(10)), DeadLetterReason.SNOOZE_EXPIRED),
        (lambda: ack("snooze", snooze_until=at(5)), DeadLetterReason.SNOOZE_EXPIRED),
        (lambda: ack("snooze", snooze_until=at(10 + 121)), DeadLetterReason.SNOOZE_TOO_LONG),
    ],
)
def test_invalid_actions_are_rejected_with_the_reason(event, reason):
    state = opened_state()
    result = apply_ack(state, event(), max_snooze_seconds=MAX, now=NOW)
    assert result.rejection is not None
    assert result.rejection.reason is reason
    assert (result.decision, result.audit) == (None, None)
    assert result.state == state


def test_snooze_of_exactly_the_maximum_is_accepted():
    event = ack("snooze", snooze_until=at(10 + 120))
    assert apply_ack(opened_state(), event, max_snooze_seconds=MAX, now=NOW).rejection is None


def test_action_on_a_resolved_alert_is_rejected():
    resolved = apply_ack(opened_state(), ack("resolve"), max_snooze_seconds=MAX, now=NOW).state
    result = apply_ack(resolved, ack("acknowledge", 30), max_snooze_seconds=MAX, now=NOW)
    assert result.rejection is not None
    assert result.rejection.reason is DeadLetterReason.ALERT_RESOLVED
    empty = apply_ack({}, ack("acknowledge"), max_snooze_seconds=MAX, now=NOW)
    assert empty.rejection is not None
    assert empty.rejection.reason is DeadLetterReason.UNKNOWN_ALERT


@pytest.mark.parametrize(
    ("action", "changes"),
    [("snooze", {"snooze_until": None}), ("acknowledge", {"snooze_until": at(30)})],
)
def test_snooze_until_is_required_for_snooze_only(action, changes):
    with pytest.raises(ValidationError, match="snooze_until"):
        ack(action, **changes)


def test_decision_audit_is_deterministic():
    decision = AlertDecision(
        "a" * 32, "deterioration", "open", "low", "risk_above_threshold", False
    )
    one = decision_audit(decision, patient_id=PID, at=at(0), now=NOW, detail="risk 0.41")
    two = decision_audit(decision, patient_id=PID, at=at(0), now=NOW + timedelta(hours=1))
    assert one.audit_id == two.audit_id
    assert (one.actor, one.user, one.state, one.detail) == ("policy", None, "open", "risk 0.41")
    assert one.policy_version == POLICY_VERSION


# -- through the processor ------------------------------------------------------------------

ORIGIN = Origin("vigil.acks", 0, 7)


def processor_with_alert() -> tuple[Processor, dict[str, PatientState]]:
    processor = Processor(ProcessorConfig(policy=POLICY), clock=lambda: NOW)
    state = PatientState(PID)
    state.alert = opened_state()
    return processor, {PID: state}


def raw(event: AckEvent) -> bytes:
    return event.model_dump_json().encode()


def test_processor_applies_an_ack_and_returns_the_alert_and_audit_records():
    processor, states = processor_with_alert()
    event = ack("acknowledge")
    result = processor.ingest_ack(states, PID.encode(), raw(event), ORIGIN)
    assert result.deadletter is None
    assert result.alert is not None
    assert result.audit is not None
    assert (result.alert.state, result.alert.alert_id) == ("acknowledged", event.alert_id)
    assert states[PID].alert["active"]["acknowledged"]["user"] == "rn-0412"


def test_processor_dead_letters_rejections_and_bad_records():
    processor, states = processor_with_alert()
    bad_user = processor.ingest_ack(states, None, raw(ack("acknowledge", user="")), ORIGIN)
    assert bad_user.deadletter is not None
    assert bad_user.deadletter.reason is DeadLetterReason.MISSING_USER
    assert (bad_user.deadletter.source_topic, bad_user.deadletter.offset) == ("vigil.acks", 7)
    payload = json.loads(raw(ack("snooze")))
    del payload["snooze_until"]
    invalid = processor.ingest_ack(states, None, json.dumps(payload).encode(), ORIGIN)
    assert invalid.deadletter is not None
    assert invalid.deadletter.reason is DeadLetterReason.INVALID_FIELD
    unknown = processor.ingest_ack({}, None, raw(ack("acknowledge")), ORIGIN)
    assert unknown.deadletter is not None
    assert unknown.deadletter.reason is DeadLetterReason.UNKNOWN_ALERT
    wrong_key = processor.ingest_ack(states, b"other", raw(ack("acknowledge")), ORIGIN)
    assert wrong_key.deadletter is not None


def test_processor_audits_policy_alert_records():
    from tests.unit.test_pipeline import SICK, _scored  # the pipeline's own fixtures

    feed, snapshot = _scored(SICK)
    score, decisions = feed.processor.finish(feed.states, snapshot, None, "circuit_open")
    alerts = feed.processor.alert_records(snapshot, score, decisions, None)
    [audit] = feed.processor.audit_records(alerts)
    assert (audit.actor, audit.alert_id, audit.state) == ("policy", alerts[0].alert_id, "open")
    assert audit.detail == alerts[0].explanation
