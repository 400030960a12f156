"""Keep :class:`~streams.gateway.history.ScoreHistory` fed from the ``scores`` topic.

Reads without a consumer group (nothing committed), starting at the offsets of
``history_hours`` ago (Kafka timestamps), and follows new scores. An undecodable record is
skipped and counted; Kafka unreachable is retried, never fatal: FHIR out then serves what it
has, and Redis's latest score.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from streams.core.events import ScoreRecord
from streams.gateway.history import ScoreHistory
from streams.gateway.kafka_security import kafka_options
from streams.gateway.settings import GatewaySettings

__all__ = ["follow_scores"]

_log = logging.getLogger(__name__)


async def _start(consumer: AIOKafkaConsumer, since_ms: int) -> None:
    # Subscribed without a group, the consumer assigns itself every partition of the topic.
    await consumer.start()
    async with asyncio.timeout(30):
        while not consumer.assignment():
            await asyncio.sleep(0.1)
    partitions = list(consumer.assignment())
    found = await consumer.offsets_for_times(dict.fromkeys(partitions, since_ms))
    ends = await consumer.end_offsets(partitions)
    for partition in partitions:
        at = found.get(partition)
        consumer.seek(partition, at.offset if at is not None else ends[partition])


async def follow_scores(settings: GatewaySettings, history: ScoreHistory) -> None:
    """Feed ``history`` until cancelled."""
    topic = settings.topic("scores")
    while True:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id="vigil-gateway-history",
            **kafka_options(settings),
        )
        since_ms = int((time.time() - settings.history_hours * 3600) * 1000)
        try:
            await _start(consumer, since_ms)
            async for record in consumer:
                try:
                    history.add(ScoreRecord.model_validate_json(record.value or b""))
                except ValidationError:
                    _log.warning("skipped an undecodable score record")
        except (KafkaError, OSError, TimeoutError) as exc:
            _log.warning("score history: %s; retrying", exc)
            await asyncio.sleep(settings.kafka_retry_seconds)
        finally:
            await consumer.stop()
