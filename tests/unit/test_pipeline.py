"""Processor: raw Kafka records in, dead letters / snapshots / scores / alerts out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from streams.core.alerting import POLICY_VERSION, AlertPolicy, OodVerdict
from streams.core.codes import CODES
from streams.core.events import (
    AckEvent,
    AdtEvent,
    AlertRecord,
    DeadLetterReason,
    IcuType,
    Observation,
    ObservationEvent,
    OffsetRange,
    ScoreRecord,
    TopicKind,
    make_alert_id,
)
from streams.core.features import SERIES_CODES
from streams.core.pipeline import IngestResult, ModelAnswer, Processor, ProcessorConfig, Snapshot
from streams.core.state import Origin, Outcome, PatientState
from streams.core.stepping import ModelState

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
PID = "stay-132539"
OTHER = "stay-140101"
# No persistence: one score opens an alert, so each test needs one snapshot.
CONFIG = ProcessorConfig(
    code_version="1.4.2",
    policy=AlertPolicy(
        arm_risk=0.5,
        disarm_risk=0.35,
        arm_scores=1,
        arm_duration=timedelta(0),
        disarm_scores=1,
        disarm_duration=timedelta(0),
        defer_scores=1,
        defer_duration=timedelta(0),
    ),
)
VITALS_TOPIC = "vigil.vitals"

NORMAL = {"HR": 78.0, "RespRate": 16.0, "SpO2": 97.0, "Temp": 37.0, "SysABP": 124.0}
# NEWS2: RR 26 (3) + SpO2 90 (3) + SBP 95 (2) + HR 135 (3) + Temp 39.5 (2) = 13, high.
SICK = {"HR": 135.0, "RespRate": 26.0, "SpO2": 90.0, "Temp": 39.5, "SysABP": 95.0}


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def vitals(event_id: str, minutes: float, values: dict[str, float], patient_id: str = PID) -> bytes:
    return (
        ObservationEvent(
            event_id=event_id,
            patient_id=patient_id,
            event_time=at(minutes),
            source="monitor-bed-7",
            observations=tuple(
                Observation(code=code, value=value, unit=CODES[code].unit)
                for code, value in values.items()
            ),
        )
        .model_dump_json()
        .encode()
    )


def make_processor() -> Processor:
    return Processor(CONFIG, clock=lambda: NOW)


class Feed:
    """A processor and its patient states, fed like one Kafka partition of vitals."""

    def __init__(self) -> None:
        self.processor = make_processor()
        self.states: dict[str, PatientState] = {}
        self.offset = 100

    def send(
        self,
        raw: bytes,
        *,
        key: bytes | None = PID.encode(),
        kind: TopicKind = TopicKind.VITALS,
        topic: str = VITALS_TOPIC,
        partition: int = 0,
    ) -> IngestResult:
        self.offset += 1
        origin = Origin(topic, partition, self.offset)
        return self.processor.ingest(self.states, kind, key, raw, origin)

    def vitals(
        self, event_id: str, minutes: float, values: dict[str, float], pid: str = PID
    ) -> IngestResult:
        return self.send(vitals(event_id, minutes, values, pid), key=pid.encode())


# -- dead letters ----------------------------------------------------------------------------


def _unknown_code() -> bytes:
    payload = json.loads(vitals("ev-1", 0, NORMAL))
    payload["observations"].append({"code": "Serotonin", "value": 1.0, "unit": "1"})
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("raw", "key", "reason"),
    [
        (b'{"event_id": "ev-1", "patient_id": ', PID.encode(), DeadLetterReason.INVALID_JSON),
        (_unknown_code(), PID.encode(), DeadLetterReason.UNKNOWN_CODE),
        (
            ObservationEvent(
                event_id="ev-1",
                patient_id=PID,
                event_time=NOW + CONFIG.max_future + timedelta(seconds=1),
                source="monitor-bed-7",
                observations=(Observation(code="HR", value=80.0, unit="/min"),),
            )
            .model_dump_json()
            .encode(),
            PID.encode(),
            DeadLetterReason.FUTURE_EVENT,
        ),
        (vitals("ev-1", 0, NORMAL), OTHER.encode(), DeadLetterReason.INVALID_FIELD),
    ],
    ids=["invalid_json", "unknown_code", "future_event", "key_mismatch"],
)
def test_bad_record_goes_to_dead_letter_with_its_position_and_payload(raw, key, reason):
    feed = Feed()
    result = feed.send(raw, key=key, topic="vigil.vitals", partition=3)
    dead = result.deadletter
    assert dead is not None
    assert dead.reason is reason
    assert (dead.source_topic, dead.partition, dead.offset) == ("vigil.vitals", 3, feed.offset)
    assert dead.payload == raw.decode()
    assert dead.payload_encoding == "utf-8"
    assert dead.payload_size_bytes == len(raw)
    assert not dead.payload_truncated
    assert dead.key == key.decode()
    assert dead.received_time == NOW
    assert (result.patient_id, result.outcome, result.snapshot) == (None, None, None)
    assert feed.states == {}


def test_event_within_the_clock_skew_allowance_is_accepted():
    feed = Feed()
    raw = (
        ObservationEvent(
            event_id="ev-1",
            patient_id=PID,
            event_time=NOW + CONFIG.max_future,
            source="monitor-bed-7",
            observations=(Observation(code="HR", value=80.0, unit="/min"),),
        )
        .model_dump_json()
        .encode()
    )
    assert feed.send(raw).outcome is Outcome.ACCEPTED


def test_record_without_a_key_is_accepted():
    feed = Feed()
    assert feed.send(vitals("ev-1", 0, NORMAL), key=None).outcome is Outcome.ACCEPTED


def test_too_late_event_goes_to_dead_letter():
    feed = Feed()
    assert feed.vitals("ev-1", 200, NORMAL).outcome is Outcome.ACCEPTED
    raw = vitals("ev-0", 200 - 121, NORMAL)  # lateness is 2 h
    result = feed.send(raw)
    assert result.outcome is Outcome.TOO_LATE
    assert result.patient_id == PID
    assert result.deadletter is not None
    assert result.deadletter.reason is DeadLetterReason.TOO_LATE
    assert result.deadletter.offset == feed.offset
    assert result.deadletter.payload == raw.decode()


# -- accepted records and snapshots ------------------------------------------------------------


def test_valid_vitals_are_accepted_and_snapshotted_when_due():
    feed = Feed()
    result = feed.vitals("ev-1", 0, NORMAL)
    assert (result.outcome, result.patient_id, result.deadletter) == (Outcome.ACCEPTED, PID, None)
    snapshot = result.snapshot
    assert snapshot is not None
    assert snapshot.patient_id == PID
    assert snapshot.at == at(0)
    assert snapshot.window.end_time == at(0)
    hr = SERIES_CODES.index("HR")
    assert snapshot.window.values[-1, hr] == 78.0
    assert snapshot.news2.total == 0
    assert snapshot.event_ids == ("ev-1",)
    assert snapshot.offsets == (
        OffsetRange(topic=VITALS_TOPIC, partition=0, first_offset=101, last_offset=101),
    )
    assert snapshot.latest["HR"] == (78.0, at(0))


def test_no_new_snapshot_until_the_score_interval_passed_in_event_time():
    feed = Feed()
    assert feed.vitals("ev-1", 0, NORMAL).snapshot is not None
    interval_min = CONFIG.score_interval / timedelta(minutes=1)
    assert feed.vitals("ev-2", 10, NORMAL).snapshot is None
    assert feed.vitals("ev-3", interval_min - 1, NORMAL).snapshot is None
    snapshot = feed.vitals("ev-4", interval_min, SICK).snapshot
    assert snapshot is not None
    assert snapshot.at == at(interval_min)
    # Cites everything since the previous score, and nothing before it.
    assert snapshot.event_ids == ("ev-2", "ev-3", "ev-4")
    assert snapshot.offsets == (
        OffsetRange(topic=VITALS_TOPIC, partition=0, first_offset=102, last_offset=104),
    )
    assert snapshot.news2.total == 13
    assert feed.vitals("ev-5", interval_min + 1, NORMAL).snapshot is None


def test_duplicate_is_reported_and_not_snapshotted():
    feed = Feed()
    raw = vitals("ev-1", 0, NORMAL)
    assert feed.send(raw).snapshot is not None
    later = feed.vitals("ev-2", 60, NORMAL)
    assert later.snapshot is not None
    before = feed.states[PID].to_dict()
    again = feed.send(raw)
    assert (again.outcome, again.snapshot, again.deadletter) == (Outcome.DUPLICATE, None, None)
    assert feed.states[PID].to_dict() == before


def test_artifacts_are_reported_and_kept_out_of_the_snapshot():
    feed = Feed()
    result = feed.vitals("ev-1", 0, {"HR": 400.0, "RespRate": 18.0})
    assert result.artifacts == ("HR",)
    assert result.snapshot is not None
    assert "HR" not in result.snapshot.latest
    assert result.snapshot.window.mask[:, SERIES_CODES.index("HR")].sum() == 0
    assert feed.states[PID].artifacts == 1


def test_duplicate_reports_no_artifacts():
    feed = Feed()
    raw = vitals("ev-1", 0, {"HR": 400.0, "RespRate": 18.0})
    feed.send(raw)
    again = feed.send(raw)
    assert again.outcome is Outcome.DUPLICATE
    assert again.artifacts == ()


def test_adt_record_sets_descriptors():
    feed = Feed()
    raw = (
        AdtEvent(
            event_id="adt-1",
            patient_id=PID,
            event_time=at(0),
            source="adt-feed",
            action="admit",
            age_years=71.0,
            sex="male",
            icu_type=IcuType.CORONARY_CARE,
        )
        .model_dump_json()
        .encode()
    )
    result = feed.send(raw, kind=TopicKind.ADT, topic="vigil.adt")
    assert result.outcome is Outcome.ACCEPTED
    assert feed.states[PID].statics == {"Age": 71.0, "Gender": 1.0, "ICUType": 1.0}
    feed.vitals("ev-1", 60, NORMAL)
    assert feed.states[PID].admit_ms == int(at(0).timestamp() * 1000)


# -- scores and alerts -------------------------------------------------------------------------


def _scored(values: dict[str, float]) -> tuple[Feed, Snapshot]:
    feed = Feed()
    feed.vitals("ev-1", 0, NORMAL)
    snapshot = feed.vitals("ev-2", 30, values).snapshot
    assert snapshot is not None
    return feed, snapshot


def test_finish_with_a_model_answer_builds_the_score():
    feed, snapshot = _scored(NORMAL)
    score, decisions = feed.processor.finish(
        feed.states, snapshot, ModelAnswer(risk=0.12, model_version="7")
    )
    assert decisions == []
    assert score.patient_id == PID
    assert score.event_time == at(30)
    assert score.risk == pytest.approx(0.12)
    assert (score.model, score.model_version) == (CONFIG.model_name, "7")
    assert (score.degraded, score.degraded_reason) == (False, None)
    assert score.news2 is not None
    assert (score.news2.total, score.news2.band) == (0, "low")
    assert score.news2.parameters["pulse"] == 0
    assert set(score.news2.missing) == {"air_or_oxygen", "consciousness"}
    assert score.provenance.code_version == "1.4.2"
    assert score.provenance.event_ids == ("ev-2",)
    assert score.provenance.offsets == (
        OffsetRange(topic=VITALS_TOPIC, partition=0, first_offset=102, last_offset=102),
    )
    assert score.processing_time == NOW
    assert ScoreRecord.model_validate_json(score.model_dump_json()) == score
    state = feed.states[PID]
    assert state.last_score == {
        "at_ms": int(at(30).timestamp() * 1000),
        "risk": 0.12,
        "news2": 0,
        "degraded": False,
    }
    assert state.alert == {}


def test_finish_with_a_high_risk_opens_a_model_alert():
    feed, snapshot = _scored(NORMAL)
    _, [decision] = feed.processor.finish(
        feed.states, snapshot, ModelAnswer(risk=0.83, model_version="7")
    )
    assert (decision.kind, decision.state, decision.severity) == ("deterioration", "open", "high")
    assert decision.alert_id == make_alert_id(
        PID, "deterioration", at(30), policy_version=POLICY_VERSION
    )
    assert not decision.degraded
    assert feed.states[PID].alert["active"]["id"] == decision.alert_id


def test_finish_without_an_answer_is_degraded_and_news2_driven():
    feed, snapshot = _scored(SICK)
    score, [decision] = feed.processor.finish(feed.states, snapshot, None, "circuit_open")
    assert score.risk is None
    assert (score.degraded, score.degraded_reason) == (True, "circuit_open")
    assert score.model == "news2"
    assert score.news2 is not None
    assert (score.news2.total, score.news2.band) == (13, "high")
    assert (decision.kind, decision.state, decision.severity) == ("news2", "open", "high")
    assert decision.reason == "news2_above_threshold"
    assert decision.degraded
    assert decision.alert_id == make_alert_id(PID, "news2", at(30), policy_version=POLICY_VERSION)


def test_degraded_without_a_reason_says_unavailable_and_low_news2_does_not_alert():
    feed, snapshot = _scored(NORMAL)
    score, decisions = feed.processor.finish(feed.states, snapshot, None)
    assert score.degraded_reason == "unavailable"
    assert decisions == []


def test_alert_records_name_the_positive_top_contributors_with_recent_values():
    feed, snapshot = _scored(SICK)
    score, decisions = feed.processor.finish(
        feed.states, snapshot, ModelAnswer(risk=0.91, model_version="7")
    )
    contributions = np.zeros(len(SERIES_CODES), dtype=np.float32)
    contributions[SERIES_CODES.index("RespRate")] = 0.31
    contributions[SERIES_CODES.index("HR")] = 0.42
    contributions[SERIES_CODES.index("Temp")] = -0.5  # pulled the risk down
    [record] = feed.processor.alert_records(snapshot, score, decisions, contributions)
    assert isinstance(record, AlertRecord)
    assert record.contributing == ("HR", "RespRate")
    assert "HR 135 at 08:30Z" in record.explanation
    assert "RespRate 26 at 08:30Z" in record.explanation
    assert "model risk 0.91" in record.explanation
    assert "NEWS2 13 (high)" in record.explanation
    assert "Temp" not in record.explanation
    assert PID not in record.explanation
    assert record.alert_id == decisions[0].alert_id
    assert (record.kind, record.state, record.severity) == ("deterioration", "open", "high")
    assert record.reason == "risk_above_threshold"
    assert record.risk == pytest.approx(0.91)
    assert record.news2 == score.news2
    assert record.policy_version == POLICY_VERSION
    assert not record.degraded
    assert (record.event_time, record.processing_time) == (at(30), NOW)
    assert AlertRecord.model_validate_json(record.model_dump_json()) == record


def test_alert_records_fall_back_to_news2_parameters_without_contributions():
    feed, snapshot = _scored(SICK)
    score, decisions = feed.processor.finish(feed.states, snapshot, None, "circuit_open")
    [record] = feed.processor.alert_records(snapshot, score, decisions, None)
    # Three parameters scored 3 (spo2, respiration_rate, pulse); ties by name, descending.
    assert record.contributing == ("spo2", "respiration_rate", "pulse")
    assert record.explanation.startswith("news2_above_threshold: NEWS2 13 (high)")
    assert "model risk" not in record.explanation
    assert "spo2" in record.explanation
    assert record.degraded
    assert record.risk is None


def test_alert_records_without_decisions_are_empty():
    feed, snapshot = _scored(NORMAL)
    score, decisions = feed.processor.finish(
        feed.states, snapshot, ModelAnswer(risk=0.1, model_version="7")
    )
    assert feed.processor.alert_records(snapshot, score, decisions, None) == []


# -- isolation ---------------------------------------------------------------------------------


def test_one_patients_bad_event_does_not_affect_another():
    feed = Feed()
    feed.vitals("ev-1", 0, NORMAL)
    before = feed.states[PID].to_dict()
    bad_other = feed.send(_unknown_code().replace(PID.encode(), OTHER.encode()), key=OTHER.encode())
    assert bad_other.deadletter is not None
    assert feed.states[PID].to_dict() == before
    assert OTHER not in feed.states
    # A bad record of the same patient leaves its state untouched too.
    assert feed.send(b"not json").deadletter is not None
    assert feed.states[PID].to_dict() == before
    # And the good patients keep scoring.
    assert feed.vitals("ev-2", 30, SICK).snapshot is not None
    assert feed.vitals("ev-x", 30, NORMAL, pid=OTHER).snapshot is not None
    assert set(feed.states) == {PID, OTHER}


def test_ood_verdict_is_on_the_score_and_a_flagged_input_defers_the_alert() -> None:
    feed, snapshot = _scored(SICK)
    verdict = OodVerdict(distance=40.5, threshold=31.363, flagged=True)
    score, [decision] = feed.processor.finish(
        feed.states, snapshot, ModelAnswer(risk=0.83, model_version="7", ood=verdict)
    )
    assert score.ood is not None
    assert (score.ood.flagged, score.ood.distance, score.ood.threshold) == (True, 40.5, 31.363)
    assert (decision.state, decision.reason) == ("deferred_for_review", "input_out_of_distribution")
    unknown = OodVerdict(distance=3.0, threshold=float("nan"), flagged=False)
    later = feed.vitals("ev-3", 90, SICK).snapshot
    assert later is not None
    score2, _ = feed.processor.finish(
        feed.states, later, ModelAnswer(risk=0.5, model_version="7", ood=unknown)
    )
    assert score2.ood is not None
    assert (score2.ood.flagged, score2.ood.threshold) == (False, None)  # NaN is not sent


def test_expire_snooze_publishes_at_the_snooze_end_in_event_time() -> None:
    feed, snapshot = _scored(SICK)
    state = feed.states[PID]
    _, [opened] = feed.processor.finish(
        feed.states, snapshot, ModelAnswer(risk=0.83, model_version="7")
    )
    ack = AckEvent(
        ack_id="ack-1",
        patient_id=PID,
        alert_id=opened.alert_id,
        event_time=at(40),
        action="snooze",
        user="rn-0412",
        reason="reviewed at the bedside",
        snooze_until=at(100),
    )
    result = feed.processor.ingest_ack(
        feed.states, PID.encode(), ack.model_dump_json().encode(), Origin("vigil.acks", 0, 1)
    )
    assert result.alert is not None
    assert result.alert.state == "snoozed"
    assert feed.processor.expire_snooze(state, at(99)) == ([], [])
    [alert], [audit] = feed.processor.expire_snooze(state, at(130))
    assert (alert.state, alert.reason, alert.event_time) == ("open", "snooze_expired", at(100))
    assert alert.alert_id == opened.alert_id
    assert alert.risk == pytest.approx(0.83)
    assert (audit.actor, audit.state, audit.reason) == ("policy", "open", "snooze_expired")
    assert feed.processor.expire_snooze(state, at(200)) == ([], [])


# -- step requests --------------------------------------------------------------------------


def test_a_stays_final_score_rebuilds_a_stale_step_vector_despite_a_discharge_far_ahead():
    """A late record in a bin the stored vector committed makes the vector stale; the
    final score of a discharge dated weeks after the last vital signs must rebuild it
    from admission like any score within the window. It kept the stale vector while the
    rule read the watermark (which the discharge moves), so a replay differed in one run of
    two on stay 132599 (docs/replay.md)."""
    processor = Processor(CONFIG, clock=lambda: T0 + timedelta(days=100))
    processor.step_model = "deterioration_step/1"
    states: dict[str, PatientState] = {}
    offsets = iter(range(1, 1_000))

    def send(raw: bytes, kind: TopicKind) -> None:
        origin = Origin(f"vigil.{kind.value}", 0, next(offsets))
        processor.ingest(states, kind, PID.encode(), raw, origin)

    def adt(event_id: str, minutes: float, action: str) -> bytes:
        return (
            AdtEvent(
                event_id=event_id,
                patient_id=PID,
                event_time=at(minutes),
                source="adt-feed",
                action=action,
            )
            .model_dump_json()
            .encode()
        )

    send(adt("adt-1", 0, "admit"), TopicKind.ADT)
    for hour in range(10):
        send(vitals(f"ev-{hour}", hour * 60 + 5, NORMAL), TopicKind.VITALS)
    state = states[PID]
    assert state.admit_ms is not None
    state.keep_model_state(ModelState("deterioration_step/1", state.admit_ms, 8, b"\0" * 8), 10)
    send(vitals("ev-late", 8 * 60 + 30, SICK), TopicKind.VITALS)  # in committed bin 8
    assert state.late_records
    send(adt("adt-9", 75 * 24 * 60, "discharge"), TopicKind.ADT)
    final = processor.snapshot(state)
    assert final.at == at(9 * 60 + 5)  # the last observation, not the discharge
    assert final.step is not None
    assert final.step.rebuilt
    assert final.step.base is None
