"""The worker's wiring: the Faust app, its topics, table and agents, built from settings.

:func:`create_worker` builds a :class:`~streams.app.VigilWorker` (the batch logic) with
its adapters (Triton clients, Redis, images, heatmaps) and registers the agents that hand
input records to the ordered, batched ingest, the acknowledgement agent and the timers
(consumer lag, snooze and state expiry). Every default comes from
:class:`~streams.settings.WorkerSettings`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import faust
import redis.asyncio as aioredis

from streams.adapters.faust_recovery import settling_consumer, watched_table_manager
from streams.adapters.image_source import HeatmapStore, ImageSource
from streams.adapters.input_order import OrderedIngest
from streams.adapters.lag import ConsumerLagMonitor
from streams.adapters.models import ModelCalls
from streams.adapters.prior_store import PriorStore
from streams.adapters.redis_store import RedisStore
from streams.adapters.security import (
    faust_credentials,
    redis_options,
    triton_client_options,
    triton_headers,
)
from streams.adapters.state_table import DurableTable
from streams.adapters.triton import TritonScorer
from streams.app import VigilWorker
from streams.core.breaker import CircuitBreaker
from streams.core.events import TopicKind
from streams.core.pipeline import Processor, ProcessorConfig
from streams.metrics import WorkerMetrics, metrics
from streams.settings import WorkerSettings
from vigil import __version__

__all__ = ["create_worker"]

log = logging.getLogger(__name__)

_INPUT_ORDER = (TopicKind.VITALS, TopicKind.LABS, TopicKind.IMAGING, TopicKind.ADT)
_TIE_ORDER = (TopicKind.ADT, TopicKind.VITALS, TopicKind.LABS, TopicKind.IMAGING)
"""At equal event time: an admission before the observations taken at that moment."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


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
        TableManager=watched_table_manager(
            stall_seconds=settings.recovery_stall_seconds,
            kicks=settings.recovery_stall_kicks,
            on_restart=worker_metrics.recovery_restarts.inc,
        ),
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
    config = ProcessorConfig.from_settings(settings, code_version=__version__)

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
    step_explainer = (
        triton(
            settings.triton_step_explain_model, timeout_seconds=max(timeout, 5.0), batch_max_size=8
        )
        if settings.triton_step_model and settings.triton_step_explain_model
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
    # One study per request: studies differ in size, and a batch needs one shape.
    denoiser = (
        triton(settings.triton_denoise_model, timeout_seconds=max(timeout, 5.0), batch_max_size=1)
        if settings.triton_denoise_model and imager is not None
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
            step_explainer=step_explainer,
            ood_scorer=ood_scorer,
            imager=imager,
            images=images,
            heatmaps=HeatmapStore(settings.artifact_dir),
            metrics=worker_metrics,
            denoiser=denoiser,
            denoise_below=settings.denoise_below_dose_fraction,
            priors=(
                PriorStore(settings.prior_dir or Path(settings.artifact_dir) / "priors")
                if settings.registration_iterations
                else None
            ),
            registration_iterations=settings.registration_iterations,
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
        batch_max_ms_behind=settings.batch_max_ms_behind,
        idle_seconds=settings.input_order_idle_seconds,
        max_held=settings.input_order_max_held,
        event_time_order=settings.input_event_time_order,
        metrics=worker_metrics,
    )
    worker.ordered = ordered

    async def settle_input() -> None:
        # Before partitions go, or the worker stops (Faust would wait for every record
        # taken): the input records released for processing finish, the held ones are
        # given up; then an alert acknowledgement being applied finishes (under the lock).
        await ordered.settle(giving_up=lambda: app.consumer.should_stop)
        async with worker.lock:
            pass

    # Before anything builds the consumer (on first use): see settling_consumer. Faust
    # picks the transport by the broker URL's scheme, so the class is set on its instance.
    app.transport.Consumer = settling_consumer(settle_input)  # type: ignore[misc]

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
