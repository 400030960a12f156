"""The gateway's Kafka side: an idempotent producer whose sends are awaited to delivery.

:meth:`KafkaSink.deliver` returns only once Kafka has acknowledged every record (``acks=all``,
idempotent producer), so an ACK sent after it means the events are stored. It raises
:class:`~vigil.errors.TopicError` when Kafka is not reachable or does not acknowledge within
the delivery timeout: the caller answers AR and the sender resends (a record that did land
meanwhile comes again with the same event id, and the worker drops it as a duplicate).
The producer connects in the background and keeps trying, so the gateway starts and
answers (AR) while Kafka is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.gateway.kafka_security import kafka_options
from streams.gateway.metrics import GatewayMetrics
from streams.gateway.settings import GatewaySettings
from vigil.errors import TopicError

__all__ = ["KafkaSink", "Record"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    """One record to produce: topic kind (``vitals`` …), key and value."""

    kind: str
    key: bytes | None
    value: bytes


class KafkaSink:
    """Produce records and wait for Kafka's acknowledgement."""

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._producer: AIOKafkaProducer | None = None
        self._connector: asyncio.Task[None] | None = None
        self._healthy = False

    @property
    def up(self) -> bool:
        """True when connected and the last delivery (if any) succeeded."""
        return self._producer is not None and self._healthy

    def start(self) -> None:
        """Start connecting in the background (call from the running loop)."""
        self._connector = asyncio.get_running_loop().create_task(self._connect())

    def _new_producer(self) -> AIOKafkaProducer:
        s = self._settings
        return AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap,
            client_id="vigil-gateway",
            acks="all",
            enable_idempotence=True,
            linger_ms=s.kafka_linger_ms,
            request_timeout_ms=int(s.kafka_delivery_timeout_seconds * 1000),
            **kafka_options(s),
        )

    async def _connect(self) -> None:
        while True:
            producer = self._new_producer()
            try:
                await producer.start()
            except asyncio.CancelledError:
                with contextlib.suppress(KafkaError, OSError):
                    await producer.stop()
                raise
            except (KafkaError, OSError) as exc:
                _log.warning("Kafka at %s unreachable: %s", self._settings.kafka_bootstrap, exc)
                with contextlib.suppress(KafkaError, OSError):
                    await producer.stop()
                await asyncio.sleep(self._settings.kafka_retry_seconds)
                continue
            self._producer = producer
            self._healthy = True
            self._metrics.kafka_up.set(1)
            _log.info("connected to Kafka at %s", self._settings.kafka_bootstrap)
            return

    async def deliver(self, records: Sequence[Record]) -> None:
        """Send ``records`` (in order) and wait until Kafka acknowledged all of them.

        Raises:
            TopicError: Not connected, refused, or not acknowledged in time.
        """
        producer = self._producer
        if producer is None:
            raise TopicError("Kafka is not connected")
        topic = self._settings.topic
        try:
            async with asyncio.timeout(self._settings.kafka_delivery_timeout_seconds):
                # Every record is handed to the producer first, then all are awaited: the
                # records of this call, and of every other call in flight meanwhile, share
                # the producer's batches and so its round trips to Kafka.
                pending = [
                    await producer.send(topic(r.kind), value=r.value, key=r.key) for r in records
                ]
                await asyncio.gather(*pending)
        except (KafkaError, TimeoutError) as exc:
            self._healthy = False
            self._metrics.kafka_up.set(0)
            raise TopicError(f"Kafka did not acknowledge: {type(exc).__name__}") from exc
        self._healthy = True
        self._metrics.kafka_up.set(1)
        for record in records:
            self._metrics.events.labels(record.kind).inc()

    async def close(self) -> None:
        """Stop connecting, flush what was sent and close the producer."""
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        if self._producer is not None:
            with contextlib.suppress(KafkaError, OSError):
                await self._producer.stop()
            self._producer = None
        self._metrics.kafka_up.set(0)
