"""Redis adapter: the latest score and the active alerts of each patient.

Key layout (``<prefix>`` is the topic prefix, default ``vigil``), every key with a TTL
(``VIGIL_REDIS_TTL_SECONDS``, refreshed on each write):

* ``<prefix>:patient:<patient_id>:score``: the latest ``ScoreRecord`` as JSON.
* ``<prefix>:patient:<patient_id>:alerts``: a hash ``alert_id -> AlertRecord JSON`` of
  the patient's open alerts; a resolved alert is removed from it.

Redis is a cache for dashboards, never the source of truth: when a write fails the
latest value per patient is kept in memory, the worker goes on scoring, and a background
task writes everything pending once Redis answers again. Writes never block the stream:
``put_*`` only queue, the flusher batches them into pipelines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streams.core.events import AlertRecord, ScoreRecord
from streams.metrics import WorkerMetrics

__all__ = ["RedisStore"]

log = logging.getLogger(__name__)


class RedisStore:
    """Writes scores and alerts to Redis, buffering the latest ones while it is down.

    Args:
        client: An async Redis client.
        prefix: Key prefix.
        ttl_seconds: TTL of each key.
        metrics: Where failed writes are counted.
        retry_seconds: Pause between attempts to flush while Redis is down.
        flush_seconds: Pause between two writes (batches writes under load).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        ttl_seconds: int,
        metrics: WorkerMetrics,
        retry_seconds: float = 1.0,
        flush_seconds: float = 0.05,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self.metrics = metrics
        self.retry_seconds = retry_seconds
        self.flush_seconds = flush_seconds
        self._wake = asyncio.Event()
        self._pending_scores: dict[str, ScoreRecord] = {}
        self._pending_alerts: dict[tuple[str, str], AlertRecord] = {}
        self._task: asyncio.Task[None] | None = None

    def score_key(self, patient_id: str) -> str:
        """Key of a patient's latest score."""
        return f"{self.prefix}:patient:{patient_id}:score"

    def alerts_key(self, patient_id: str) -> str:
        """Key of a patient's open alerts."""
        return f"{self.prefix}:patient:{patient_id}:alerts"

    @property
    def pending(self) -> int:
        """Writes waiting for Redis to return."""
        return len(self._pending_scores) + len(self._pending_alerts)

    async def start(self) -> None:
        """Start the background flusher."""
        self._task = asyncio.create_task(self._flush_loop(), name="vigil-redis-flusher")

    async def close(self) -> None:
        """Stop the flusher (pending writes are tried once more) and close the client."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError):
            await self.flush()
        await self.client.aclose()

    def put_score(self, record: ScoreRecord) -> None:
        """Queue a patient's latest score; the flusher writes it within ``flush_seconds``."""
        self._pending_scores[record.patient_id] = record
        self._wake.set()

    def put_alert(self, record: AlertRecord) -> None:
        """Queue an alert change; the flusher writes it within ``flush_seconds``."""
        self._pending_alerts[(record.patient_id, record.alert_id)] = record
        self._wake.set()

    async def flush(self) -> None:
        """Write everything pending in one pipeline; raises when Redis is unreachable."""
        if not self._pending_scores and not self._pending_alerts:
            return
        scores = dict(self._pending_scores)
        alerts = dict(self._pending_alerts)
        pipe = self.client.pipeline(transaction=False)
        for patient_id, score in scores.items():
            pipe.set(self.score_key(patient_id), score.model_dump_json(), ex=self.ttl_seconds)
        for (patient_id, alert_id), alert in alerts.items():
            key = self.alerts_key(patient_id)
            if alert.state == "resolved":
                pipe.hdel(key, alert_id)
            else:
                pipe.hset(key, alert_id, alert.model_dump_json())
                pipe.expire(key, self.ttl_seconds)
        await pipe.execute()
        for patient_id, score in scores.items():
            if self._pending_scores.get(patient_id) is score:
                del self._pending_scores[patient_id]
        for alert_key, alert in alerts.items():
            if self._pending_alerts.get(alert_key) is alert:
                del self._pending_alerts[alert_key]

    async def _flush_loop(self) -> None:
        failing = False
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except (RedisError, OSError):
                self.metrics.redis_errors.inc()
                if not failing:
                    log.warning("redis unreachable; keeping the latest values to write later")
                failing = True
                await asyncio.sleep(self.retry_seconds)
                self._wake.set()
                continue
            if failing:
                log.info("redis reachable again; pending writes flushed")
                failing = False
            await asyncio.sleep(self.flush_seconds)
