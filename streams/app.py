"""The Faust worker: a thin adapter between Kafka, the pure core, Triton and Redis.

One agent per input topic (the topics are co-partitioned: every record is keyed by patient
id, so a patient's records land in the same partition number everywhere) hands its records
to :class:`~streams.adapters.input_order.OrderedIngest`, which releases them in event-time
order across the topics of each partition number and gathers them into batches. A batch
is the unit of work (:meth:`VigilWorker.process_batch`): decode and apply every record to
its patient's state (:class:`~streams.core.pipeline.Processor`), score every patient that
became due in one go on Triton (:mod:`streams.adapters.models`), run the alert policy, send
every output without waiting (:mod:`streams.adapters.emitter`), confirm them together,
write each changed state once (:mod:`streams.adapters.state_table`), and only then let the
batch be acknowledged. Batches never overlap, and acknowledgements, snooze expiry and state
expiry take the same lock, so each patient's state has one writer at a time. The table is
changelog-backed, each state in its patient's input partition
(:meth:`~streams.adapters.state_table.DurableTable.partition_of`), so a restarted or
rebalanced worker restores the right states. :func:`streams.wiring.create_worker` builds
it from settings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import faust

from streams.adapters.emitter import Emitter
from streams.adapters.input_order import OrderedIngest
from streams.adapters.models import ModelCalls
from streams.adapters.redis_store import RedisStore
from streams.adapters.state_table import StateTable
from streams.core.alerting import AlertDecision
from streams.core.breaker import BreakerState
from streams.core.events import (
    AlertRecord,
    DeadLetterRecord,
    FindingRecord,
    IcuType,
    ImagingEvent,
    ScoreRecord,
    TopicKind,
)
from streams.core.pipeline import (
    EXPLAINED_STATES,
    IngestResult,
    Processor,
    Snapshot,
)
from streams.core.state import Origin, Outcome, PatientState
from streams.metrics import UNKNOWN_ICU_TYPE, WorkerMetrics
from streams.settings import WorkerSettings
from vigil.errors import SchemaError

__all__ = ["VigilWorker"]

log = logging.getLogger(__name__)


@dataclass
class _Scored:
    """One snapshot of a batch on its way out."""

    snapshot: Snapshot
    started: float
    score: ScoreRecord
    decisions: list[AlertDecision]
    explained: bool


@dataclass
class VigilWorker:
    """The Faust app with its topics, table, processor and adapters."""

    app: faust.App
    settings: WorkerSettings
    processor: Processor
    models: ModelCalls
    store: RedisStore
    metrics: WorkerMetrics
    tables: Any
    kinds: dict[str, TopicKind]
    outputs: dict[TopicKind, Any]
    stream_clock_ms: dict[tuple[str, int], int] = field(default_factory=dict)
    """Latest event time applied per (input kind, partition)."""
    partition_of: dict[str, int] = field(default_factory=dict)
    """Input partition of each patient seen by this worker (for its expiry clock)."""
    ordered: OrderedIngest | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held by a batch, an acknowledgement and the expiry sweeps: one writer at a time."""
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    states: StateTable = field(init=False)
    explain_later: list[tuple[Snapshot, list[AlertRecord]]] = field(default_factory=list)
    """This batch's alerts for the explain model (queued once the batch is in Kafka)."""
    durable: asyncio.Future[None] | None = None
    """The last batch's writes on their way to Kafka (:meth:`process_batch`)."""
    explain_queue: deque[tuple[Snapshot, list[AlertRecord]]] = field(default_factory=deque)
    explain_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    explain_task: asyncio.Future[None] | None = None

    def __post_init__(self) -> None:
        self.states = StateTable(self.tables)

    @property
    def emitter(self) -> Emitter:
        """Sends outputs (built on use: tests swap :attr:`outputs` for channels)."""
        return Emitter(self.outputs, self.store, self.metrics, producer=self.app.producer)

    async def drain(self) -> None:
        """Process every input record taken so far (held for ordering or queued)."""
        if self.ordered is not None:
            await self.ordered.drain()

    def kind_of(self, topic: str) -> TopicKind:
        """Topic kind of an input topic name."""
        return self.kinds[topic]

    async def use_step_model(self) -> None:
        """Score with the step model once its version is known (read from Triton; until
        then, and when it is not configured, the window model scores)."""
        stepper = self.models.stepper
        if stepper is None or self.processor.step_model is not None:
            return
        if stepper.breaker.state is BreakerState.OPEN:
            return  # Triton is down: try again once the breaker lets calls through
        self.processor.step_model = await self.models.step_model_id()
        if self.processor.step_model is not None:
            # Its own OOD verdict: the whole window is then only built for explanations.
            self.processor.window_on_demand = self.models.step_model_judges_ood
            log.info("scoring with the step model %s", self.processor.step_model)

    async def process_batch(self, events: Sequence[Any]) -> Awaitable[None]:
        """Process a batch of input records (see the module docstring); returns its
        durability, which completes once the batch's outputs and states are in Kafka.

        Nothing is sent before every model answer of the batch is in; then the outputs
        are sent, and each changed state is encoded and stored at once, so the next
        batch may be applied meanwhile. The durability then waits for the previous
        batch's, confirms this batch's outputs, and only then sends its changelog
        records and waits for them. The caller acknowledges the batch once it completes,
        so a committed offset never runs ahead of the outputs and states it produced. If
        anything fails, the batch's state changes are dropped from memory and the error
        propagates (from here, or from the durability: a failed batch fails every batch
        after it, and the worker stops).
        """
        await self.ready.wait()  # Triton and Redis clients are up
        await self.use_step_model()
        async with self.lock:
            touched: dict[str, PatientState] = {}
            emitter = self.emitter
            stage = _StageClock(self.metrics)
            try:
                await self._process_batch(
                    events, _BatchStates(self.states, touched), emitter, stage
                )
                staged = self.states.stage(touched.values())
            except BaseException:
                self.explain_later.clear()
                self.states.forget(touched)
                emitter.abandon()
                raise
            self.metrics.batch_records.observe(len(events))
            explain, self.explain_later = self.explain_later, []
            self.durable = asyncio.ensure_future(
                self._make_durable(self.durable, emitter, staged, touched, explain, stage)
            )
            return self.durable

    async def _make_durable(
        self,
        previous: asyncio.Future[None] | None,
        emitter: Emitter,
        staged: list[tuple[str, bytes]],
        touched: dict[str, PatientState],
        explain: list[tuple[Snapshot, list[AlertRecord]]],
        stage: _StageClock,
    ) -> None:
        """A batch's writes, in the order that makes the guarantee: after the previous
        batch's (a patient's changelog records stay in order), its outputs confirmed,
        then its states sent and confirmed."""
        try:
            if previous is not None:
                await asyncio.shield(previous)  # its failure is this batch's too
            await emitter.confirm()
            stage.done("confirm")
            # Outputs must be in Kafka before the states that say they were produced:
            # a worker stopped in between then re-reads the batch rather than losing them.
            await asyncio.gather(*self.states.send(staged))
            stage.done("changelog")
        except BaseException:
            self.states.forget(touched)
            emitter.abandon()
            raise
        self._explain_after(explain)

    async def settled(self) -> None:
        """Wait until the last batch's outputs and states are in Kafka (raises its
        error). Every other writer (acknowledgements, the sweeps) waits for this under
        the lock first, so no state or tombstone overtakes a batch's on the changelog."""
        if self.durable is not None:
            await asyncio.shield(self.durable)

    async def _process_batch(
        self, events: Sequence[Any], states: _BatchStates, emitter: Emitter, stage: _StageClock
    ) -> None:
        snapshots: list[tuple[Snapshot, float]] = []
        dead: list[tuple[DeadLetterRecord, str]] = []
        findings: list[FindingRecord] = []
        for index, event in enumerate(events):
            if index and not index % _YIELD_EVERY:
                await asyncio.sleep(0)  # let timers, heartbeats and the agents run
            result = self._ingest_one(event, states, snapshots, dead)
            if result is not None and result.imaging is not None:
                await self._ingest_study(event, result.imaging, states, snapshots, dead, findings)
        stage.done("apply")
        answers = await self.models.score_all([snapshot for snapshot, _ in snapshots])
        stage.done("model")
        scored: list[_Scored] = []
        for (snapshot, started), (answer, reason) in zip(snapshots, answers, strict=True):
            score, decisions = self.processor.finish(states, snapshot, answer, reason)
            # The explain model costs several deterioration calls: it is asked only when an
            # alert opens or changes on a trusted risk, and after the batch (explanations
            # topic), so it never delays an alert. A deferral (the risk is not trusted)
            # and a resolution are explained by their reason and NEWS2.
            explained = answer is not None and any(d.state in EXPLAINED_STATES for d in decisions)
            scored.append(_Scored(snapshot, started, score, decisions, explained))
        for record, kind in dead:
            await emitter.dead_letter(record, kind)
        for finding in findings:
            await emitter.finding(finding)
        for item in scored:
            alerts = self.processor.alert_records(item.snapshot, item.score, item.decisions, None)
            if item.explained:
                self.explain_later.append((item.snapshot, alerts))
            await emitter.score(item.score)
            await emitter.alerts(alerts, _icu_type(states.get(item.score.patient_id)))
            await emitter.audits(self.processor.audit_records(alerts))
            self.metrics.score_latency.observe(time.perf_counter() - item.started)
        stage.done("send")

    def _explain_after(self, items: list[tuple[Snapshot, list[AlertRecord]]]) -> None:
        """Queue a batch's alerts for the explain model (explanations topic), once the
        batch is in Kafka."""
        if not items:
            return
        for item in items:
            if len(self.explain_queue) >= _EXPLAIN_QUEUE_MAX:
                self.metrics.explanations.labels("dropped").inc()
                continue
            self.explain_queue.append(item)
        self.explain_wakeup.set()
        if self.explain_task is None or self.explain_task.done():
            self.explain_task = asyncio.ensure_future(self._explain_loop())

    async def _explain_loop(self) -> None:
        """Explain queued alerts, a few at a time, and publish each explanation; an alert
        already went out explained by its reason and NEWS2, so a failure here loses
        only the model's contributions (counted, logged)."""
        while True:
            if not self.explain_queue:
                self.explain_wakeup.clear()
                await self.explain_wakeup.wait()
                continue
            items = [self.explain_queue.popleft() for _ in range(min(8, len(self.explain_queue)))]
            emitter = self.emitter
            try:
                found = await self.models.explain_all([snapshot for snapshot, _ in items])
                count = 0
                for (snapshot, alerts), contributions in zip(items, found, strict=True):
                    if contributions is None:
                        self.metrics.explanations.labels("unavailable").inc()
                        continue
                    explainer = self.models.explainer_for(snapshot)
                    for record in self.processor.explanation_records(
                        snapshot,
                        alerts,
                        contributions,
                        model=explainer.model,
                        model_version=explainer.model_version,
                    ):
                        await emitter.explanation(record)
                        count += 1
                await emitter.confirm()
                self.metrics.explanations.labels("sent").inc(count)
            except Exception:
                emitter.abandon()
                self.metrics.explanations.labels("failed").inc(len(items))
                log.exception("explanations not published")

    async def explained(self) -> None:
        """Wait until every queued explanation went out (tests, shutdown)."""
        while self.explain_queue or (
            self.explain_task is not None
            and not self.explain_task.done()
            and self.explain_wakeup.is_set()
        ):
            await asyncio.sleep(0.05)

    async def process_ack(self, event: Any) -> None:
        """Apply one ``acks`` record (acknowledge, snooze, escalate, resolve) to the alert
        it names; publish the alert change and its audit record, or dead-letter the
        action with the reason. Same write order as :meth:`process_batch`."""
        await self.ready.wait()
        key, value, origin = _record(event)
        async with self.lock:
            await self.settled()
            touched: dict[str, PatientState] = {}
            emitter = self.emitter
            try:
                result = self.processor.ingest_ack(
                    _BatchStates(self.states, touched), key, value, origin
                )
                if result.deadletter is not None:
                    await emitter.dead_letter(result.deadletter, TopicKind.ACKS.value)
                else:
                    self.metrics.events_in.labels(TopicKind.ACKS.value, "accepted").inc()
                if result.alert is not None:
                    await emitter.alert_update(result.alert)
                if result.audit is not None:
                    await emitter.audits([result.audit])
                await emitter.confirm()
                await asyncio.gather(*self.states.write(touched.values()))
            except BaseException:
                self.states.forget(touched)
                emitter.abandon()
                raise

    def _ingest_one(
        self,
        event: Any,
        states: _BatchStates,
        snapshots: list[tuple[Snapshot, float]],
        dead: list[tuple[DeadLetterRecord, str]],
    ) -> IngestResult | None:
        kind = self.kind_of(event.message.topic)
        key, value, origin = _record(event)
        result = self.processor.ingest(states, kind, key, value, origin)
        if result.deadletter is not None:
            dead.append((result.deadletter, kind.value))
            return None
        if result.imaging is not None:
            return result  # counted once the study is read (_ingest_study)
        outcome = result.outcome or Outcome.ACCEPTED
        self.metrics.events_in.labels(kind.value, outcome.value).inc()
        for code in result.artifacts:
            self.metrics.observations_artifact.labels(code).inc()
        if result.patient_id is not None and outcome is Outcome.ACCEPTED:
            state = states[result.patient_id]
            event_ms = state.stream_watermarks.get(kind.value)
            if event_ms is not None:
                lag = time.time() - event_ms / 1000
                self.metrics.event_lag.labels(kind.value).observe(max(lag, 0.0))
                mark = (kind.value, origin.partition)
                self.stream_clock_ms[mark] = max(self.stream_clock_ms.get(mark, event_ms), event_ms)
                self.partition_of[result.patient_id] = origin.partition
        if result.snapshot is not None:
            snapshots.append((result.snapshot, time.perf_counter()))
        return result

    async def _ingest_study(
        self,
        event: Any,
        study: ImagingEvent,
        states: _BatchStates,
        snapshots: list[tuple[Snapshot, float]],
        dead: list[tuple[DeadLetterRecord, str]],
        findings: list[FindingRecord],
    ) -> None:
        """Read and analyse one imaging study, then apply it to the patient's state: a
        finding for ``findings`` and a re-score, or the event to dead-letter with the
        reason (unavailable or unreadable pixels, imaging model failure)."""
        key, value, origin = _record(event)
        kind = TopicKind.IMAGING.value
        try:
            analysis = await self.models.analyse(study) if self.models.imager is not None else None
        except SchemaError as error:
            dead.append((self.processor.dead_letter(error, origin, key, value), kind))
            return
        applied = self.processor.add_study(
            states,
            study,
            analysis,
            origin,
            imaging_model=self.settings.triton_imaging_model or "imaging",
        )
        self.metrics.events_in.labels(kind, applied.outcome.value).inc()
        if applied.finding is not None:
            findings.append(applied.finding)
        if applied.snapshot is not None:
            snapshots.append((applied.snapshot, time.perf_counter()))

    @property
    def expiry_clock(self) -> datetime | None:
        """Event time that every input stream has reached on every partition (the slowest
        stream partition's clock).

        Judged on it, a stream or a partition running ahead (a replay's ADT topic, say)
        never expires patients whose records are still on their way.
        """
        if not self.stream_clock_ms:
            return None
        return datetime.fromtimestamp(min(self.stream_clock_ms.values()) / 1000, tz=UTC)

    def clock_of(self, patient_id: str) -> datetime | None:
        """Event time that every input stream of the patient's partition has reached: the
        records of one partition number are applied in event-time order
        (:mod:`streams.core.ordering`), while partitions go at their own pace, so a
        worker-wide clock would call a patient on a slow partition silent. Falls back to
        :attr:`expiry_clock` for a patient this worker has not seen a record of."""
        partition = self.partition_of.get(patient_id)
        marks = [ms for (_, p), ms in self.stream_clock_ms.items() if p == partition]
        if partition is None or not marks:
            return self.expiry_clock
        return datetime.fromtimestamp(min(marks) / 1000, tz=UTC)

    async def expire_snoozes(self) -> int:
        """End the snoozes whose time has come on the event-time clock (see
        :attr:`expiry_clock`), publishing each alert change and its audit record; returns
        how many ended. Same write order as :meth:`process_batch`."""
        clock = self.expiry_clock
        if clock is None:
            return 0
        async with self.lock:
            await self.settled()
            touched: dict[str, PatientState] = {}
            emitter = self.emitter
            ended = 0
            owned = self._owned_partitions()
            try:
                for state in list(self.states.states()):
                    if (
                        owned is not None
                        and self.tables.partition_of(state.patient_id) not in owned
                    ):
                        continue  # a standby copy: its owner ends the snooze
                    until = (state.alert.get("active") or {}).get("snoozed_until_s")
                    if until is None or float(until) > clock.timestamp():
                        continue
                    alerts, audits = self.processor.expire_snooze(state, clock)
                    if not alerts:
                        continue
                    touched[state.patient_id] = state
                    for alert in alerts:
                        await emitter.alert_update(alert)
                    await emitter.audits(audits)
                    ended += len(alerts)
                await emitter.confirm()
                await asyncio.gather(*self.states.write(touched.values()))
            except BaseException:
                self.states.forget(touched)
                emitter.abandon()
                raise
        return ended

    def _owned_partitions(self) -> set[int] | None:
        """Input partition numbers assigned to this worker (None without a running
        consumer, as in agent tests: every state is then this worker's)."""
        try:
            assignment = self.app.consumer.assignment()
        except Exception:  # noqa: BLE001 - no consumer (agent test context)
            return None
        return {tp.partition for tp in assignment if tp.topic in self.kinds}

    async def expire(self) -> int:
        """Drop states discharged or silent for too long (event time, on the clock of the
        patient's partition: :meth:`clock_of`); returns how many."""
        if self.expiry_clock is None:
            return 0
        removed = 0
        silence, lateness = self.settings.silence_expiry, self.settings.lateness
        deletions: list[Awaitable[Any]] = []
        owned = self._owned_partitions()
        async with self.lock:
            await self.settled()
            for state in list(self.states.states()):
                pid = state.patient_id
                if owned is not None and self.tables.partition_of(pid) not in owned:
                    continue  # a standby copy: its owner decides
                clock = self.clock_of(pid)
                if clock is None or not state.may_drop(clock, silence, lateness):
                    continue
                deletions.append(self.states.delete(pid))
                self.partition_of.pop(pid, None)
                removed += 1
            await asyncio.gather(*deletions)
            self.states.prune()
        return removed


_YIELD_EVERY = 256
"""Records applied between two yields to the event loop within a batch."""
_EXPLAIN_QUEUE_MAX = 10_000
"""Alerts waiting for the explain model beyond which new ones go unexplained (counted)."""


def _record(event: Any) -> tuple[bytes | None, bytes, Origin]:
    """Key, value and Kafka position of a Faust event."""
    message = event.message
    key = message.key if isinstance(message.key, bytes | None) else str(message.key).encode()
    value = event.value if isinstance(event.value, bytes) else bytes(event.value)
    return key, value, Origin(message.topic, message.partition, message.offset)


def _icu_type(state: PatientState | None) -> str:
    """The bounded ICU-type label of a patient's metrics (never the patient)."""
    number = None if state is None else state.statics.get("ICUType")
    if number is None:
        return UNKNOWN_ICU_TYPE
    try:
        return IcuType.from_physionet(int(number)).value
    except ValueError:
        return UNKNOWN_ICU_TYPE


class _StageClock:
    """Times the stages of one batch into ``vigil_batch_stage_seconds``."""

    def __init__(self, worker_metrics: WorkerMetrics) -> None:
        self._metrics = worker_metrics
        self._last = time.perf_counter()

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self._metrics.batch_stage.labels(stage).observe(now - self._last)
        self._last = now


class _BatchStates(dict[str, PatientState]):
    """The states one batch reads and changes: loaded from the :class:`StateTable` on first
    use; every state the batch sees lands in ``touched``, to be written once at its end."""

    def __init__(self, table: StateTable, touched: dict[str, PatientState]) -> None:
        super().__init__()
        self._table = table
        self._touched = touched

    def get(self, key: str, default: Any = None) -> Any:
        state = self._touched.get(key)
        if state is not None:
            return state
        state = self._table.get(key)
        if state is None:
            return default
        self._touched[key] = state
        return state

    def __getitem__(self, key: str) -> PatientState:
        state: PatientState | None = self.get(key)
        if state is None:
            raise KeyError(key)
        return state

    def __setitem__(self, key: str, value: PatientState) -> None:
        self._touched[key] = value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None
