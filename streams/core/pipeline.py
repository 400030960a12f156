"""The worker's logic without I/O: record in, state change and records out.

:class:`Processor` is what the Faust agent calls. :meth:`Processor.ingest` validates one
Kafka record, applies it to the patient's :class:`~streams.core.state.PatientState` and,
when the patient is due for a score, freezes a :class:`Snapshot` of the model input and
NEWS2 at that moment. The adapter sends the snapshot to Triton (or not, when Triton is
down) and hands the answer to :meth:`Processor.finish`, which builds the score record and
runs the alert policy. Everything here is deterministic given the records and the
injected clock, so agent tests and offline replays see exactly what the worker does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import numpy as np
import numpy.typing as npt

from streams.core.acks import AckRejection, apply_ack
from streams.core.alerting import (
    POLICY_VERSION,
    AlertDecision,
    AlertPolicy,
    OodVerdict,
    UnitPolicies,
    evaluate,
    expire_snooze,
)
from streams.core.events import (
    AckEvent,
    AdtEvent,
    AlertRecord,
    AuditRecord,
    DeadLetterReason,
    DeadLetterRecord,
    ExplanationRecord,
    FindingRecord,
    IcuType,
    ImagingEvent,
    ImagingReference,
    News2Score,
    OffsetRange,
    OodRecord,
    Provenance,
    ScoreRecord,
    TopicKind,
    make_audit_id,
    make_finding_id,
)
from streams.core.features import SERIES_CODES, FeatureWindow, encode_statics
from streams.core.imaging import StudyAnalysis
from streams.core.news2 import News2Result
from streams.core.state import Origin, Outcome, PatientState, from_ms
from streams.core.stepping import ModelState, StepRequest, step_request
from streams.core.validation import dead_letter, decode_ack, decode_input
from vigil.errors import SchemaError

__all__ = [
    "EXPLAINED_STATES",
    "AckIngest",
    "IngestResult",
    "ModelAnswer",
    "Processor",
    "ProcessorConfig",
    "ProcessorSettings",
    "Snapshot",
    "StudyIngest",
]


EXPLAINED_STATES = frozenset({"open", "escalated"})
"""Alert changes the explain model accounts for (on a trusted risk): a deferral (the risk is
not trusted) and a resolution are explained by their reason and NEWS2 alone."""


@dataclass(frozen=True)
class ProcessorConfig:
    """Event-time and policy parameters of the processor (from ``WorkerSettings``).

    ``policy`` is the default alert policy; ``unit_policies`` overrides it per ICU type
    (keys are :class:`~streams.core.events.IcuType` values, for example ``medical``).
    """

    window: timedelta = timedelta(hours=48)
    score_interval: timedelta = timedelta(minutes=30)
    lateness: timedelta = timedelta(hours=2)
    max_future: timedelta = timedelta(minutes=5)
    max_event_bytes: int = 256 * 1024
    news2_max_age: timedelta = timedelta(hours=6)
    policy: AlertPolicy = field(default_factory=AlertPolicy)
    unit_policies: Mapping[str, AlertPolicy] = field(default_factory=dict)
    code_version: str = "0.0.0"
    model_name: str = "deterioration"
    step_commit_delay: timedelta = timedelta(hours=1)

    @classmethod
    def from_settings(cls, settings: ProcessorSettings, *, code_version: str) -> ProcessorConfig:
        """The processor's parameters from the worker's settings (every default lives in
        ``streams/settings.py``; this only converts units)."""
        return cls(
            window=settings.window,
            score_interval=settings.score_interval,
            lateness=settings.lateness,
            max_future=settings.max_future,
            max_event_bytes=settings.max_event_bytes,
            news2_max_age=timedelta(hours=settings.news2_max_age_hours),
            policy=AlertPolicy(
                arm_risk=settings.alert_arm_risk,
                disarm_risk=settings.alert_disarm_risk,
                arm_scores=settings.alert_arm_scores,
                arm_duration=timedelta(hours=settings.alert_arm_hours),
                disarm_scores=settings.alert_disarm_scores,
                disarm_duration=timedelta(hours=settings.alert_disarm_hours),
                refractory=timedelta(hours=settings.alert_refractory_hours),
                realert_margin=settings.alert_realert_margin,
                news2_threshold=settings.alert_news2_threshold,
                max_snooze=timedelta(hours=settings.alert_max_snooze_hours),
                defer_scores=settings.alert_defer_scores,
                defer_duration=timedelta(hours=settings.alert_defer_hours),
            ),
            code_version=code_version,
            model_name=settings.triton_model,
            step_commit_delay=timedelta(hours=settings.step_commit_delay_hours),
        )


class ProcessorSettings(Protocol):
    """What :meth:`ProcessorConfig.from_settings` reads (``streams.settings.WorkerSettings``
    has it; the core does not import the settings module)."""

    @property
    def window(self) -> timedelta: ...
    @property
    def score_interval(self) -> timedelta: ...
    @property
    def lateness(self) -> timedelta: ...
    @property
    def max_future(self) -> timedelta: ...
    @property
    def max_event_bytes(self) -> int: ...
    @property
    def news2_max_age_hours(self) -> float: ...
    @property
    def alert_arm_risk(self) -> float: ...
    @property
    def alert_disarm_risk(self) -> float: ...
    @property
    def alert_arm_scores(self) -> int: ...
    @property
    def alert_arm_hours(self) -> float: ...
    @property
    def alert_disarm_scores(self) -> int: ...
    @property
    def alert_disarm_hours(self) -> float: ...
    @property
    def alert_refractory_hours(self) -> float: ...
    @property
    def alert_realert_margin(self) -> float: ...
    @property
    def alert_news2_threshold(self) -> int: ...
    @property
    def alert_max_snooze_hours(self) -> float: ...
    @property
    def alert_defer_scores(self) -> int: ...
    @property
    def alert_defer_hours(self) -> float: ...
    @property
    def triton_model(self) -> str: ...
    @property
    def step_commit_delay_hours(self) -> float: ...


@dataclass(frozen=True)
class Snapshot:
    """A patient's model input and NEWS2 frozen at the moment the score became due.

    With step scoring, the whole-window input is built only when something asks for it
    (the explain model for an alert, or the window OOD detector when the step model has
    none): ``window`` then computes it on first use from the patient's state at the
    snapshot's time, and ``statics`` is all the step model needs.
    """

    patient_id: str
    at: datetime
    window_or_builder: FeatureWindow | Callable[[], FeatureWindow]
    news2: News2Result
    event_ids: tuple[str, ...]
    offsets: tuple[OffsetRange, ...]
    images: tuple[tuple[float, tuple[float, ...]], ...]
    latest_ms: dict[str, tuple[float, int]]
    """Newest value of each parameter and its time in epoch ms (see :attr:`latest`)."""
    studies: tuple[ImagingReference, ...] = ()
    step: StepRequest | None = None
    """The step model's inputs (when the processor scores with it, :attr:`Processor.step_model`)."""
    statics: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None
    """``statics`` and ``static_mask`` ``[S]`` (always set by :meth:`Processor.snapshot`)."""
    _window: list[FeatureWindow] = field(default_factory=list, compare=False, repr=False)

    @property
    def latest(self) -> dict[str, tuple[float, datetime]]:
        """Newest value of each parameter and its time (for the alert's explanation text;
        converted on use, as most snapshots never need it)."""
        return {code: (value, from_ms(t)) for code, (value, t) in self.latest_ms.items()}

    @property
    def window(self) -> FeatureWindow:
        """The whole-window model input at :attr:`at` (built once, on first use)."""
        if isinstance(self.window_or_builder, FeatureWindow):
            return self.window_or_builder
        if not self._window:
            self._window.append(self.window_or_builder())
        return self._window[0]


@dataclass(frozen=True)
class ModelAnswer:
    """What the model said about one snapshot (from the Triton adapter).

    ``ood`` is the verdict of the out-of-distribution detector on the same inputs, when it
    was asked. ``model_state`` is the step model's state after the bins this score
    committed (stored in the patient's state by :meth:`Processor.finish`).
    """

    risk: float
    model_version: str
    ood: OodVerdict | None = None
    model_state: ModelState | None = None
    model: str | None = None
    """The model that answered, when not the configured ``model_name`` (the step model)."""


@dataclass(frozen=True)
class IngestResult:
    """The effect of one input record."""

    patient_id: str | None
    outcome: Outcome | None
    deadletter: DeadLetterRecord | None = None
    snapshot: Snapshot | None = None
    artifacts: tuple[str, ...] = ()
    imaging: ImagingEvent | None = None


@dataclass(frozen=True)
class StudyIngest:
    """The effect of an analysed imaging study (:meth:`Processor.add_study`).

    Attributes:
        outcome: Accepted, or why the study changed nothing (duplicate, too late).
        finding: The record for ``findings`` (when the study was analysed and accepted).
        snapshot: The patient's re-score with the study, when the patient has data to score.
        deadletter: The rejection of a study that arrived too late.
    """

    outcome: Outcome
    finding: FindingRecord | None = None
    snapshot: Snapshot | None = None
    deadletter: DeadLetterRecord | None = None


@dataclass(frozen=True)
class AckIngest:
    """The effect of one ``acks`` record: at most one of each output.

    Attributes:
        patient_id: The patient, when the record decoded.
        alert: The alert change to publish on ``alerts`` (and to Redis).
        audit: Its record for ``audit``.
        deadletter: The rejection, for ``deadletter``.
    """

    patient_id: str | None
    alert: AlertRecord | None = None
    audit: AuditRecord | None = None
    deadletter: DeadLetterRecord | None = None


class Processor:
    """Validates records, updates patient states, and turns model answers into records.

    Args:
        config: Event-time and policy parameters.
        clock: Wall clock (timezone-aware), injected for tests.
    """

    def __init__(self, config: ProcessorConfig, clock: Callable[[], datetime]) -> None:
        self.config = config
        self.clock = clock
        self.step_model: str | None = None
        """``name/version`` of the step model the adapter scores with (set once it is
        known); while None, snapshots carry no step inputs."""
        self.window_on_demand = False
        """With step scoring: build each snapshot's whole-window input only if asked for
        (set when the step model gives its own OOD verdict, so only alerts need it)."""

    def ingest(
        self,
        states: MutableMapping[str, PatientState],
        kind: TopicKind,
        key: bytes | None,
        raw: bytes,
        origin: Origin,
    ) -> IngestResult:
        """Validate one input record and apply it to its patient's state.

        Args:
            states: Patient states by id (a cache over the Faust table); updated in place.
            kind: Input topic kind.
            key: Kafka key (must equal the payload's ``patient_id``).
            raw: Kafka value.
            origin: Topic, partition and offset of the record.
        """
        now = self.clock()
        try:
            decoded = decode_input(
                kind,
                raw,
                now=now,
                max_future=self.config.max_future,
                max_bytes=self.config.max_event_bytes,
            )
            event = decoded.event
            if key is not None and key != event.patient_id.encode():
                raise SchemaError(
                    DeadLetterReason.INVALID_FIELD,
                    "record key does not match patient_id (records must be keyed by patient)",
                )
        except SchemaError as error:
            return IngestResult(None, None, deadletter=self._dead(error, origin, key, raw, now))
        pid = event.patient_id
        state = states.get(pid)
        if state is None:
            state = PatientState(pid)
            states[pid] = state
        artifacts = tuple(obs.code for obs in decoded.artifacts)
        final_at: datetime | None = None
        if isinstance(event, AdtEvent):
            # A discharge closes the stay: whatever changed since the last score gets a
            # final score, at the time of the last clinical observation.
            if event.action == "discharge" and state.watermark_ms is not None:
                final_at = state.observation_time
            outcome = state.apply_adt(
                event, origin=origin, lateness=self.config.lateness, artifacts=decoded.artifacts
            )
        elif isinstance(event, ImagingEvent):
            # The study is applied by `add_study` once the adapter has read its pixels and
            # asked the imaging model; here it is only checked, so that a duplicate or a
            # late study costs no model call and an unreadable one leaves no trace.
            outcome = (
                state.admissible(event.event_id, event.event_time, self.config.lateness, "imaging")
                or Outcome.ACCEPTED
            )
            if outcome is Outcome.ACCEPTED:
                return IngestResult(pid, outcome, imaging=event)
        else:
            outcome = state.apply_observations(
                event.event_id,
                event.event_time,
                decoded.observations,
                origin=origin,
                lateness=self.config.lateness,
                window=self.config.window,
                stream=kind.value,
            )
        if outcome is Outcome.TOO_LATE:
            late = SchemaError(
                DeadLetterReason.TOO_LATE,
                f"event time is more than {self.config.lateness} behind the patient's latest",
            )
            return IngestResult(pid, outcome, deadletter=self._dead(late, origin, key, raw, now))
        snapshot = None
        if outcome is Outcome.ACCEPTED and final_at is not None:
            snapshot = self.snapshot(state, at=final_at)
        elif outcome is Outcome.ACCEPTED and state.due_for_score(self.config.score_interval):
            snapshot = self.snapshot(state)
        return IngestResult(
            pid,
            outcome,
            snapshot=snapshot,
            # Artifacts count once: a duplicate or late copy adds nothing to the state.
            artifacts=artifacts if outcome is Outcome.ACCEPTED else (),
        )

    def add_study(
        self,
        states: MutableMapping[str, PatientState],
        event: ImagingEvent,
        analysis: StudyAnalysis | None,
        origin: Origin,
        *,
        imaging_model: str = "imaging",
    ) -> StudyIngest:
        """Apply an imaging study once its pixels were read and analysed.

        The embedding joins the patient's state and the patient is re-scored at once (a
        study is news, whatever the score interval), provided vitals or labs exist to
        score. Without an analysis (imaging inference switched off) the study only counts
        as an input for provenance.

        Args:
            states: Patient states by id; updated in place.
            event: The imaging event (from :meth:`ingest`'s ``imaging``).
            analysis: The imaging model's answer, or None when imaging is not analysed.
            origin: Kafka position of the event.
            imaging_model: Imaging model name, for the finding.
        """
        now = self.clock()
        pid = event.patient_id
        state = states.get(pid)
        if state is None:
            state = PatientState(pid)
            states[pid] = state
        if analysis is None:
            outcome = state.apply_observations(
                event.event_id,
                event.event_time,
                (),
                origin=origin,
                lateness=self.config.lateness,
                window=self.config.window,
                stream=TopicKind.IMAGING.value,
            )
            return StudyIngest(outcome)
        finding_id = make_finding_id(pid, event.study_id, event.event_id, analysis.model_version)
        reference = ImagingReference(
            study_id=event.study_id,
            finding_id=finding_id,
            event_time=event.event_time,
            class_probability=analysis.class_probability,
            heatmap_uri=analysis.heatmap_uri,
        )
        outcome = state.apply_study(
            event.event_id,
            event.event_time,
            analysis.embedding,
            reference.model_dump(mode="json"),
            origin=origin,
            lateness=self.config.lateness,
        )
        if outcome is not Outcome.ACCEPTED:
            return StudyIngest(outcome)
        finding = FindingRecord(
            finding_id=finding_id,
            patient_id=pid,
            study_id=event.study_id,
            event_id=event.event_id,
            event_time=event.event_time,
            modality=event.modality,
            model=imaging_model,
            model_version=analysis.model_version,
            class_probability=analysis.class_probability,
            lesion_count=analysis.lesion_count,
            lesion_area_fraction=analysis.lesion_area_fraction,
            mask_threshold=analysis.mask_threshold,
            lesion_peak_threshold=analysis.lesion_peak_threshold,
            heatmap_uri=analysis.heatmap_uri,
            image_shape=analysis.image_shape,
            denoising=analysis.denoising,
            registration=analysis.registration,
            provenance=Provenance(
                code_version=self.config.code_version,
                event_ids=(event.event_id,),
                offsets=(
                    OffsetRange(
                        topic=origin.topic,
                        partition=origin.partition,
                        first_offset=origin.offset,
                        last_offset=origin.offset,
                    ),
                ),
            ),
            processing_time=now,
        )
        snapshot = self.snapshot(state) if state.series else None
        return StudyIngest(outcome, finding=finding, snapshot=snapshot)

    def dead_letter(
        self, error: SchemaError, origin: Origin, key: bytes | None, raw: bytes
    ) -> DeadLetterRecord:
        """The dead-letter record of an input the adapter could not use (for example an
        imaging study whose pixels cannot be read)."""
        return self._dead(error, origin, key, raw, self.clock())

    def snapshot(self, state: PatientState, at: datetime | None = None) -> Snapshot:
        """Freeze the patient's model input and NEWS2 and mark the state scored.

        Args:
            state: The patient's state.
            at: Scoring time; defaults to the latest observation (vitals, labs, imaging),
                so an ADT event read ahead of the data (a discharge, say) never moves the
                window past the data.
        """
        if at is None:
            at = state.observation_time
        window: FeatureWindow | Callable[[], FeatureWindow]
        if self.step_model is not None and self.window_on_demand:
            window = functools.partial(state.features, self.config.window, at)
        else:
            window = state.features(self.config.window, at=at)
        news2 = state.news2(self.config.news2_max_age, at=at)
        event_ids, offsets = state.take_provenance()
        at_ms = int(at.timestamp() * 1000)
        images = tuple(
            ((at_ms - t) / 3_600_000, tuple(emb)) for t, emb in state.images if t <= at_ms
        )
        latest = {code: (pts[-1][1], pts[-1][0]) for code, pts in state.series.items()}
        studies = tuple(
            ImagingReference.model_validate({k: v for k, v in study.items() if k != "t"})
            for study in state.studies
            if int(study["t"]) <= at_ms
        )
        step = None
        # A patient with an imaging study is scored by the window model: the step model's
        # image branch is untrained, the window model's is not (docs/worker.md).
        if self.step_model is not None and state.admit_ms is not None and not images:
            step = step_request(
                state.series,
                admit_ms=state.admit_ms,
                at_ms=at_ms,
                stored=state.model_state,
                model=self.step_model,
                commit_delay_ms=self.config.step_commit_delay // timedelta(milliseconds=1),
                seen=state.applied,
                late=state.late_records,
                # Nothing since admission pruned yet. Until 6 Dec (late) this read the
                # watermark, which a discharge far ahead of the data moves: the final score
                # then kept a stale vector that the last observation's score had rebuilt.
                history_complete=state.holds_since_admission(self.config.window, at_ms),
            )
        state.mark_scored({"at_ms": at_ms}, at=at)
        return Snapshot(
            state.patient_id,
            at,
            window,
            news2,
            event_ids,
            offsets,
            images,
            latest,
            studies,
            step,
            encode_statics(state.statics),
        )

    def finish(
        self,
        states: MutableMapping[str, PatientState],
        snapshot: Snapshot,
        answer: ModelAnswer | None,
        degraded_reason: str | None = None,
    ) -> tuple[ScoreRecord, list[AlertDecision]]:
        """Build the score record and apply the alert policy for one snapshot.

        Args:
            states: Patient states; the patient's alert state is updated in place.
            snapshot: What was scored.
            answer: The model's answer, or None in degraded mode.
            degraded_reason: Why there is no answer (for example ``circuit_open``).

        Returns:
            The score and the alert decisions (turn them into records with
            :meth:`alert_records` once their explanation is known).
        """
        now = self.clock()
        state = states[snapshot.patient_id]
        risk = None if answer is None else float(answer.risk)
        score = ScoreRecord(
            patient_id=snapshot.patient_id,
            event_time=snapshot.at,
            risk=risk,
            news2=_news2_record(snapshot.news2),
            model=(answer.model or self.config.model_name) if answer is not None else "news2",
            model_version=answer.model_version if answer is not None else "rcp-2017",
            degraded=answer is None,
            degraded_reason=None if answer is not None else (degraded_reason or "unavailable"),
            provenance=Provenance(
                code_version=self.config.code_version,
                event_ids=snapshot.event_ids,
                offsets=snapshot.offsets,
            ),
            processing_time=now,
            ood=_ood_record(answer),
            imaging=snapshot.studies,
        )
        state.last_score = {
            "at_ms": int(snapshot.at.timestamp() * 1000),
            "risk": risk,
            "news2": snapshot.news2.total,
            "degraded": answer is None,
        }
        new_alert, decisions = evaluate(
            state.alert,
            patient_id=snapshot.patient_id,
            at=snapshot.at,
            risk=risk,
            news2=snapshot.news2,
            policy=self.policy_for(state),
            ood=None if answer is None else answer.ood,
        )
        state.alert = new_alert
        if answer is not None and answer.model_state is not None:
            seen = snapshot.step.seen if snapshot.step is not None else state.applied
            state.keep_model_state(answer.model_state, seen)
        return score, decisions

    def policy_for(self, state: PatientState) -> AlertPolicy:
        """The alert policy of the patient's unit (ICU type), else the default."""
        icu = state.statics.get("ICUType")
        unit = None
        if icu is not None and 1 <= icu <= len(IcuType) and float(icu).is_integer():
            unit = IcuType.from_physionet(int(icu)).value
        return UnitPolicies(self.config.policy, self.config.unit_policies).for_unit(unit)

    def audit_records(self, alerts: Sequence[AlertRecord]) -> list[AuditRecord]:
        """The ``audit`` records of a score's alert records (one per state change)."""
        now = self.clock()
        return [
            AuditRecord(
                audit_id=make_audit_id(a.alert_id, a.state, a.event_time, None),
                patient_id=a.patient_id,
                alert_id=a.alert_id,
                event_time=a.event_time,
                actor="policy",
                state=a.state,
                severity=a.severity,
                reason=a.reason,
                detail=a.explanation,
                policy_version=a.policy_version,
                processing_time=now,
            )
            for a in alerts
        ]

    def ingest_ack(
        self,
        states: MutableMapping[str, PatientState],
        key: bytes | None,
        raw: bytes,
        origin: Origin,
    ) -> AckIngest:
        """Validate one ``acks`` record and apply it to the patient's alert state.

        Args:
            states: Patient states by id; the patient's alert state is updated in place.
            key: Kafka key (must equal the payload's ``patient_id``).
            raw: Kafka value.
            origin: Topic, partition and offset of the record.
        """
        now = self.clock()
        try:
            ack = decode_ack(
                raw,
                now=now,
                max_future=self.config.max_future,
                max_bytes=self.config.max_event_bytes,
            )
            if key is not None and key != ack.patient_id.encode():
                raise SchemaError(
                    DeadLetterReason.INVALID_FIELD,
                    "record key does not match patient_id (records must be keyed by patient)",
                )
        except SchemaError as error:
            return AckIngest(None, deadletter=self._dead(error, origin, key, raw, now))
        state = states.get(ack.patient_id)
        if state is None:
            reject = AckRejection(DeadLetterReason.UNKNOWN_ALERT, "no state for the patient")
            return AckIngest(ack.patient_id, deadletter=self._reject(reject, origin, key, raw))
        policy = self.policy_for(state)
        result = apply_ack(
            state.alert, ack, max_snooze_seconds=policy.max_snooze.total_seconds(), now=now
        )
        if result.rejection is not None:
            dead = self._reject(result.rejection, origin, key, raw)
            return AckIngest(ack.patient_id, deadletter=dead)
        state.alert = result.state
        if result.decision is None:
            return AckIngest(ack.patient_id)  # a retry of an action already applied
        return AckIngest(
            ack.patient_id, alert=self._ack_alert(state, ack, result.decision), audit=result.audit
        )

    def expire_snooze(
        self, state: PatientState, at: datetime
    ) -> tuple[list[AlertRecord], list[AuditRecord]]:
        """End the patient's snooze if its time (event time ``at``) has come; returns the
        alert change and its audit record (both empty when nothing expired)."""
        until_s = (state.alert.get("active") or {}).get("snoozed_until_s")
        new_alert, decisions = expire_snooze(state.alert, at=at)
        if not decisions or until_s is None:
            return [], []
        state.alert = new_alert
        at = datetime.fromtimestamp(float(until_s), tz=UTC)  # when it ended, in event time
        last = state.last_score or {}
        risk = last.get("risk")
        alerts = [
            AlertRecord(
                alert_id=d.alert_id,
                patient_id=state.patient_id,
                event_time=at,
                kind=d.kind,
                severity=d.severity,
                state=d.state,
                risk=None if risk is None else float(risk),
                news2=None,
                reason=d.reason,
                explanation=(
                    f"{d.reason}: the snooze ended at {at.strftime('%Y-%m-%d %H:%M')}Z "
                    "(event time); the alert is active again"
                ),
                policy_version=POLICY_VERSION,
                degraded=d.degraded,
                processing_time=self.clock(),
            )
            for d in decisions
        ]
        return alerts, self.audit_records(alerts)

    def _ack_alert(
        self, state: PatientState, ack: AckEvent, decision: AlertDecision
    ) -> AlertRecord:
        last = state.last_score or {}
        risk = last.get("risk")
        return AlertRecord(
            alert_id=decision.alert_id,
            patient_id=ack.patient_id,
            event_time=ack.event_time,
            kind=decision.kind,
            severity=decision.severity,
            state=decision.state,
            risk=None if risk is None else float(risk),
            news2=None,
            reason=decision.reason,
            explanation=f"{decision.reason}: {ack.reason}"[:2000],
            policy_version=POLICY_VERSION,
            degraded=decision.degraded,
            processing_time=self.clock(),
        )

    def _reject(
        self, rejection: AckRejection, origin: Origin, key: bytes | None, raw: bytes
    ) -> DeadLetterRecord:
        error = SchemaError(rejection.reason, rejection.detail)
        return self._dead(error, origin, key, raw, self.clock())

    def alert_records(
        self,
        snapshot: Snapshot,
        score: ScoreRecord,
        decisions: Sequence[AlertDecision],
        contributions: npt.NDArray[np.float32] | None,
    ) -> list[AlertRecord]:
        """Alert records for the decisions of one score, with their explanation.

        Args:
            snapshot: The scored snapshot (recent values for the explanation).
            score: The score the decisions came from.
            decisions: Output of :meth:`finish`.
            contributions: ``[P]`` per-parameter contributions from the explain model,
                or None (the explanation then names the NEWS2 parameters that scored).
        """
        now = self.clock()
        contributing = _top_contributors(contributions, snapshot)
        return [
            AlertRecord(
                alert_id=d.alert_id,
                patient_id=snapshot.patient_id,
                event_time=snapshot.at,
                kind=d.kind,
                severity=d.severity,
                state=d.state,
                risk=score.risk,
                news2=score.news2,
                reason=d.reason,
                explanation=_explain(d, score.risk, snapshot, contributing),
                contributing=contributing,
                policy_version=POLICY_VERSION,
                degraded=d.degraded,
                processing_time=now,
                imaging=snapshot.studies,
            )
            for d in decisions
        ]

    def explanation_records(
        self,
        snapshot: Snapshot,
        alerts: Sequence[AlertRecord],
        contributions: npt.NDArray[np.float32] | None,
        *,
        model: str,
        model_version: str,
    ) -> list[ExplanationRecord]:
        """The explain model's account of a score's alerts that open or escalate (none
        when it gave no contributions)."""
        if contributions is None or contributions.size != len(SERIES_CODES):
            return []
        now = self.clock()
        contributing = _top_contributors(contributions, snapshot)
        values = {code: float(contributions[SERIES_CODES.index(code)]) for code in contributing}
        shown = []
        latest = snapshot.latest
        for code in contributing:
            if code in latest:
                value, at = latest[code]
                shown.append(f"{code} {value:g} at {at.strftime('%H:%M')}Z ({values[code]:+.2f})")
            else:
                shown.append(f"{code} ({values[code]:+.2f})")
        text = "inputs that raised the model risk (change of log-odds when hidden): " + (
            ", ".join(shown) if shown else "none"
        )
        return [
            ExplanationRecord(
                alert_id=alert.alert_id,
                alert_state=alert.state,
                patient_id=alert.patient_id,
                event_time=alert.event_time,
                model=model,
                model_version=model_version,
                contributing=contributing,
                contributions=values,
                explanation=text[:2000],
                processing_time=now,
            )
            for alert in alerts
            if alert.state in EXPLAINED_STATES and not alert.degraded
        ]

    def _dead(
        self, error: SchemaError, origin: Origin, key: bytes | None, raw: bytes, now: datetime
    ) -> DeadLetterRecord:
        return dead_letter(
            error,
            topic=origin.topic,
            partition=origin.partition,
            offset=origin.offset,
            key=key,
            raw=raw,
            received_time=now,
        )


def _ood_record(answer: ModelAnswer | None) -> OodRecord | None:
    if answer is None or answer.ood is None:
        return None
    verdict = answer.ood
    threshold = verdict.threshold if np.isfinite(verdict.threshold) else None
    if not np.isfinite(verdict.distance):
        return None
    channels = tuple(c for c in ("representation", "input") if c in verdict.channels)
    return OodRecord(
        flagged=verdict.flagged, distance=verdict.distance, threshold=threshold, channels=channels
    )


def _news2_record(result: News2Result) -> News2Score:
    return News2Score(
        total=result.total,
        band=result.band.value,
        parameters={p: s for p, s in result.sub_scores.items() if s is not None},
        missing=result.missing,
    )


def _top_contributors(
    contributions: npt.NDArray[np.float32] | None, snapshot: Snapshot, k: int = 3
) -> tuple[str, ...]:
    if contributions is not None and contributions.size == len(SERIES_CODES):
        # Inputs that pushed the risk up, largest first.
        order = np.argsort(-contributions, kind="stable")
        return tuple(SERIES_CODES[i] for i in order[:k] if contributions[i] > 0)
    # No model explanation: the NEWS2 parameters that scored highest.
    scored = sorted(((s, p.value) for p, s in snapshot.news2.sub_scores.items() if s), reverse=True)
    return tuple(name for _, name in scored[:k])


def _explain(
    decision: AlertDecision, risk: float | None, snapshot: Snapshot, contributing: Sequence[str]
) -> str:
    parts = [decision.detail] if decision.detail else []
    if risk is not None:
        parts.append(f"model risk {risk:.2f}")
    parts.append(f"NEWS2 {snapshot.news2.total} ({snapshot.news2.band.value})")
    shown = []
    latest = snapshot.latest
    for code in contributing:
        if code in latest:
            value, at = latest[code]
            shown.append(f"{code} {value:g} at {at.strftime('%H:%M')}Z")
        else:
            shown.append(code)
    if shown:
        parts.append("top inputs: " + ", ".join(shown))
    return (f"{decision.reason}: " + "; ".join(parts))[:2000]
