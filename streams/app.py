"""The Faust worker: a thin adapter between Kafka, the pure core, Triton and Redis.

One agent per input topic (the topics are co-partitioned: every record is keyed by patient
id, so a patient's records land in the same partition number everywhere) hands its records
to :class:`~streams.adapters.input_order.OrderedIngest`, which releases them in event-time
order across the topics of each partition number and processes different patients
concurrently, one patient's records in order. Each record is handed to
:class:`~streams.core.pipeline.Processor`, which validates it and applies it to the
patient's state in the ``patients`` table; the patients that become due are scored on
Triton, and concurrent requests share micro-batched gRPC calls. Records of one patient
are also serialised by a per-patient lock (acknowledgements and timers take it too).
The table is changelog-backed; its keys are partitioned exactly like the input topics
(``use_partitioner``), so a restarted or rebalanced worker restores the right states.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit

import faust
import numpy as np
import redis.asyncio as aioredis

from models.imaging_ops import heatmap_png, summarise_segmentation
from streams.adapters.faust_recovery import SeekFirstTableManager
from streams.adapters.image_source import HeatmapStore, ImageSource
from streams.adapters.input_order import InOrderAcks, OrderedIngest
from streams.adapters.lag import ConsumerLagMonitor
from streams.adapters.redis_store import RedisStore
from streams.adapters.security import (
    faust_credentials,
    redis_options,
    triton_client_options,
    triton_headers,
)
from streams.adapters.triton import ImageInput, ModelOutput, TritonScorer
from streams.core.alerting import AlertPolicy, OodVerdict
from streams.core.breaker import CircuitBreaker
from streams.core.events import (
    AlertRecord,
    DeadLetterReason,
    DeadLetterRecord,
    FindingRecord,
    IcuType,
    ImagingEvent,
    ScoreRecord,
    TopicKind,
    make_finding_id,
)
from streams.core.imaging import StudyAnalysis, decode_image, model_input
from streams.core.pipeline import IngestResult, ModelAnswer, Processor, ProcessorConfig, Snapshot
from streams.core.state import Origin, Outcome, PatientState
from streams.metrics import UNKNOWN_ICU_TYPE, WorkerMetrics, metrics
from streams.settings import WorkerSettings
from vigil import __version__
from vigil.errors import CircuitOpenError, InferenceError, SchemaError

__all__ = ["VigilWorker", "create_worker"]

log = logging.getLogger(__name__)

_INPUT_ORDER = (TopicKind.VITALS, TopicKind.LABS, TopicKind.IMAGING, TopicKind.ADT)
_TIE_ORDER = (TopicKind.ADT, TopicKind.VITALS, TopicKind.LABS, TopicKind.IMAGING)
"""At equal event time: an admission before the observations taken at that moment."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class VigilWorker:
    """The Faust app with its topics, table, processor and adapters."""

    app: faust.App
    settings: WorkerSettings
    processor: Processor
    scorer: TritonScorer
    explainer: TritonScorer
    ood_scorer: TritonScorer | None
    imager: TritonScorer | None
    images: ImageSource
    heatmaps: HeatmapStore
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
    locks: dict[bytes, asyncio.Lock] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def drain(self) -> None:
        """Process every input record taken so far (held for ordering or queued)."""
        if self.ordered is not None:
            await self.ordered.drain()

    def kind_of(self, topic: str) -> TopicKind:
        """Topic kind of an input topic name."""
        return self.kinds[topic]

    def _lock_for(self, key: bytes | None) -> asyncio.Lock:
        lock = self.locks.get(key or b"")
        if lock is None:
            lock = asyncio.Lock()
            self.locks[key or b""] = lock
        return lock

    async def process_event(self, event: Any) -> None:
        """Process one input record (the agents' body); see the module docstring.

        Concurrent calls (the agents run several actors) serialise per patient on a lock
        keyed by the record key, in arrival order. Nothing is written before the Triton
        answer is in; then outputs are sent and, once Kafka has them, the state is
        written; this returns when the state's changelog record is in Kafka too. The
        caller acknowledges the record afterwards, so a committed offset never runs
        ahead of the outputs and state it produced.
        """
        await self.ready.wait()  # Triton and Redis clients are up
        key = event.message.key
        async with self._lock_for(key if isinstance(key, bytes) else None):
            states: dict[str, PatientState] = {}
            cache = _TableCache(self.tables, states)
            snapshots: list[tuple[Snapshot, float]] = []
            dead: list[tuple[DeadLetterRecord, str]] = []
            findings: list[FindingRecord] = []
            result = self._ingest_one(event, cache, states, snapshots, dead)
            if result is not None and result.imaging is not None:
                await self._ingest_study(event, result.imaging, cache, snapshots, dead, findings)
            answers = await asyncio.gather(*(self._score(s) for s, _ in snapshots))
            results = []
            for (snapshot, started), (answer, reason) in zip(snapshots, answers, strict=True):
                score, decisions = self.processor.finish(cache, snapshot, answer, reason)
                contributions = None
                # The explain model costs several deterioration calls: ask it only when an
                # alert opens or changes on a trusted risk. A deferral (the risk is not
                # trusted) and a resolution are explained by their reason and NEWS2.
                if answer is not None and any(d.state in _EXPLAINED for d in decisions):
                    contributions = await self._explain(snapshot)
                results.append((snapshot, started, score, decisions, contributions))
            deliveries: list[tuple[TopicKind, Any]] = []
            for record, kind in dead:
                sent = await self.outputs[TopicKind.DEADLETTER].send(
                    key=None, value=record.model_dump_json().encode()
                )
                deliveries.append((TopicKind.DEADLETTER, sent))
                self.metrics.deadletter.labels(record.reason.value).inc()
                self.metrics.events_in.labels(kind, "deadletter").inc()
            for finding in findings:
                sent = await self.outputs[TopicKind.FINDINGS].send(
                    key=finding.patient_id.encode(), value=finding.model_dump_json().encode()
                )
                deliveries.append((TopicKind.FINDINGS, sent))
            for snapshot, started, score, decisions, contributions in results:
                alerts = self.processor.alert_records(snapshot, score, decisions, contributions)
                icu_type = _icu_type(states.get(score.patient_id))
                deliveries.extend(await self._emit(score, alerts, icu_type))
                for audit in self.processor.audit_records(alerts):
                    sent = await self.outputs[TopicKind.AUDIT].send(
                        key=score.patient_id.encode(), value=audit.model_dump_json().encode()
                    )
                    deliveries.append((TopicKind.AUDIT, sent))
                self.metrics.score_latency.observe(time.perf_counter() - started)
            # Outputs must be in Kafka before the state that says they were produced: a
            # worker stopped in between then re-reads the record rather than losing them.
            changelog = await self._deliver_then_write(deliveries, states)
        for written in changelog:
            await written
        if not key or len(self.locks) > 10_000:
            self.locks = {k: v for k, v in self.locks.items() if v.locked()}

    async def process_ack(self, event: Any) -> None:
        """Apply one ``acks`` record (acknowledge, snooze, escalate, resolve) to the alert
        it names, under the patient's lock; publish the alert change and its audit
        record, or dead-letter the action with the reason. Same write order as
        :meth:`process_event`."""
        await self.ready.wait()
        message = event.message
        key = message.key if isinstance(message.key, bytes | None) else str(message.key).encode()
        value = event.value if isinstance(event.value, bytes) else bytes(event.value)
        async with self._lock_for(key):
            states: dict[str, PatientState] = {}
            cache = _TableCache(self.tables, states)
            origin = Origin(message.topic, message.partition, message.offset)
            result = self.processor.ingest_ack(cache, key, value, origin)
            deliveries: list[tuple[TopicKind, Any]] = []
            out_key = result.patient_id.encode() if result.patient_id else None
            if result.deadletter is not None:
                sent = await self.outputs[TopicKind.DEADLETTER].send(
                    key=None, value=result.deadletter.model_dump_json().encode()
                )
                deliveries.append((TopicKind.DEADLETTER, sent))
                self.metrics.deadletter.labels(result.deadletter.reason.value).inc()
                self.metrics.events_in.labels(TopicKind.ACKS.value, "deadletter").inc()
            else:
                self.metrics.events_in.labels(TopicKind.ACKS.value, "accepted").inc()
            if result.alert is not None:
                sent = await self.outputs[TopicKind.ALERTS].send(
                    key=out_key, value=result.alert.model_dump_json().encode()
                )
                deliveries.append((TopicKind.ALERTS, sent))
                self.store.put_alert(result.alert)
            if result.audit is not None:
                sent = await self.outputs[TopicKind.AUDIT].send(
                    key=out_key, value=result.audit.model_dump_json().encode()
                )
                deliveries.append((TopicKind.AUDIT, sent))
            changelog = await self._deliver_then_write(deliveries, states)
        for written in changelog:
            await written

    async def _deliver_then_write(
        self, deliveries: list[tuple[TopicKind, Any]], states: dict[str, PatientState]
    ) -> list[Awaitable[Any]]:
        """Wait until Kafka has every output, then write the states to the table; returns
        the changelog deliveries to await (outside the patient lock)."""
        for topic, delivery in deliveries:
            try:
                await delivery
            except Exception:
                self.metrics.events_out.labels(topic.value, "failed").inc()
                raise
            self.metrics.events_out.labels(topic.value, "delivered").inc()
        return [self.tables.put(pid, state.to_dict()) for pid, state in states.items()]

    def _ingest_one(
        self,
        event: Any,
        cache: _TableCache,
        states: dict[str, PatientState],
        snapshots: list[tuple[Snapshot, float]],
        dead: list[tuple[DeadLetterRecord, str]],
    ) -> IngestResult | None:
        message = event.message
        kind = self.kind_of(message.topic)
        key, value, origin = _record(event)
        result = self.processor.ingest(cache, kind, key, value, origin)
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
        cache: _TableCache,
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
            analysis = await self._analyse(study) if self.imager is not None else None
        except SchemaError as error:
            dead.append((self.processor.dead_letter(error, origin, key, value), kind))
            return
        applied = self.processor.add_study(
            cache,
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

    async def _analyse(self, study: ImagingEvent) -> StudyAnalysis:
        """Fetch, decode and score one study on the imaging model; store its heatmap.

        Raises:
            SchemaError: The pixels are unavailable or unreadable (``ImageError``), or the
                imaging model failed (``inference_failed``).
        """
        imager = self.imager
        if imager is None:  # pragma: no cover - callers check
            raise InferenceError("imaging is not configured")
        data = await self.images.fetch(study)
        image = await asyncio.to_thread(decode_image, data, study.content_type)
        pixels = await asyncio.to_thread(model_input, image)
        try:
            output = await imager.infer({"image": pixels})
            mask = output.extra["mask_probability"]
            probability = float(np.asarray(output.extra["class_probability"]).reshape(-1)[0])
            embedding = np.asarray(output.extra["embedding"], dtype=np.float64).reshape(-1)
            cam = output.extra["cam"]
        except (InferenceError, KeyError) as exc:
            raise SchemaError(
                DeadLetterReason.INFERENCE_FAILED, f"imaging model {imager.model!r}: {exc}"
            ) from exc
        if not (np.isfinite(embedding).all() and np.isfinite(probability)):
            raise SchemaError(DeadLetterReason.INFERENCE_FAILED, "non-finite imaging output")
        threshold = float(imager.parameters.get("mask_threshold", "0.5"))
        count, area = summarise_segmentation(mask, threshold)
        finding_id = make_finding_id(
            study.patient_id, study.study_id, study.event_id, imager.model_version
        )
        try:
            heatmap_uri: str | None = await self.heatmaps.put(finding_id, heatmap_png(cam))
        except OSError as exc:
            # The finding still goes out; its heatmap reference is empty and the log says why.
            log.warning("heatmap not stored: %s", type(exc).__name__)
            heatmap_uri = None
        return StudyAnalysis(
            embedding=tuple(float(x) for x in embedding),
            class_probability=min(max(probability, 0.0), 1.0),
            lesion_count=count,
            lesion_area_fraction=area / float(np.asarray(mask).size),
            mask_threshold=threshold,
            model_version=imager.model_version,
            image_shape=tuple(int(n) for n in image.shape),
            heatmap_uri=heatmap_uri,
        )

    async def _score(self, snapshot: Snapshot) -> tuple[ModelAnswer | None, str | None]:
        images = [ImageInput(age, emb) for age, emb in snapshot.images]
        ood_task = (
            asyncio.ensure_future(self._ood(self.ood_scorer, snapshot.window, images))
            if self.ood_scorer is not None
            else None
        )
        reason = None
        try:
            output: ModelOutput = await self.scorer.score(snapshot.window, images)
        except CircuitOpenError:
            reason = "circuit_open"
        except InferenceError as exc:
            log.warning("scoring failed, degraded to NEWS2: %s", exc)
            reason = "inference_error"
        verdict = await ood_task if ood_task is not None else None
        if reason is not None:
            self.metrics.degraded.set(1)
            return None, reason
        self.metrics.degraded.set(0)
        if verdict is not None and verdict.flagged:
            self.metrics.ood.labels(self.scorer.model).inc()
        return ModelAnswer(output.risk, self.scorer.model_version, ood=verdict), None

    async def _ood(
        self, scorer: TritonScorer, window: Any, images: list[ImageInput]
    ) -> OodVerdict | None:
        """The OOD detector's verdict on the same inputs; None if it cannot answer (the
        score then goes out without one, and the alert policy treats it as in-distribution,
        which ``docs/alerting.md`` states)."""
        try:
            output = await scorer.score(window, images)
            distance = float(output.extra["distance"].reshape(-1)[0])
            flagged = bool(output.extra["ood"].reshape(-1)[0])
            threshold = float(scorer.parameters.get("threshold", "nan"))
        except (CircuitOpenError, InferenceError, KeyError, ValueError) as exc:
            log.warning("OOD verdict unavailable: %s", exc)
            return None
        channels = tuple(
            channel
            for channel in ("representation", "input")
            if f"{channel}_ood" in output.extra
            and bool(output.extra[f"{channel}_ood"].reshape(-1)[0])
        )
        return OodVerdict(
            distance=distance, threshold=threshold, flagged=flagged, channels=channels
        )

    async def _explain(self, snapshot: Snapshot) -> Any:
        """Per-parameter contributions for an alert; None if the explain model fails."""
        images = [ImageInput(age, emb) for age, emb in snapshot.images]
        try:
            output = await self.explainer.score(snapshot.window, images)
        except InferenceError as exc:
            log.warning("explanation unavailable, alert explained by NEWS2: %s", exc)
            return None
        return output.contributions

    async def _emit(
        self, score: ScoreRecord, alerts: list[AlertRecord], icu_type: str
    ) -> list[tuple[TopicKind, Any]]:
        """Send a score and its alerts (and queue them for Redis); returns the delivery
        futures by topic kind."""
        key = score.patient_id.encode()
        sent = await self.outputs[TopicKind.SCORES].send(
            key=key, value=score.model_dump_json().encode()
        )
        deliveries = [(TopicKind.SCORES, sent)]
        self.metrics.scores.labels(score.model, str(score.degraded).lower()).inc()
        if score.risk is not None:
            self.metrics.risk.labels(score.model).observe(score.risk)
        self.store.put_score(score)
        for alert in alerts:
            sent = await self.outputs[TopicKind.ALERTS].send(
                key=key, value=alert.model_dump_json().encode()
            )
            deliveries.append((TopicKind.ALERTS, sent))
            self.metrics.alerts.labels(alert.severity, alert.kind, alert.state, icu_type).inc()
            self.store.put_alert(alert)
        return deliveries

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
        how many ended. Same write order as :meth:`process_event`."""
        clock = self.expiry_clock
        if clock is None:
            return 0
        due = []
        for pid, data in list(self.tables.items()):
            until = ((data or {}).get("alert", {}).get("active") or {}).get("snoozed_until_s")
            if until is not None and float(until) <= clock.timestamp():
                due.append(pid)
        ended = 0
        for pid in due:
            async with self._lock_for(pid.encode()):
                states: dict[str, PatientState] = {}
                state = _TableCache(self.tables, states).get(pid)
                if state is None:
                    continue
                alerts, audits = self.processor.expire_snooze(state, clock)
                if not alerts:
                    continue
                deliveries: list[tuple[TopicKind, Any]] = []
                for alert in alerts:
                    sent = await self.outputs[TopicKind.ALERTS].send(
                        key=pid.encode(), value=alert.model_dump_json().encode()
                    )
                    deliveries.append((TopicKind.ALERTS, sent))
                    self.store.put_alert(alert)
                for audit in audits:
                    sent = await self.outputs[TopicKind.AUDIT].send(
                        key=pid.encode(), value=audit.model_dump_json().encode()
                    )
                    deliveries.append((TopicKind.AUDIT, sent))
                changelog = await self._deliver_then_write(deliveries, states)
                ended += len(alerts)
            for written in changelog:
                await written
        return ended

    async def expire(self) -> int:
        """Drop states discharged or silent for too long (event time, on the clock of the
        patient's partition: :meth:`clock_of`); returns how many."""
        if self.expiry_clock is None:
            return 0
        removed = 0
        silence, lateness = self.settings.silence_expiry, self.settings.lateness

        def removable(pid: str) -> bool:
            data, clock = self.tables.get(pid), self.clock_of(pid)
            return (
                data is not None
                and clock is not None
                and PatientState.removable(data, clock, silence, lateness)
            )

        # Judge every state without its lock first: waiting for each patient's lock in
        # turn (held while its record waits for Triton) made a sweep take minutes.
        for pid in [pid for pid in list(self.tables.keys()) if removable(pid)]:
            async with self._lock_for(pid.encode()):
                if not removable(pid):  # changed while we waited for the lock
                    continue
                del self.tables[pid]
                self.partition_of.pop(pid, None)
                removed += 1
        return removed


_EXPLAINED = frozenset({"open", "escalated"})
"""Alert states whose records carry the explain model's top contributors."""


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


class DurableTable(faust.Table[str, Any]):
    """A Faust table whose writes can be awaited until their changelog record is in Kafka.

    Faust sends changelog records through its producer's send-soon buffer and, before
    committing offsets, flushes that buffer with a wait that gives up after 0.1 s per
    message, so a commit can outrun the changelog and a restarted worker then restores
    a state older than the offsets it resumes from. :meth:`put` hands back the
    changelog record's future instead, so the caller can wait for it before
    acknowledging the input record.
    """

    _sent: Any = None

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        self._sent = super().send_changelog(*args, **kwargs)
        return self._sent

    def put(self, key: str, value: Any) -> Awaitable[Any]:
        """Set ``key`` to ``value``; the result completes once Kafka holds the change."""
        self._sent = None
        self[key] = value
        sent, self._sent = self._sent, None
        if sent is None:  # pragma: no cover - Faust always logs a set to the changelog
            raise RuntimeError("table write produced no changelog record")
        return cast(Awaitable[Any], sent)


class _TableCache(dict[str, PatientState]):
    """States seen by one record: missing patients are loaded from the Faust table on first use;
    new or loaded states land in ``states``, which are written back once it is processed."""

    def __init__(self, table: Any, states: dict[str, PatientState]) -> None:
        super().__init__()
        self._table = table
        self._states = states

    def get(self, key: str, default: Any = None) -> Any:
        if key in self._states:
            return self._states[key]
        data = self._table.get(key)
        if data is None:
            return default
        state = PatientState.from_dict(data)
        self._states[key] = state
        return state

    def __getitem__(self, key: str) -> PatientState:
        state: PatientState | None = self.get(key)
        if state is None:
            raise KeyError(key)
        return state

    def __setitem__(self, key: str, value: PatientState) -> None:
        self._states[key] = value

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
        consumer_group_instance_id=settings.kafka_group_instance_id,
        broker_session_timeout=settings.kafka_session_timeout_seconds,
        table_cleanup_interval=30.0,
        producer_acks=-1,
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
        partitions=settings.topic_partitions,
        schema=faust.Schema(
            key_type=str, value_type=None, key_serializer="raw", value_serializer="json"
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
        scorer=scorer,
        explainer=explainer,
        ood_scorer=ood_scorer,
        imager=imager,
        images=images,
        heatmaps=HeatmapStore(settings.artifact_dir),
        store=store,
        metrics=worker_metrics,
        tables=table,
        kinds=kinds,
        outputs=outputs,
    )

    if settings.input_event_time_order:
        ordered = OrderedIngest(
            app,
            kinds_by_topic={topic: kind.value for topic, kind in kinds.items()},
            kind_order=tuple(kind.value for kind in _TIE_ORDER),
            process=worker.process_event,
            concurrency=settings.agent_concurrency * len(inputs),
            idle_seconds=settings.input_order_idle_seconds,
            max_held=settings.input_order_max_held,
        )
        worker.ordered = ordered

        async def ingest_in_order(stream: Any) -> AsyncIterator[int]:
            # Records go to the ordered ingest, which applies them in event-time order
            # across the input topics and acknowledges each only after it is processed.
            # Yielding the offset marks the record as taken for Faust's test context.
            stream.enable_acks = False
            async for event in stream.events():
                await ordered.offer(stream, event)
                yield event.message.offset

        for kind, topic in inputs.items():
            app.agent(topic, name=f"vigil-{kind.value}")(ingest_in_order)

        @app.task  # type: ignore[untyped-decorator]
        async def release_held_inputs() -> None:
            await ordered.run()

    else:
        acks = InOrderAcks()

        async def ingest(stream: Any) -> AsyncIterator[int]:
            # Acknowledge a record only after it is processed and its outputs and state
            # are in Kafka: Faust otherwise acknowledges the current record even when its
            # processing is cancelled (worker stopping). The actors finish records out of
            # order; InOrderAcks hands them to Faust in offset order. Yielding the offset
            # marks the record as done for Faust's agent test context.
            stream.enable_acks = False
            async for event in stream.events():
                acks.take(event)
                await worker.process_event(event)
                await acks.done(stream, event)
                yield event.message.offset

        # One agent per input topic (the topic names its kind), each with several actors
        # so that patients due for a score at the same time share one Triton request;
        # records of one patient are serialised by the worker's per-patient lock.
        for kind, topic in inputs.items():
            app.agent(topic, name=f"vigil-{kind.value}", concurrency=settings.agent_concurrency)(
                ingest
            )

    async def acknowledge_alerts(stream: Any) -> AsyncIterator[int]:
        stream.enable_acks = False
        async for event in stream.events():
            await worker.process_ack(event)
            await stream.ack(event)
            yield event.message.offset

    app.agent(acks_topic, name="vigil-acks")(acknowledge_alerts)

    worker_metrics.prime([settings.triton_model, "news2"])
    lag_monitor = ConsumerLagMonitor(settings, worker_metrics.consumer_lag)

    @app.task  # type: ignore[untyped-decorator]
    async def start_adapters() -> None:
        await scorer.start()
        await explainer.start()
        if ood_scorer is not None:
            await ood_scorer.start()
        if imager is not None:
            await imager.start()
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
        sizes = [len(json.dumps(value, separators=(",", ":"))) for value in worker.tables.values()]
        worker_metrics.active_patients.set(len(sizes))
        for size in sizes:
            worker_metrics.state_size.observe(size)

    return worker
