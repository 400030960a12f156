"""The Faust worker: a thin adapter between Kafka, the pure core, Triton and Redis.

One agent reads the four input topics (co-partitioned: every record is keyed by patient
id, so a patient's records land in the same partition number everywhere). It takes
records in small batches, lets :class:`~streams.core.pipeline.Processor` validate and
apply them to the ``patients`` table, scores every patient that became due in one
micro-batched Triton call, and sends scores, alerts and dead letters. The table is
changelog-backed; its keys are partitioned exactly like the input topics
(``use_partitioner``), so a restarted or rebalanced worker restores the right states.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
import redis.asyncio as aioredis

from streams.adapters.redis_store import RedisStore
from streams.adapters.triton import ImageInput, ModelOutput, TritonScorer
from streams.core.alerting import AlertPolicy
from streams.core.breaker import CircuitBreaker
from streams.core.events import AlertRecord, DeadLetterRecord, ScoreRecord, TopicKind
from streams.core.pipeline import ModelAnswer, Processor, ProcessorConfig, Snapshot
from streams.core.state import Origin, Outcome, PatientState
from streams.metrics import WorkerMetrics, metrics
from streams.settings import WorkerSettings
from vigil import __version__
from vigil.errors import CircuitOpenError, InferenceError

__all__ = ["VigilWorker", "create_worker"]

log = logging.getLogger(__name__)

_INPUT_ORDER = (TopicKind.VITALS, TopicKind.LABS, TopicKind.IMAGING, TopicKind.ADT)
_BATCH_EVENTS = 500
_BATCH_WITHIN_SECONDS = 0.05


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class VigilWorker:
    """The Faust app with its topics, table, processor and adapters."""

    app: faust.App
    settings: WorkerSettings
    processor: Processor
    scorer: TritonScorer
    store: RedisStore
    metrics: WorkerMetrics
    tables: Any
    kinds: dict[str, TopicKind]
    outputs: dict[TopicKind, Any]
    global_watermark: datetime | None = None

    def kind_of(self, topic: str) -> TopicKind:
        """Topic kind of an input topic name."""
        return self.kinds[topic]

    async def process_batch(self, events: list[Any]) -> None:
        """Process a batch of Faust events (the agent's body)."""
        states: dict[str, PatientState] = {}
        loaded: set[str] = set()
        table = self.tables
        cache = _TableCache(table, states, loaded)
        snapshots: list[tuple[Snapshot, float]] = []
        dead: list[DeadLetterRecord] = []
        for event in events:
            message = event.message
            kind = self.kind_of(message.topic)
            key = (
                message.key if isinstance(message.key, bytes | None) else str(message.key).encode()
            )
            value = event.value if isinstance(event.value, bytes) else bytes(event.value)
            origin = Origin(message.topic, message.partition, message.offset)
            result = self.processor.ingest(cache, kind, key, value, origin)
            if result.deadletter is not None:
                dead.append(result.deadletter)
                self.metrics.deadletter.labels(result.deadletter.reason.value).inc()
                self.metrics.events_in.labels(kind.value, "deadletter").inc()
                continue
            outcome = result.outcome or Outcome.ACCEPTED
            self.metrics.events_in.labels(kind.value, outcome.value).inc()
            for code in result.artifacts:
                self.metrics.observations_artifact.labels(code).inc()
            if result.patient_id is not None and outcome is Outcome.ACCEPTED:
                state = states[result.patient_id]
                if state.watermark_ms is not None:
                    lag = time.time() - state.watermark_ms / 1000
                    self.metrics.event_lag.labels(kind.value).observe(max(lag, 0.0))
                stamp = state.state_time
                if self.global_watermark is None or stamp > self.global_watermark:
                    self.global_watermark = stamp
            if result.snapshot is not None:
                snapshots.append((result.snapshot, time.perf_counter()))
        for record in dead:
            await self.outputs[TopicKind.DEADLETTER].send(
                key=None, value=record.model_dump_json().encode()
            )
        answers = await asyncio.gather(*(self._score(snapshot) for snapshot, _ in snapshots))
        for (snapshot, started), (answer, reason) in zip(snapshots, answers, strict=True):
            score, alerts = self.processor.finish(cache, snapshot, answer, reason)
            await self._emit(score, alerts)
            self.metrics.score_latency.observe(time.perf_counter() - started)
        for pid in loaded | set(states):
            table[pid] = states[pid].to_dict()
        self.metrics.active_patients.set(len(table))

    async def _score(self, snapshot: Snapshot) -> tuple[ModelAnswer | None, str | None]:
        images = [ImageInput(age, emb) for age, emb in snapshot.images]
        try:
            output: ModelOutput = await self.scorer.score(snapshot.window, images)
        except CircuitOpenError:
            self.metrics.degraded.set(1)
            return None, "circuit_open"
        except InferenceError as exc:
            self.metrics.degraded.set(1)
            log.warning("scoring failed, degraded to NEWS2: %s", exc)
            return None, "inference_error"
        self.metrics.degraded.set(0)
        return ModelAnswer(output.risk, output.contributions, self.scorer.model_version), None

    async def _emit(self, score: ScoreRecord, alerts: list[AlertRecord]) -> None:
        key = score.patient_id.encode()
        await self.outputs[TopicKind.SCORES].send(key=key, value=score.model_dump_json().encode())
        self.metrics.scores.labels(score.model, str(score.degraded).lower()).inc()
        await self.store.put_score(score)
        for alert in alerts:
            await self.outputs[TopicKind.ALERTS].send(
                key=key, value=alert.model_dump_json().encode()
            )
            self.metrics.alerts.labels(alert.severity, alert.kind, alert.state).inc()
            await self.store.put_alert(alert)

    def expire(self) -> int:
        """Drop states discharged or silent for too long (event time); returns how many."""
        if self.global_watermark is None:
            return 0
        expired = []
        for pid, data in list(self.tables.items()):
            state = PatientState.from_dict(data)
            if state.expired(self.global_watermark, self.settings.silence_expiry):
                # Keep a discharged state while late events may still arrive.
                if (
                    state.discharged_ms is not None
                    and self.global_watermark.timestamp() * 1000 - state.discharged_ms
                    < self.settings.lateness_seconds * 1000
                ):
                    continue
                expired.append(pid)
        for pid in expired:
            del self.tables[pid]
        return len(expired)


class _TableCache(dict[str, PatientState]):
    """A dict of states that loads missing patients from the Faust table on first use."""

    def __init__(self, table: Any, states: dict[str, PatientState], loaded: set[str]) -> None:
        super().__init__()
        self._table = table
        self._states = states
        self._loaded = loaded

    def get(self, key: str, default: Any = None) -> Any:
        if key in self._states:
            return self._states[key]
        data = self._table.get(key)
        if data is None:
            return default
        state = PatientState.from_dict(data)
        self._states[key] = state
        self._loaded.add(key)
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
    broker_credentials = None
    if settings.kafka_sasl_mechanism is not None:
        password = settings.kafka_sasl_password
        broker_credentials = faust.SASLCredentials(
            username=settings.kafka_sasl_username or "",
            password=password.get_secret_value() if password is not None else "",
            mechanism=settings.kafka_sasl_mechanism,
        )
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=broker_credentials,
        store=settings.store,
        datadir=settings.data_dir,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_disable_leader=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        table_cleanup_interval=30.0,
        producer_acks=-1,
    )
    kinds = {settings.topic(kind.value): kind for kind in _INPUT_ORDER}
    inputs = app.topic(
        *kinds.keys(),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        acks=True,
    )
    outputs = {
        kind: app.topic(settings.topic(kind.value), key_serializer="raw", value_serializer="raw")
        for kind in (TopicKind.SCORES, TopicKind.ALERTS, TopicKind.DEADLETTER)
    }
    table = app.Table(
        "patients",
        default=None,
        partitions=settings.topic_partitions,
        schema=faust.Schema(
            key_type=str, value_type=None, key_serializer="raw", value_serializer="json"
        ),
        use_partitioner=True,
    )
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
            refractory=timedelta(hours=settings.alert_refractory_hours),
            news2_threshold=settings.alert_news2_threshold,
        ),
        code_version=__version__,
        model_name=settings.triton_model,
    )
    scorer = TritonScorer(
        settings.triton_url,
        settings.triton_model,
        timeout_seconds=settings.triton_timeout_seconds,
        retries=settings.triton_retries,
        breaker=CircuitBreaker(
            settings.breaker_failures, settings.breaker_reset_seconds, time.monotonic
        ),
        batch_max_size=settings.batch_max_size,
        batch_max_wait_ms=settings.batch_max_wait_ms,
        metrics=worker_metrics,
    )
    password = settings.redis_password
    redis_client = aioredis.Redis.from_url(
        settings.redis_url,
        password=password.get_secret_value() if password is not None else None,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
    )
    store = RedisStore(
        redis_client,
        prefix=settings.topic_prefix,
        ttl_seconds=settings.redis_ttl_seconds,
        metrics=worker_metrics,
    )
    worker = VigilWorker(
        app=app,
        settings=settings,
        processor=Processor(config, clock),
        scorer=scorer,
        store=store,
        metrics=worker_metrics,
        tables=table,
        kinds=kinds,
        outputs=outputs,
    )

    @app.agent(inputs, name="vigil-ingest")
    async def ingest(stream: Any) -> None:
        async for batch in stream.take_events(_BATCH_EVENTS, within=_BATCH_WITHIN_SECONDS):
            await worker.process_batch(batch)

    @app.task  # type: ignore[untyped-decorator]
    async def start_adapters() -> None:
        await scorer.start()
        await store.start()

    @app.timer(interval=30.0)  # type: ignore[untyped-decorator]
    async def expire_states() -> None:
        removed = worker.expire()
        if removed:
            log.info("expired %d patient states", removed)

    return worker
