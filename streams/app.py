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
changelog-backed; its keys are partitioned exactly like the input topics
(``use_partitioner``), so a restarted or rebalanced worker restores the right states.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import faust
import redis.asyncio as aioredis

from streams.adapters.emitter import Emitter
from streams.adapters.faust_recovery import SeekFirstTableManager
from streams.adapters.image_source import HeatmapStore, ImageSource
from streams.adapters.input_order import OrderedIngest
from streams.adapters.lag import ConsumerLagMonitor
from streams.adapters.models import ModelCalls
from streams.adapters.redis_store import RedisStore
from streams.adapters.security import (
    faust_credentials,
    redis_options,
    triton_client_options,
    triton_headers,
)
from streams.adapters.state_table import DurableTable, StateTable
from streams.adapters.triton import TritonScorer
from streams.core.alerting import AlertDecision, AlertPolicy
from streams.core.breaker import CircuitBreaker
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
    ProcessorConfig,
    Snapshot,
)
from streams.core.state import Origin, Outcome, PatientState
from streams.metrics import UNKNOWN_ICU_TYPE, WorkerMetrics, metrics
from streams.settings import WorkerSettings
from vigil import __version__
from vigil.errors import SchemaError

__all__ = ["VigilWorker", "create_worker"]

log = logging.getLogger(__name__)

_INPUT_ORDER = (TopicKind.VITALS, TopicKind.LABS, TopicKind.IMAGING, TopicKind.ADT)
_TIE_ORDER = (TopicKind.ADT, TopicKind.VITALS, TopicKind.LABS, TopicKind.IMAGING)
"""At equal event time: an admission before the observations taken at that moment."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


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
        if not stepper.breaker.allow():
            return
        self.processor.step_model = await self.models.step_model_id()
        if self.processor.step_model is not None:
            # Its own OOD verdict: the whole window is then only built for explanations.
            self.processor.window_on_demand = self.models.step_model_judges_ood
            log.info("scoring with the step model %s", self.processor.step_model)

    async def process_batch(self, events: Sequence[Any]) -> None:
        """Process a batch of input records (see the module docstring).

        Nothing is written before every model answer of the batch is in; then the outputs
        are sent and, once Kafka has them all, each changed state is written once; this
        returns when those changelog records are in Kafka too. The caller acknowledges the
        batch afterwards, so a committed offset never runs ahead of the outputs and states
        it produced. If anything fails, the batch's state changes are dropped from memory
        (the table still holds the states as before the batch) and the error propagates.
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
                await emitter.confirm()
                stage.done("confirm")
                # Outputs must be in Kafka before the states that say they were produced:
                # a worker stopped in between then re-reads the batch rather than losing them.
                changelog = self.states.write(touched.values())
                await asyncio.gather(*changelog)
                stage.done("changelog")
                self.metrics.batch_records.observe(len(events))
                self._explain_after()
            except BaseException:
                self.explain_later.clear()
                self.states.forget(touched)
                emitter.abandon()
                raise

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

    def _explain_after(self) -> None:
        """Queue the batch's alerts for the explain model (explanations topic)."""
        if not self.explain_later:
            return
        for item in self.explain_later:
            if len(self.explain_queue) >= _EXPLAIN_QUEUE_MAX:
                self.metrics.explanations.labels("dropped").inc()
                continue
            self.explain_queue.append(item)
        self.explain_later.clear()
        self.explain_wakeup.set()
        if self.explain_task is None or self.explain_task.done():
            self.explain_task = asyncio.ensure_future(self._explain_loop())

    async def _explain_loop(self) -> None:
        """Explain queued alerts, a few at a time, and publish each explanation; an alert
        already went out explained by its reason and NEWS2, so a failure here loses
        only the model's contributions (counted, logged)."""
        explainer = self.models.explainer
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
            for state in list(self.states.states()):
                pid = state.patient_id
                if owned is not None and self.tables.partition_of(pid) not in owned:
                    continue  # a standby copy: its owner decides
                clock = self.clock_of(pid)
                # The two fields expiry reads, without encoding the state.
                fields = {"discharged_ms": state.discharged_ms, "watermark_ms": state.watermark_ms}
                if clock is None or not PatientState.removable(fields, clock, silence, lateness):
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


def create_worker(
    settings: WorkerSettings,
    *,
    clock: Callable[[], datetime] = _utcnow,
    worker_metrics: WorkerMetrics = metrics,
) -> VigilWorker:
    """Build the Faust app, its topics, table and agent from settings.

    Args:
        settings: Worker settings.
        clock: Wall clock (timezone-aware), injected for tests.
        worker_metrics: Metrics to update.
    """
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=faust_credentials(settings),
        store=settings.store,
        datadir=settings.data_dir,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_disable_leader=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        consumer_group_instance_id=settings.group_instance_id,
        broker_session_timeout=settings.kafka_session_timeout_seconds,
        table_cleanup_interval=30.0,
        producer_acks=-1,
        # A batch hands the producer hundreds of records at once: larger producer batches
        # (Faust's default is 16 KiB, about ten scores) mean fewer, larger produce requests.
        producer_max_batch_size=settings.kafka_producer_batch_bytes,
        producer_linger_ms=settings.kafka_producer_linger_ms,
        TableManager=SeekFirstTableManager,
    )
    kinds = {settings.topic(kind.value): kind for kind in _INPUT_ORDER}
    inputs = {
        kind: app.topic(
            settings.topic(kind.value),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            acks=True,
        )
        for kind in _INPUT_ORDER
    }
    outputs = {
        kind: app.topic(settings.topic(kind.value), key_serializer="raw", value_serializer="raw")
        for kind in (
            TopicKind.SCORES,
            TopicKind.ALERTS,
            TopicKind.DEADLETTER,
            TopicKind.AUDIT,
            TopicKind.FINDINGS,
            TopicKind.EXPLANATIONS,
        )
    }
    acks_topic = app.topic(
        settings.topic(TopicKind.ACKS.value),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        acks=True,
    )
    table = DurableTable(
        app,
        name="patients",
        beacon=app.tables.beacon,
        default=None,
        # Values are encoded states (bytes, streams/core/state_codec.py): Faust derives the
        # changelog's value serializer from value_type, so bytes makes it "raw" both ways.
        value_type=bytes,
        partitions=settings.topic_partitions,
        schema=faust.Schema(
            key_type=str, value_type=None, key_serializer="raw", value_serializer="raw"
        ),
        use_partitioner=True,
    )
    app.tables.add(table)
    config = ProcessorConfig(
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
        code_version=__version__,
        model_name=settings.triton_model,
    )

    def triton(model: str, *, timeout_seconds: float, batch_max_size: int) -> TritonScorer:
        # One breaker per model: a failing model must not stop the others.
        return TritonScorer(
            settings.triton_url,
            model,
            timeout_seconds=timeout_seconds,
            retries=settings.triton_retries,
            breaker=CircuitBreaker(
                settings.breaker_failures, settings.breaker_reset_seconds, time.monotonic
            ),
            batch_max_size=batch_max_size,
            batch_max_wait_ms=settings.batch_max_wait_ms,
            metrics=worker_metrics,
            client_options=triton_client_options(settings),
            headers=triton_headers(settings),
        )

    timeout = settings.triton_timeout_seconds
    scorer = triton(
        settings.triton_model, timeout_seconds=timeout, batch_max_size=settings.batch_max_size
    )
    explainer = triton(
        settings.triton_explain_model, timeout_seconds=max(timeout, 5.0), batch_max_size=8
    )
    stepper = (
        triton(
            settings.triton_step_model,
            timeout_seconds=timeout,
            batch_max_size=settings.step_batch_max_size,
        )
        if settings.triton_step_model
        else None
    )
    ood_scorer = (
        triton(
            settings.triton_ood_model,
            timeout_seconds=timeout,
            batch_max_size=settings.batch_max_size,
        )
        if settings.triton_ood_model
        else None
    )
    imager = (
        triton(settings.triton_imaging_model, timeout_seconds=max(timeout, 5.0), batch_max_size=16)
        if settings.triton_imaging_model
        else None
    )
    redis_client = aioredis.Redis.from_url(
        settings.redis_url,
        **redis_options(settings),
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
    )
    store = RedisStore(
        redis_client,
        prefix=settings.topic_prefix,
        ttl_seconds=settings.redis_ttl_seconds,
        metrics=worker_metrics,
    )
    redis_address = urlsplit(settings.redis_url).netloc.rpartition("@")[2]
    images = ImageSource(
        file_root=settings.imaging_file_root,
        max_bytes=settings.imaging_max_bytes,
        redis=redis_client,
        redis_address=redis_address,
        http_hosts=settings.imaging_http_hosts,
        timeout_seconds=settings.imaging_fetch_timeout_seconds,
    )
    worker = VigilWorker(
        app=app,
        settings=settings,
        processor=Processor(config, clock),
        models=ModelCalls(
            scorer=scorer,
            stepper=stepper,
            explainer=explainer,
            ood_scorer=ood_scorer,
            imager=imager,
            images=images,
            heatmaps=HeatmapStore(settings.artifact_dir),
            metrics=worker_metrics,
        ),
        store=store,
        metrics=worker_metrics,
        tables=table,
        kinds=kinds,
        outputs=outputs,
    )
    ordered = OrderedIngest(
        app,
        kinds_by_topic={topic: kind.value for topic, kind in kinds.items()},
        kind_order=tuple(kind.value for kind in _TIE_ORDER),
        process_batch=worker.process_batch,
        batch_max_records=settings.batch_max_records,
        batch_max_ms=settings.batch_max_ms,
        idle_seconds=settings.input_order_idle_seconds,
        max_held=settings.input_order_max_held,
        event_time_order=settings.input_event_time_order,
    )
    worker.ordered = ordered

    async def ingest(stream: Any) -> AsyncIterator[int]:
        # Records go to the ordered ingest, which applies them in batches (in event-time
        # order across the input topics unless switched off) and acknowledges each only
        # after its batch is processed and its outputs and states are in Kafka: Faust
        # would otherwise acknowledge a record whose processing was cancelled (worker
        # stopping). Yielding the offset marks the record as taken for Faust's test context.
        stream.enable_acks = False
        async for event in stream.events():
            await ordered.offer(stream, event)
            yield event.message.offset

    for kind, topic in inputs.items():
        app.agent(topic, name=f"vigil-{kind.value}")(ingest)

    @app.task  # type: ignore[untyped-decorator]
    async def release_held_inputs() -> None:
        await ordered.run()

    async def acknowledge_alerts(stream: Any) -> AsyncIterator[int]:
        stream.enable_acks = False
        async for event in stream.events():
            await worker.process_ack(event)
            await stream.ack(event)
            yield event.message.offset

    app.agent(acks_topic, name="vigil-acks")(acknowledge_alerts)

    worker_metrics.prime(
        [settings.triton_model, "news2", *([stepper.model] if stepper is not None else [])]
    )
    lag_monitor = ConsumerLagMonitor(settings, worker_metrics.consumer_lag)

    @app.task  # type: ignore[untyped-decorator]
    async def start_adapters() -> None:
        for model in worker.models.scorers():
            await model.start()
        await worker.use_step_model()
        await store.start()
        worker.ready.set()
        await asyncio.to_thread(lag_monitor.update)  # then every 15 s

    @app.timer(interval=15.0)  # type: ignore[untyped-decorator]
    async def measure_consumer_lag() -> None:
        await asyncio.to_thread(lag_monitor.update)  # blocking admin calls

    @app.timer(interval=30.0)  # type: ignore[untyped-decorator]
    async def expire_states() -> None:
        ended = await worker.expire_snoozes()
        if ended:
            log.info("ended %d snoozes", ended)
        removed = await worker.expire()
        if removed:
            log.info("expired %d patient states", removed)
        # Every state this worker holds (with several workers, standby copies too).
        sizes = worker.states.encoded_sizes()
        worker_metrics.active_patients.set(len(sizes))
        for size in sizes:
            worker_metrics.state_size.observe(size)

    return worker
