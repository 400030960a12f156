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

:class:`RewindingConsumer` closes the same kind of hole for input partitions that have no
committed offset yet. Faust drops records it fetched while its flow was stopped or its
generation changed (recovery is such a time) and relies on "seek to the committed
offsets" to have them read again, but aiokafka's ``seek_to_committed`` leaves a partition
without a committed offset where it is, so those records were never read, and Faust then
committed past them (with no committed offset it does not check for a gap at the head).
In the two-worker fault case a worker killed before its first commit handed its
partitions over that way: the survivor started at the offsets the fetcher had reached
during its recovery and committed them, and every record before went uncited.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer

__all__ = [
    "RewindingConsumer",
    "SeekFirstRecovery",
    "SeekFirstTableManager",
    "rewind_uncommitted",
    "settling_consumer",
]


class SeekFirstRecovery(Recovery):
    """Recovery that keeps the flow stopped until the stream partitions are seeked."""

    async def _resume_streams(self, generation_id: int = 0) -> None:
        self.app.consumer.stop_flow()
        await super()._resume_streams(generation_id)

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        self.app.consumer.stop_flow()
        await super().on_recovery_completed(generation_id)


class SeekFirstTableManager(TableManager):
    """Table manager whose recovery is :class:`SeekFirstRecovery`."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekFirstRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


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
    partitions that have none (see the module docstring)."""

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
