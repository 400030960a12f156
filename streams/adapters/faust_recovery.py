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
"""

from __future__ import annotations

from faust.tables import TableManager
from faust.tables.recovery import Recovery

__all__ = ["SeekFirstRecovery", "SeekFirstTableManager"]


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
