"""Input partitions without a committed offset are read again after Faust drops records.

Faust drops records it fetched while its flow was stopped or its generation changed and
counts on a seek to the committed offsets to have them read again; aiokafka does not seek
a partition that has no committed offset, and Faust then commits past the records it
never delivered (no head-gap check without a committed offset). The two-worker fault case
lost 318-326 of 551 events that way (streams/adapters/faust_recovery.py).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree

from streams.adapters.faust_recovery import (
    RewindingConsumer,
    rewind_uncommitted,
    settling_consumer,
)

VITALS3 = TP("vigil.vitals", 3)


def _offsets(committed: int | None, acked: list[int]) -> Any:
    stub = SimpleNamespace(
        _acked=defaultdict(list),
        _acked_index=defaultdict(set),
        _gap=defaultdict(IntervalTree),
        _committed_offset=defaultdict(lambda: None),
    )
    stub._acked[VITALS3] = list(acked)
    stub._acked_index[VITALS3] = set(acked)
    stub._committed_offset[VITALS3] = committed
    return stub


def test_faust_commits_past_a_head_gap_only_without_a_committed_offset() -> None:
    # Records 0-35 were fetched and dropped; 36-38 were processed and acknowledged.
    assert Consumer._new_offset(_offsets(None, [36, 37, 38]), VITALS3) == 39  # 0-35 skipped
    assert Consumer._new_offset(_offsets(0, [36, 37, 38]), VITALS3) == 39  # 0 reads as none
    assert Consumer._new_offset(_offsets(20, [36, 37, 38]), VITALS3) is None  # gap held


class _Thread:
    def __init__(self, committed: dict[TP, int | None]) -> None:
        self.committed = committed
        self.rewound: list[TP] = []

    async def seek_to_committed(self) -> dict[TP, int | None]:
        return self.committed

    async def seek_to_beginning(self, *tps: TP) -> None:
        self.rewound.extend(tps)


def test_rewind_only_acking_partitions_without_a_committed_offset() -> None:
    committed = {
        TP("vigil.vitals", 3): None,
        TP("vigil.labs", 3): 0,
        TP("vigil.vitals", 4): 84,
        TP("vigil-patients-changelog", 3): None,
    }
    thread = _Thread(committed)
    acking = {"vigil.vitals", "vigil.labs"}.__contains__
    rewound = asyncio.run(rewind_uncommitted(thread, committed, acking))
    assert rewound == thread.rewound == [TP("vigil.vitals", 3), TP("vigil.labs", 3)]


def test_rewinding_consumer_seeks_to_committed_then_rewinds() -> None:
    committed = {TP("vigil.vitals", 3): None, TP("vigil.vitals", 4): 84}
    thread = _Thread(committed)
    consumer = SimpleNamespace(
        _thread=thread, app=SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=bool))
    )
    result = asyncio.run(RewindingConsumer.seek_to_committed(consumer))  # type: ignore[arg-type]
    assert result == committed
    assert thread.rewound == [TP("vigil.vitals", 3)]


def test_settling_consumer_settles_the_input_then_commits_instead_of_waiting() -> None:
    """Before a hand-over or a stop, Faust waits for every delivered record to be
    acknowledged; the worker's consumer settles its own input (finish what was released,
    give up what is held) and then commits, without waiting for the held records."""
    trace: list[str] = []

    async def settle() -> None:
        trace.append("settle")

    async def commit_and_end_transactions() -> None:
        trace.append("commit")

    consumer = SimpleNamespace(commit_and_end_transactions=commit_and_end_transactions)
    cls = settling_consumer(settle)
    assert issubclass(cls, RewindingConsumer)
    asyncio.run(cls.wait_empty(consumer))
    assert trace == ["settle", "commit"]
