"""Faust table recovery that cannot lose the records fetched while it seeks.

After a rebalance Faust restores the tables, then resumes the stream partitions, seeks
them to their committed offsets, clears the stream buffers and resumes the flow, in that
order. The message flow is already running then (it was resumed to read the changelog),
so records fetched between the resume and the end of the seek reach the stream buffers
and advance Faust's read offsets; clearing the buffers drops them, and when Kafka sends
them again the read offsets say they were already read, so Faust skips them and counts
the skipped range as acknowledged. A restarted worker lost about one fetch per partition
that way (docs/worker.md, "Restarts").

:class:`SeekFirstRecovery` stops the flow before the stream partitions are resumed, so
nothing is delivered until the seek is done; Faust resumes the flow itself afterwards.
It also seeks the active changelog partitions only once no fetch is outstanding
(``RewindingConsumer.fetch_idle``): a fetch issued before a rebalance stopped the flow
can finish after the seek, draining the changelog partitions past their records, which
Faust then drops because the flow is stopped. Recovery then waited for them for ever.

:class:`RewindingConsumer` closes the same kind of hole for input partitions that have no
committed offset yet. Faust drops records it fetched while its flow was stopped or its
generation changed (recovery is such a time) and relies on "seek to the committed
offsets" to have them read again, but aiokafka's ``seek_to_committed`` leaves a partition
without a committed offset where it is, so those records were never read, and Faust then
committed past them (with no committed offset it does not check for a gap at the head).
In the two-worker fault case a worker killed before its first commit handed its
partitions over that way: the survivor started at the offsets the fetcher had reached
during its recovery and committed them, and every record before went uncited.

The recovery watchdog (:func:`watched_table_manager`) handles the recovery that stops
receiving records. Faust waits for every active changelog partition to reach its
highwater and only logs "No event received for active tp" while it waits; a worker whose
fetcher no longer delivers a partition's records (paused, flow stopped, or records fetched
and then dropped by a rebalance) holds its partitions and scores nothing, indefinitely.
This was seen in the two-worker fault case (the survivor's recovery of the killed
worker's changelog partitions; docs/reliability.md). When an active partition with
records left has received none for ``stall_seconds``, the watchdog logs where it stands,
resumes it and the flow, and seeks it again to the last offset read. After ``kicks``
such attempts in a row, with no record from any active partition in between, it stops
the worker (:class:`~vigil.errors.RecoveryError`), so that whatever supervises it starts
a fresh member rather than leave the partitions held. Attempts made while the broker does
not answer are not counted: waiting out an outage is the consumer's job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka.errors import KafkaError
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from mode import Service

from vigil.errors import RecoveryError

__all__ = [
    "RewindingConsumer",
    "SeekFirstRecovery",
    "SeekFirstTableManager",
    "rewind_uncommitted",
    "settling_consumer",
    "stalled_partitions",
    "watched_table_manager",
]

log = logging.getLogger(__name__)

#: Longest wait for an outstanding fetch before recovery seeks (a fetch waits at most
#: about a second for records once the group has its new assignment).
FETCH_IDLE_TIMEOUT_SECONDS = 10.0


class SeekFirstRecovery(Recovery):
    """Recovery that keeps the flow stopped until the stream partitions are seeked, and
    that seeks the active changelog partitions only once no fetch is outstanding."""

    async def _seek_offsets(self, consumer: Any, tps: Any, offsets: Any, title: str) -> None:
        idle = getattr(consumer, "fetch_idle", None)
        if title == "active" and idle is not None:
            # A fetch issued before the flow stopped can still be running (aiokafka holds
            # it while the group reassigns, then lets it drain every assigned partition).
            # Its records are dropped, the flow being stopped, but the fetch position has
            # moved past them: a changelog partition sought before that happens is left
            # past its records, and recovery waits for them for ever. No new fetch starts
            # while the flow is stopped, so once this one is over the seek holds.
            try:
                await asyncio.wait_for(idle.wait(), timeout=FETCH_IDLE_TIMEOUT_SECONDS)
            except TimeoutError:
                log.warning(
                    "table recovery: a fetch was still outstanding after %.0f s; seeking anyway",
                    FETCH_IDLE_TIMEOUT_SECONDS,
                )
        await super()._seek_offsets(consumer, tps, offsets, title)

    async def _resume_streams(self, generation_id: int = 0) -> None:
        self.app.consumer.stop_flow()
        await super()._resume_streams(generation_id)

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        self.app.consumer.stop_flow()
        await super().on_recovery_completed(generation_id)


class SeekFirstTableManager(TableManager):
    """Table manager whose recovery is :class:`SeekFirstRecovery`."""

    recovery_class: type[Recovery] = SeekFirstRecovery

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = self.recovery_class(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


def stalled_partitions(
    remaining: Mapping[Any, int],
    last_record_at: Mapping[Any, float],
    *,
    started_at: float,
    now: float,
    stall_seconds: float,
) -> list[Any]:
    """The partitions with records still to read (``remaining`` > 0) that have received
    none for ``stall_seconds``, counted from the later of the recovery's start and their
    last record (monotonic seconds); in the order of ``remaining``."""
    return [
        tp
        for tp, left in remaining.items()
        if left > 0 and now - max(started_at, last_record_at.get(tp, started_at)) >= stall_seconds
    ]


def watched_table_manager(
    *,
    stall_seconds: float,
    kicks: int,
    check_seconds: float = 1.0,
    on_restart: Callable[[int], None] | None = None,
) -> type[SeekFirstTableManager]:
    """A :class:`SeekFirstTableManager` whose recovery has the watchdog of the module
    docstring: ``stall_seconds`` without a record on an active partition that has some
    left starts an attempt; ``kicks`` attempts that the broker answered, each followed by
    ``stall_seconds`` without a record from any active partition, stop the worker.
    ``on_restart`` is called with the number of partitions of each attempt (a metric)."""

    class WatchedRecovery(SeekFirstRecovery):
        _kicks_made = 0
        _kicked_at: float | None = None
        _watched_start: float | None = None
        _reading_since: float | None = None

        async def _seek_offsets(self, consumer: Any, tps: Any, offsets: Any, title: str) -> None:
            await super()._seek_offsets(consumer, tps, offsets, title)
            if title == "active":
                # Faust resumes the active changelog partitions and the flow right after
                # (nothing awaited in between): from here records should arrive. Before,
                # the partitions are still paused and the flow may be stopped on purpose.
                self._reading_since = time.monotonic()

        async def on_rebalance(self, *args: Any, **kwargs: Any) -> None:
            self._reading_since = None  # a new recovery starts: wait for its seek
            await super().on_rebalance(*args, **kwargs)

        def _set_recovery_ended(self) -> None:
            self._reading_since = None
            super()._set_recovery_ended()

        @Service.task
        async def _watch_stalls(self) -> None:
            while not self.should_stop:
                await self.sleep(check_seconds)
                try:
                    await self._check_stall(time.monotonic())
                except RecoveryError as exc:
                    await self.app.crash(exc)
                    return
                except Exception:  # a failed check must not end the watch
                    log.exception("the recovery watchdog's check failed")

        async def _check_stall(self, now: float) -> None:
            reading_since = self._reading_since
            if not self.in_recovery or reading_since is None:
                return
            received = self._active_events_received_at
            if reading_since != self._watched_start:  # a new recovery: a new count
                self._watched_start, self._kicks_made, self._kicked_at = reading_since, 0, None
            elif self._kicked_at is not None and any(
                t > self._kicked_at for t in received.values()
            ):
                # The recovery read something since the last attempt: a partition that is
                # merely slow while others are read (a large changelog) never stops it.
                self._kicks_made = 0
            stalled = stalled_partitions(
                self.active_remaining(),
                received,
                started_at=max(reading_since, self._kicked_at or reading_since),
                now=now,
                stall_seconds=stall_seconds,
            )
            if not stalled:
                return
            if self._kicks_made >= kicks:
                raise RecoveryError(
                    f"table recovery: no record for {stall_seconds:g} s from "
                    f"{_names(stalled)} (records left) after {kicks} attempt(s) to "
                    "restart them; stopping the worker"
                )
            await self._kick(stalled, now)

        async def _kick(self, stalled: list[Any], now: float) -> None:
            consumer: Any = self.app.consumer  # Faust's Consumer (ConsumerT lacks flow_active)
            reading_since = self._reading_since
            positions = await _positions(consumer, stalled)
            if not self.in_recovery or self._reading_since != reading_since:
                return  # the recovery ended or restarted while the positions were read
            state = ", ".join(
                f"{tp.topic}[{tp.partition}] read to {self.active_offsets.get(tp)} of "
                f"{self.active_highwaters.get(tp)}, fetch position {positions.get(tp)}"
                for tp in stalled
            )
            log.warning(
                "table recovery: no record for %.0f s from %s (flow %s); resuming and "
                "seeking them again (attempt %d of %d)",
                stall_seconds,
                state,
                "active" if consumer.flow_active else "stopped",
                self._kicks_made + 1,
                kicks,
            )
            self._kicked_at = now
            if on_restart is not None:
                on_restart(len(stalled))
            # Nothing awaited between the check above and these (no recovery step can run
            # in between): the stream partitions stay paused, only the flow is resumed.
            consumer.resume_partitions(set(stalled))
            self.app.flow_control.resume()
            consumer.resume_flow()
            await consumer.seek_wait(
                {tp: max(self.active_offsets.get(tp) or 0, 0) for tp in stalled}
            )
            # The seek is local to the client; only an attempt made while the broker
            # answers counts towards stopping the worker (an outage is waited out).
            try:
                await asyncio.wait_for(consumer.highwaters(*stalled), timeout=stall_seconds)
            except (TimeoutError, KafkaError) as exc:
                log.warning(
                    "table recovery: the broker did not answer (%s); attempt not counted",
                    type(exc).__name__,
                )
                return
            self._kicks_made += 1

    class WatchedTableManager(SeekFirstTableManager):
        recovery_class = WatchedRecovery

    return WatchedTableManager


async def _positions(consumer: Any, tps: list[Any]) -> dict[Any, int | None]:
    """The client's fetch position of each partition (None if it did not say within 2 s):
    a position past the highwater with nothing read means records were fetched and
    dropped."""
    out: dict[Any, int | None] = {}
    for tp in tps:
        try:
            out[tp] = await asyncio.wait_for(consumer.position(tp), timeout=2.0)
        except (TimeoutError, KafkaError):
            out[tp] = None
    return out


def _names(tps: list[Any]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in tps)


async def rewind_uncommitted(
    thread: Any, committed: Mapping[Any, int | None], acking: Callable[[str], bool]
) -> list[Any]:
    """Seek the partitions of acking (input) topics that have no committed offset (None,
    or 0, which aiokafka does not seek to either) to their first offset, as
    ``consumer_auto_offset_reset="earliest"`` would for a fresh assignment; returns them.
    Changelog partitions are left alone (Faust's recovery positions them)."""
    fresh = [tp for tp, offset in committed.items() if not offset and acking(tp.topic)]
    if fresh:
        await thread.seek_to_beginning(*fresh)
    return fresh


class RewindingConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer whose seek to the committed offsets also rewinds input
    partitions that have none (see the module docstring), and which says when no fetch is
    outstanding (``fetch_idle``, for :class:`SeekFirstRecovery`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetch_idle = asyncio.Event()
        self.fetch_idle.set()

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        self.fetch_idle.clear()
        try:
            return await super()._getmany(active_partitions, timeout)
        finally:
            # Faust's getmany decides (deliver or drop) before anything else runs: there
            # is no await between this return and its check of the flow.
            self.fetch_idle.set()

    async def seek_to_committed(self) -> Mapping[Any, int]:
        committed = await self._thread.seek_to_committed()
        await rewind_uncommitted(self._thread, committed, self.app.topics.acks_enabled_for)
        return committed


def settling_consumer(settle: Callable[[], Awaitable[None]]) -> type[RewindingConsumer]:
    """A :class:`RewindingConsumer` that settles the worker's own input instead of
    waiting for every record it delivered to be acknowledged.

    Before a rebalance hands partitions over, and when the worker stops, Faust waits
    until every record its agents took is acknowledged (``Consumer.wait_empty``), then
    commits. The worker holds records back to merge the input topics in event-time
    order, so waiting for all of them meant releasing them all at once, out of order.
    Here ``settle`` runs instead (``OrderedIngest.settle``: finish what was released,
    give up what was held), then the acknowledged offsets are committed: the held
    records stay uncommitted and are read again by whoever owns the partitions next.

    The offsets acknowledged before the rebalance are committed as it starts: Faust
    forgets a revoked partition's acknowledged offsets before it waits, and the next
    owner would otherwise read (and drop as duplicates) every record since the last
    periodic commit.
    """

    class SettlingConsumer(RewindingConsumer):
        async def on_partitions_revoked(self, revoked: set[Any]) -> None:
            await self.commit()
            await super().on_partitions_revoked(revoked)

        async def wait_empty(self) -> None:
            await settle()
            await self.commit_and_end_transactions()

    return SettlingConsumer
