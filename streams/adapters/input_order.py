"""The input agents' records, processed in event-time order per partition number.

The Faust side of :class:`streams.core.ordering.InputMerger`. Each input agent hands its
records to :meth:`OrderedIngest.offer`; the merger releases them in event-time order
across the co-partitioned topics; released records are queued per patient (record key)
and processed by one task per patient with records waiting, so one patient's records are
processed in release order while different patients are processed concurrently (their
Triton requests share micro-batches). A record is acknowledged to Faust only after it and
every earlier record of its topic partition are processed (:class:`InOrderAcks`), so a
committed offset never runs ahead of the outputs and state it produced
(``docs/worker.md``).

"Caught up" comes from the consumer: a topic partition assigned here whose high
watermark is not beyond the next offset the merger expects (or, before any record of it
arrived, beyond the group's committed offset) has nothing more to deliver. Held records
are released all at once when the consumer stops its flow (a rebalance or a stop), since
Faust waits for every record its agents took to be acknowledged before it gives the
partitions up.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from streams.core.ordering import InputMerger, MoreExpected

__all__ = ["InOrderAcks", "OrderedIngest", "event_time_ms"]

log = logging.getLogger(__name__)

_FLUSH_EVERY_S = 0.5


def event_time_ms(value: bytes) -> int | None:
    """The ``event_time`` of a JSON input record in epoch ms; None when it cannot be read
    (the record is then released at once, and the core dead-letters it)."""
    try:
        data = json.loads(value)
        text = data["event_time"]
        moment = datetime.fromisoformat(text)
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    if moment.tzinfo is None:
        return None
    try:
        return int(moment.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):
        return None


class InOrderAcks:
    """Acknowledges records to Faust in offset order within each topic partition.

    Records processed concurrently finish out of order (one patient's record waits for a
    slow Triton call while another patient's later record is done). Faust commits up to
    the first gap in the acknowledged offsets, but tolerates one missing offset right after
    the committed one (``Consumer._new_offset``: ``min(acked) - committed > 1``), so
    acknowledging offset n+1 before n lets a commit pass over n, and a worker killed then
    loses it. Here a record is acknowledged only once every record taken before it from
    its topic partition is done, so the acknowledged offsets are always a contiguous run
    from the committed one.
    """

    def __init__(self) -> None:
        self._taken: dict[tuple[str, int], list[int]] = {}
        self._done: dict[tuple[str, int], dict[int, list[tuple[Any, Any]]]] = {}

    def take(self, event: Any) -> None:
        """Note a record as taken (call in the order the records arrive)."""
        message = event.message
        heapq.heappush(
            self._taken.setdefault((message.topic, message.partition), []), message.offset
        )

    async def done(self, stream: Any, event: Any) -> None:
        """The record is processed: acknowledge it and every record of its topic partition
        waiting for it, in offset order."""
        message = event.message
        tp = (message.topic, message.partition)
        done = self._done.setdefault(tp, {})
        done.setdefault(message.offset, []).append((stream, event))
        taken = self._taken.get(tp, [])
        while taken and taken[0] in done:
            offset = heapq.heappop(taken)
            waiting = done[offset]
            stream_of, event_of = waiting.pop(0)
            if not waiting:
                del done[offset]
            await stream_of.ack(event_of)  # synchronous inside: acks stay in order
        if not taken:
            self._taken.pop(tp, None)
            if not done:
                self._done.pop(tp, None)

    @property
    def pending(self) -> int:
        """Records taken and not yet acknowledged."""
        return sum(len(offsets) for offsets in self._taken.values())


def _nothing_expected(kind: str, partition: int, next_offset: int | None) -> bool:
    return False


class OrderedIngest:
    """Merges, dispatches and acknowledges the input agents' records.

    Args:
        app: The Faust app (its consumer says what is assigned and caught up).
        kinds_by_topic: Input topic name to kind name (``vitals``, ...).
        kind_order: Kind names in tie-break order.
        process: Processes one Faust event (``VigilWorker.process_event``).
        concurrency: Records processed at once.
        idle_seconds: See :class:`~streams.core.ordering.InputMerger`.
        max_held: See :class:`~streams.core.ordering.InputMerger`.
    """

    def __init__(
        self,
        app: Any,
        *,
        kinds_by_topic: dict[str, str],
        kind_order: tuple[str, ...],
        process: Callable[[Any], Awaitable[None]],
        concurrency: int,
        idle_seconds: float,
        max_held: int,
    ) -> None:
        self.app = app
        self.kinds_by_topic = kinds_by_topic
        self.topic_of = {kind: topic for topic, kind in kinds_by_topic.items()}
        self.process = process
        self.merger: InputMerger[tuple[Any, Any]] = InputMerger(
            kind_order, idle_seconds=idle_seconds, max_held=max_held
        )
        self.acks = InOrderAcks()
        self._slots = asyncio.Semaphore(concurrency)
        self._limit = 4 * concurrency
        self._queues: dict[bytes, deque[tuple[Any, Any]]] = {}
        self._outstanding = 0
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting = 0
        self._paused_since = 0.0
        self._paused_total = 0.0

    # -- the agents' side ------------------------------------------------------------------

    async def offer(self, stream: Any, event: Any) -> None:
        """Take one record from an input agent; returns once there is room for more."""
        self.acks.take(event)
        message = event.message
        value = message.value if isinstance(message.value, bytes) else b""
        self.merger.add(
            (stream, event),
            kind=self.kinds_by_topic[message.topic],
            partition=message.partition,
            offset=message.offset,
            event_ms=event_time_ms(value),
            now_s=self._clock(),
        )
        self._release()
        if self._outstanding < self._limit:
            return
        # Back-pressure. While an agent waits here its topic delivers nothing because of
        # us, not because it is idle: the merger's clock stands still meanwhile.
        if not self._waiting:
            self._paused_since = time.monotonic()
        self._waiting += 1
        try:
            while self._outstanding >= self._limit:
                self._changed.clear()
                await self._changed.wait()
        finally:
            self._waiting -= 1
            if not self._waiting:
                self._paused_total += time.monotonic() - self._paused_since

    def _clock(self) -> float:
        """Monotonic seconds, less the time any agent spent waiting for room."""
        now = time.monotonic()
        paused = self._paused_total + (now - self._paused_since if self._waiting else 0.0)
        return now - paused

    @property
    def held(self) -> int:
        """Records held for ordering (not yet released)."""
        return len(self.merger)

    @property
    def outstanding(self) -> int:
        """Records released and not yet processed."""
        return self._outstanding

    async def drain(self) -> None:
        """Release everything held and wait until every record is processed."""
        for stream, event in self.merger.release_all():
            self._dispatch(stream, event)
        while self._outstanding:
            self._changed.clear()
            await self._changed.wait()

    # -- merging -------------------------------------------------------------------------

    def _release(self) -> None:
        if self._stopping():
            released = self.merger.release_all()
        else:
            released = self.merger.release(self._clock(), self._more_expected_now())
        for stream, event in released:
            self._dispatch(stream, event)

    async def run(self) -> None:
        """Release on a clock too (the worker runs it as a task): idle topics, a rebalance
        and a stop are noticed without waiting for the next record."""
        while True:
            await asyncio.sleep(_FLUSH_EVERY_S)
            if len(self.merger):
                self._release()

    def _stopping(self) -> bool:
        try:
            consumer = self.app.consumer
            # Faust stops the flow when partitions are revoked (a rebalance) and on stop.
            return not bool(consumer.flow_active)
        except Exception:  # noqa: BLE001 - no consumer (agent test context): not stopping
            return False

    def _more_expected_now(self) -> MoreExpected:
        """The merger's "may this topic partition still deliver?" question, answered from
        the consumer as it is now (its assignment read once per release)."""
        try:
            consumer = self.app.consumer
            assignment = set(consumer.assignment())
        except Exception:  # noqa: BLE001 - no running consumer (agent test context)
            return _nothing_expected

        def more_expected(kind: str, partition: int, next_offset: int | None) -> bool:
            topic = self.topic_of.get(kind)
            if topic is None or (topic, partition) not in assignment:
                return False  # not assigned here: nothing to wait for
            tp = next(tp for tp in assignment if tp == (topic, partition))
            try:
                high = consumer.highwater(tp)
                if next_offset is None:
                    committed = consumer._committed_offset.get(tp)
                    next_offset = committed if committed is not None and committed >= 0 else 0
            except Exception:  # noqa: BLE001 - revoked meanwhile: nothing to wait for
                return False
            if high is None or high < 0:
                return True  # not fetched yet: wait (at most idle_seconds)
            return bool(next_offset < high)

        return more_expected

    # -- dispatch ------------------------------------------------------------------------

    def _dispatch(self, stream: Any, event: Any) -> None:
        key = event.message.key
        key = key if isinstance(key, bytes) else b""
        self._outstanding += 1
        queue = self._queues.get(key)
        if queue is not None:
            queue.append((stream, event))
            return
        queue = deque([(stream, event)])
        self._queues[key] = queue
        task = asyncio.ensure_future(self._run(key, queue))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: bytes, queue: deque[tuple[Any, Any]]) -> None:
        try:
            while queue:
                stream, event = queue[0]
                async with self._slots:
                    await self.process(event)
                await self.acks.done(stream, event)
                queue.popleft()
                self._outstanding -= 1
                self._changed.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # As an exception in an agent: the worker stops rather than skip a record.
            log.exception("processing an input record failed; stopping the worker")
            await self.app.crash(exc)
            raise
        finally:
            if self._queues.get(key) is queue:
                del self._queues[key]
