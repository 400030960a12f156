"""The input agents' records, processed in event-time order per partition number.

The Faust side of :class:`streams.core.ordering.InputMerger`. Each input agent hands its
records to :meth:`OrderedIngest.offer`; the merger releases them in event-time order
across the co-partitioned topics; released records are gathered into batches, applied
one batch at a time in release order (``VigilWorker.process_batch``), the next batch
overlapping only the previous one's wait for Kafka. A record is acknowledged to Faust
only after its batch's outputs and states are in Kafka and every earlier record of its
topic partition is acknowledged too (:class:`InOrderAcks`), so a committed offset never
runs ahead of the outputs and state it produced (``docs/worker.md``).

"Caught up" comes from the consumer: a topic partition assigned here whose high
watermark is not beyond the next offset the merger expects (or, before any record of it
arrived, beyond the group's committed offset) has nothing more to deliver. When the
consumer stops its flow (a rebalance or a stop), :meth:`OrderedIngest.settle` finishes
the released records and gives up the held ones unacknowledged, so the next owner of the
partition reads them again and merges them in order (``docs/worker.md``, "Rebalances").
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from streams.core.ordering import InputMerger, MoreExpected
from streams.metrics import WorkerMetrics

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

    def discard(self, events: list[Any]) -> None:
        """Forget records that were taken and will never be processed here (given up at a
        rebalance: they are read again after it); they must be the newest taken of their
        topic partitions, so nothing taken before them waits on them."""
        dropped: dict[tuple[str, int], list[int]] = {}
        for event in events:
            message = event.message
            dropped.setdefault((message.topic, message.partition), []).append(message.offset)
        for tp, offsets in dropped.items():
            taken = self._taken.get(tp, [])
            for offset in offsets:
                taken.remove(offset)
            heapq.heapify(taken)
            if not taken:
                self._taken.pop(tp, None)
                if not self._done.get(tp):
                    self._done.pop(tp, None)

    @property
    def pending(self) -> int:
        """Records taken and not yet acknowledged."""
        return sum(len(offsets) for offsets in self._taken.values())


def _nothing_expected(kind: str, partition: int, next_offset: int | None) -> bool:
    return False


class OrderedIngest:
    """Merges the input agents' records, processes them in batches, acknowledges them.

    Released records are gathered into batches (up to ``batch_max_records``, waiting at
    most ``batch_max_ms`` for more once the first is there) and handed to
    ``process_batch`` one batch at a time: records of one patient keep their release
    order inside a batch and batches never overlap, so the core sees each patient's
    records in order while a whole batch shares one model call per model and one
    changelog write per patient. ``process_batch`` returns once the batch is applied and
    its outputs sent, with an awaitable that completes once its outputs and states are
    in Kafka (its durability); the batch is acknowledged, record by record in offset
    order per topic partition (:class:`InOrderAcks`), only after that. The next batch is
    processed meanwhile, but a third waits until the first is acknowledged: at most one
    batch is on its way to Kafka while the next is applied.

    A batch waits ``batch_max_ms`` to fill, or ``batch_max_ms_behind`` while the worker
    is behind: its input partitions hold at least ``batch_max_records`` records beyond
    what it has taken (from the consumer's high watermarks), counting what is held and
    ready here. Live input keeps the short wait (latency); a backlog gets batches many
    times larger, whose per-batch work (one state write per patient, one request per
    model, one wait for Kafka) is shared by more records.

    While a batch is processed the next one fills; when more than
    ``2 * batch_max_records`` records wait, the agents stop taking records
    (back-pressure): a worker that falls behind reads more slowly and its batches grow,
    it never drops or degrades work.

    Args:
        app: The Faust app (its consumer says what is assigned and caught up).
        kinds_by_topic: Input topic name to kind name (``vitals``, ...).
        kind_order: Kind names in tie-break order.
        process_batch: Processes a list of Faust events (``VigilWorker.process_batch``).
        batch_max_records: Most records per batch.
        batch_max_ms: Longest wait, in milliseconds, to fill a batch.
        batch_max_ms_behind: The same while the worker is behind.
        idle_seconds: See :class:`~streams.core.ordering.InputMerger`.
        max_held: See :class:`~streams.core.ordering.InputMerger`.
        event_time_order: False releases every record as soon as it is offered (arrival
            order; ``VIGIL_INPUT_EVENT_TIME_ORDER=false``).
        metrics: Where to count records released out of order or given up, and batches
            filled while behind (none in unit tests).
    """

    def __init__(
        self,
        app: Any,
        *,
        kinds_by_topic: dict[str, str],
        kind_order: tuple[str, ...],
        process_batch: Callable[[list[Any]], Awaitable[Awaitable[None] | None]],
        batch_max_records: int,
        batch_max_ms: float,
        idle_seconds: float,
        max_held: int,
        event_time_order: bool = True,
        batch_max_ms_behind: float | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.app = app
        self.kinds_by_topic = kinds_by_topic
        self.topic_of = {kind: topic for topic, kind in kinds_by_topic.items()}
        self.process_batch = process_batch
        self.merger: InputMerger[tuple[Any, Any]] = InputMerger(
            kind_order, idle_seconds=idle_seconds, max_held=max_held
        )
        self.event_time_order = event_time_order
        self.acks = InOrderAcks()
        self.batch_max_records = batch_max_records
        self.batch_max_s = batch_max_ms / 1000
        self.batch_max_s_behind = (
            self.batch_max_s if batch_max_ms_behind is None else batch_max_ms_behind / 1000
        )
        self._last_offered: dict[tuple[str, int], int] = {}
        self._limit = 2 * batch_max_records
        self._ready: deque[tuple[Any, Any]] = deque()
        self._outstanding = 0
        self._changed = asyncio.Event()
        self._arrived = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._waiting = 0
        self._paused_since = 0.0
        self._paused_total = 0.0
        self.batches = 0
        """Batches processed so far."""
        self._failed = False
        self.metrics = metrics

    # -- the agents' side ------------------------------------------------------------------

    async def offer(self, stream: Any, event: Any) -> None:
        """Take one record from an input agent; returns once there is room for more."""
        if self._stopping():
            # Partitions are being handed over (or the worker stops): a record delivered
            # now is neither held nor acknowledged, so it is read again from the
            # committed offset, as Faust does with records it fetched meanwhile.
            self._gave_up(1)
            return
        self.acks.take(event)
        message = event.message
        self._last_offered[(message.topic, message.partition)] = message.offset
        if self.event_time_order:
            value = message.value if isinstance(message.value, bytes) else b""
            self.merger.add(
                (stream, event),
                kind=self.kinds_by_topic[message.topic],
                partition=message.partition,
                offset=message.offset,
                event_ms=event_time_ms(value),
                now_s=self._clock(),
            )
            self._release(message.partition)
        else:
            self._dispatch(stream, event)
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
        """Release everything held and wait until every record is processed (a test
        context, which has no consumer to read records again)."""
        for stream, event in self.merger.release_all():
            self._dispatch(stream, event)
        while self._outstanding:
            self._changed.clear()
            await self._changed.wait()

    async def settle(self, *, giving_up: Callable[[], bool] = lambda: False) -> None:
        """Before partitions are handed over (a rebalance) or the worker stops: give up
        the records held for ordering and finish the ones already released.

        Released records form a prefix of each topic partition (the merger keeps offset
        order within one), so once they are processed and acknowledged the consumer
        commits exactly up to the first held record. The held ones are neither processed
        nor acknowledged: whoever owns the partition next reads them again from that
        offset and merges them in event-time order. Releasing them all at once instead
        applied a topic that had been read ahead (a discharge, hours of labs) before the
        records it was held for, and two workers then scored differently from one.

        Args:
            giving_up: True once waiting is pointless (the consumer stops for good).
        """
        held = self.merger.discard()
        self._last_offered.clear()
        if held:
            self.acks.discard([event for _, event in held])
            self._gave_up(len(held))
            log.info("gave up %d records held for ordering; they are read again", len(held))
        while self._outstanding and not self._failed and not giving_up():
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), _FLUSH_EVERY_S)

    def _gave_up(self, records: int) -> None:
        if self.metrics is not None:
            self.metrics.input_order.labels("given_up").inc(records)

    # -- merging -------------------------------------------------------------------------

    def _release(self, partition: int | None = None) -> None:
        """Release what may go: of ``partition`` only, after a record of it arrived (an
        arrival changes no other partition's verdicts), else of every partition (the
        clock: idle topics, topics that caught up)."""
        if self._stopping():
            # Partitions are being handed over or the worker stops: what is held waits
            # for :meth:`settle`, which gives it up (it is read again).
            return
        merger = self.merger
        forced, idled = merger.forced, merger.idled
        released = merger.release(self._clock(), self._more_expected_now(), partition=partition)
        if self.metrics is not None and (merger.forced > forced or merger.idled > idled):
            self.metrics.input_order.labels("forced").inc(merger.forced - forced)
            self.metrics.input_order.labels("idled").inc(merger.idled - idled)
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
        the consumer as it is now (its assignment read once per release, and only when
        the merger asks: most releases never do)."""
        try:
            consumer = self.app.consumer
        except Exception:  # noqa: BLE001 - no running consumer (agent test context)
            return _nothing_expected
        assignment: dict[Any, Any] | None = None

        def more_expected(kind: str, partition: int, next_offset: int | None) -> bool:
            nonlocal assignment
            if assignment is None:
                try:
                    # A TP is a named tuple: keyed by itself, a plain (topic, partition)
                    # finds it.
                    assignment = {tp: tp for tp in consumer.assignment()}
                except Exception:  # noqa: BLE001 - no running consumer (agent test context)
                    assignment = {}
            topic = self.topic_of.get(kind)
            tp = None if topic is None else assignment.get((topic, partition))
            if tp is None:
                return False  # not assigned here: nothing to wait for
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

    # -- batches -------------------------------------------------------------------------

    def _dispatch(self, stream: Any, event: Any) -> None:
        self._outstanding += 1
        self._ready.append((stream, event))
        self._arrived.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.ensure_future(self._batches())

    def _behind(self) -> bool:
        """Whether at least a full batch of input waits: records held and ready here, plus
        what the assigned input partitions hold beyond the last record taken from each
        (high watermark from the consumer's last fetch; nothing without a consumer)."""
        waiting = len(self._ready) + len(self.merger)
        if waiting >= self.batch_max_records:
            return True
        try:
            consumer = self.app.consumer
            assignment = consumer.assignment()
        except Exception:  # noqa: BLE001 - no running consumer (agent test context)
            return False
        for tp in assignment:
            last = self._last_offered.get((tp.topic, tp.partition))
            if last is None:
                continue  # nothing taken from it yet (or an output/changelog partition)
            try:
                high = consumer.highwater(tp)
            except Exception:  # noqa: BLE001, S112 - revoked meanwhile
                continue
            if high is not None and high > last + 1:
                waiting += high - last - 1
                if waiting >= self.batch_max_records:
                    return True
        return False

    async def _take_batch(self) -> list[tuple[Any, Any]]:
        """The next batch: what is ready now, topped up for at most ``batch_max_ms`` (or
        ``batch_max_ms_behind`` while the worker is behind)."""
        while not self._ready:
            self._arrived.clear()
            await self._arrived.wait()
        wait_s = self.batch_max_s
        if self.batch_max_s_behind > wait_s and self._behind():
            wait_s = self.batch_max_s_behind
            if self.metrics is not None:
                self.metrics.batches_behind.inc()
        deadline = time.monotonic() + wait_s
        while len(self._ready) < self.batch_max_records:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        count = min(len(self._ready), self.batch_max_records)
        return [self._ready.popleft() for _ in range(count)]

    async def _batches(self) -> None:
        finishing: asyncio.Task[bool] | None = None
        try:
            while True:
                batch = await self._take_batch()
                if self._failed:
                    return  # a batch did not reach Kafka: the worker is stopping
                durable = await self.process_batch([event for _, event in batch])
                if finishing is not None and not await finishing:
                    return
                # At most one batch on its way to Kafka while the next one is applied.
                finishing = asyncio.ensure_future(self._finish(batch, durable))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # As an exception in an agent: the worker stops rather than skip a record.
            # app.crash stops the worker; the batch is never acknowledged, and no later
            # one is processed (a record arriving meanwhile starts no new loop's work).
            self._failed = True
            log.exception("processing a batch of input records failed; stopping the worker")
            await self.app.crash(exc)

    async def _finish(self, batch: list[tuple[Any, Any]], durable: Awaitable[None] | None) -> bool:
        """Acknowledge a batch once its outputs and states are in Kafka; False (and the
        worker stopped) when they did not get there."""
        try:
            if durable is not None:
                await durable
        except Exception as exc:
            self._failed = True
            log.exception("a batch's outputs or states did not reach Kafka; stopping the worker")
            await self.app.crash(exc)
            return False
        self.batches += 1
        for stream, event in batch:
            await self.acks.done(stream, event)
        self._outstanding -= len(batch)
        self._changed.set()
        return True
