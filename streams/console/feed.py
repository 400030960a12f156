"""Keep the console's :class:`~streams.console.ward.Ward` fed from Redis and Kafka.

At start the worker's Redis cache (latest score and open alerts per patient) gives a first
board at once. Then one consumer, in the console's own group, is assigned every partition
of ``scores``, ``alerts``, ``explanations``, ``findings`` and ``imaging`` from
``history_hours`` ago (Kafka time) and of ``adt`` from the beginning (admissions carry the
unit), and follows them. Each instance of the console reads everything (the group records
its progress for lag monitoring; it does not split partitions). Every batch applied wakes
the :class:`Hub`, whose subscribers (the boards' event streams) push the changed rows.

An undecodable record is skipped and counted; Kafka or Redis unreachable is retried, never
fatal: the board then shows what it has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from kafka import KafkaConsumer
from kafka.errors import KafkaError as KafkaPythonError
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from streams.console.metrics import ConsoleMetrics
from streams.console.settings import ConsoleSettings
from streams.console.ward import PatientView, Ward
from streams.core.events import (
    AdtEvent,
    AlertRecord,
    ExplanationRecord,
    FindingRecord,
    ImagingEvent,
    ScoreRecord,
)

__all__ = ["KINDS", "Feed", "Hub"]

_log = logging.getLogger(__name__)

KINDS: Final[dict[str, type[BaseModel]]] = {
    "scores": ScoreRecord,
    "alerts": AlertRecord,
    "explanations": ExplanationRecord,
    "findings": FindingRecord,
    "adt": AdtEvent,
    "imaging": ImagingEvent,
}


class Hub:
    """Fan-out of changed patients to the open boards (one queue per subscriber)."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[tuple[set[str], float]]] = set()

    def subscribe(self) -> asyncio.Queue[tuple[set[str], float]]:
        """A new subscriber's queue of (changed patient ids, monotonic time received)."""
        queue: asyncio.Queue[tuple[set[str], float]] = asyncio.Queue(maxsize=1000)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[tuple[set[str], float]]) -> None:
        """Forget a subscriber."""
        self._queues.discard(queue)

    @property
    def subscribers(self) -> int:
        """Open event streams."""
        return len(self._queues)

    def publish(self, patients: set[str], received: float) -> None:
        """Tell every subscriber which patients changed (a full queue drops the oldest)."""
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait((set(patients), received))


class Feed:
    """Redis seed, then the Kafka outputs, into ``ward``; wakes ``hub`` per batch.

    Args:
        settings: The console's settings.
        ward: Where records go.
        hub: Who hears about changes.
        metrics: Records read and skipped.
        kafka_options: Security keyword arguments of the consumer.
        redis_factory: Makes the Redis client (from the worker's connection settings).
    """

    def __init__(
        self,
        settings: ConsoleSettings,
        ward: Ward,
        hub: Hub,
        metrics: ConsoleMetrics,
        kafka_options: dict[str, Any],
        redis_factory: Callable[[], aioredis.Redis],
    ) -> None:
        self.settings = settings
        self.ward = ward
        self.hub = hub
        self.metrics = metrics
        self.kafka_options = kafka_options
        self.redis_factory = redis_factory
        self.caught_up = asyncio.Event()
        self._topics = {settings.topic(kind): kind for kind in KINDS}

    def apply(self, kind: str, value: bytes | None) -> PatientView | None:
        """Decode one record of topic kind ``kind`` into the ward; None when skipped."""
        try:
            record = KINDS[kind].model_validate_json(value or b"")
        except ValidationError:
            self.metrics.records.labels(kind, "skipped").inc()
            return None
        self.metrics.records.labels(kind, "applied").inc()
        if isinstance(record, ScoreRecord):
            return self.ward.add_score(record)
        if isinstance(record, AlertRecord):
            return self.ward.add_alert(record)
        if isinstance(record, ExplanationRecord):
            return self.ward.add_explanation(record)
        if isinstance(record, FindingRecord):
            return self.ward.add_finding(record)
        if isinstance(record, AdtEvent):
            return self.ward.add_adt(record)
        if isinstance(record, ImagingEvent):
            return self.ward.add_imaging(record)
        return None

    async def seed(self) -> int:
        """Read the worker's Redis cache into the ward; returns the patients seen."""
        client = self.redis_factory()
        prefix = self.settings.topic_prefix
        seen = 0
        try:
            async for key in client.scan_iter(match=f"{prefix}:patient:*:score", count=1000):
                patient = key.decode() if isinstance(key, bytes) else str(key)
                patient = patient[len(prefix) + len(":patient:") : -len(":score")]
                pipe = client.pipeline(transaction=False)
                pipe.get(f"{prefix}:patient:{patient}:score")
                pipe.hvals(f"{prefix}:patient:{patient}:alerts")
                score, alerts = await pipe.execute()
                if score is not None:
                    self.apply("scores", score)
                for alert in alerts or ():
                    self.apply("alerts", alert)
                seen += 1
        except (RedisError, OSError) as exc:
            _log.warning("redis seed skipped: %s", exc)
        finally:
            await client.aclose()
        return seen

    async def run(self) -> None:
        """Seed, then follow Kafka until cancelled."""
        await self.seed()
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap,
                group_id=self.settings.consumer_group,
                enable_auto_commit=True,
                auto_offset_reset="latest",
                fetch_max_wait_ms=50,
                client_id="vigil-console",
                **self.kafka_options,
            )
            try:
                await consumer.start()
                ends = await self._position(consumer)
                await self._follow(consumer, ends)
            except (KafkaError, KafkaPythonError, OSError, TimeoutError) as exc:
                _log.warning("console feed: %s; retrying", exc)
                await asyncio.sleep(2.0)
            finally:
                await consumer.stop()

    def _partitions(self) -> dict[str, set[int]]:
        # aiokafka keeps metadata of subscribed topics only; kafka-python answers for any.
        probe = KafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id="vigil-console-metadata",
            **self.kafka_options,
        )
        try:
            found = {topic: probe.partitions_for_topic(topic) for topic in self._topics}
        finally:
            probe.close()
        return {topic: numbers for topic, numbers in found.items() if numbers}

    async def _position(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
        found_partitions = await asyncio.to_thread(self._partitions)
        missing = sorted(set(self._topics) - set(found_partitions))
        if missing:
            _log.warning("topics missing (the board skips them): %s", ", ".join(missing))
        partitions = [
            TopicPartition(topic, number)
            for topic, numbers in found_partitions.items()
            for number in sorted(numbers)
        ]
        consumer.assign(partitions)
        since_ms = int((time.time() - self.settings.history_hours * 3600) * 1000)
        windowed = [p for p in partitions if self._topics[p.topic] != "adt"]
        found = await consumer.offsets_for_times(dict.fromkeys(windowed, since_ms))
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        for partition in partitions:
            at = found.get(partition) if partition in found else None
            if self._topics[partition.topic] == "adt":
                consumer.seek(partition, starts[partition])
            else:
                consumer.seek(partition, ends[partition] if at is None else at.offset)
        return ends

    async def _follow(self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> None:
        behind = {p for p, end in ends.items() if end > 0}
        if not behind:
            self.caught_up.set()
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            received = time.monotonic()
            changed: set[str] = set()
            for partition, records in batches.items():
                kind = self._topics[partition.topic]
                for record in records:
                    view = self.apply(kind, record.value)
                    if view is not None:
                        changed.add(view.patient_id)
            if behind:
                for partition in list(behind):
                    if await consumer.position(partition) >= ends[partition]:
                        behind.discard(partition)
                if not behind:
                    self.caught_up.set()
                    _log.info("console feed caught up (%d patients)", len(self.ward.patients))
            self.metrics.patients.set(len(self.ward.patients))
            if changed:
                self.hub.publish(changed, received)
