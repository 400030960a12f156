"""Event-time order across the co-partitioned input topics (pure: no Kafka here).

Vitals, labs, ADT and imaging arrive on separate topics, and Kafka orders records only
within one partition. A consumer working through a backlog reads each topic at its own
pace: one fetch of a labs partition spans many more hours of event time than one of a
vitals partition, so labs run hours ahead. Applied in that arrival order, a patient's
state is scored at a lab's time while its vitals are hours behind, and an ADT discharge
read early makes every later record due at once (``docs/ood.md``, "In the stream").

:class:`InputMerger` holds the records of each topic partition in a queue, in offset
order, and releases, per partition number, the queue head that comes first in
``(event time, topic rank, offset)`` order. Within one topic partition the offset order
is kept: a record that arrives late on its topic stays late (the lateness bound then
dead-letters it as it would without the merger), and what is released never depends on
how much happened to be held. A head is released once every other input topic of the same
partition number either has a record held here (its next record is at or after the head,
as far as that topic is in event-time order), or has nothing more to deliver (caught up),
or has been silent for ``idle_seconds`` (a stuck or unassigned topic must not stall the
others).
This is the timestamp-ordered partition group of Kafka Streams with its
``max.task.idle.ms``, kept per worker process. What "caught up" means is the adapter's
business (``streams.adapters.input_order``): it is passed in as a callable.

Records whose event time cannot be read go as soon as they reach the head of their
queue: they are dead-lettered whatever their position.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["InputMerger", "MoreExpected"]

T = TypeVar("T")

MoreExpected = Callable[[str, int, "int | None"], bool]
"""``(topic kind, partition, next offset or None) -> bool``: True when that partition of
that input topic may still deliver records at or after the offset (it is assigned here
and not caught up)."""

_UNREADABLE_MS = -(2**62)  # sorts first: released at once


class _Verdict(enum.Enum):
    GO = "go"
    WAIT = "wait"
    IDLE = "idle"  # go, because a topic that could still deliver earlier was silent


@dataclass(order=True, slots=True)
class _Held(Generic[T]):
    key: tuple[int, int, int]  # (event time ms, topic rank, offset)
    seq: int
    kind: str = field(compare=False)
    arrived_s: float = field(compare=False)
    item: T = field(compare=False)


class InputMerger(Generic[T]):
    """Holds input records per partition number; releases them in event-time order.

    Args:
        kinds: The input topic kinds, in tie-break order (at equal event time the first
            kind is released first).
        idle_seconds: A topic partition that delivered nothing for this long (and whose
            held head waited as long) no longer holds the others back.
        max_held: Per partition number; beyond it the earliest record is released
            regardless (bounded memory when one topic is far ahead).
    """

    def __init__(self, kinds: Sequence[str], *, idle_seconds: float, max_held: int) -> None:
        if not kinds:
            raise ValueError("at least one input kind is needed")
        if idle_seconds < 0 or max_held < 1:
            raise ValueError("idle_seconds must be >= 0 and max_held >= 1")
        self.kinds = tuple(kinds)
        self._rank = {kind: rank for rank, kind in enumerate(self.kinds)}
        self.idle_seconds = idle_seconds
        self.max_held = max_held
        self._queues: dict[int, dict[str, deque[_Held[T]]]] = {}
        self._next_offset: dict[tuple[str, int], int] = {}
        self._last_arrival_s: dict[tuple[str, int], float] = {}
        self._seq = 0
        self.forced = 0
        """Records released early because a partition held ``max_held``."""
        self.idled = 0
        """Records released because another topic was silent for ``idle_seconds``."""

    def __len__(self) -> int:
        return sum(len(q) for queues in self._queues.values() for q in queues.values())

    def add(
        self, item: T, *, kind: str, partition: int, offset: int, event_ms: int | None, now_s: float
    ) -> None:
        """Hold one record (``now_s``: a monotonic clock, seconds). Records of one topic
        partition must be added in offset order."""
        if kind not in self._rank:
            raise ValueError(f"unknown input kind {kind!r}")
        tp = (kind, partition)
        self._seq += 1
        when = _UNREADABLE_MS if event_ms is None else event_ms
        held = _Held((when, self._rank[kind], offset), self._seq, kind, now_s, item)
        self._queues.setdefault(partition, {}).setdefault(kind, deque()).append(held)
        self._next_offset[tp] = max(self._next_offset.get(tp, 0), offset + 1)
        self._last_arrival_s[tp] = now_s

    def release(
        self, now_s: float, more_expected: MoreExpected, partition: int | None = None
    ) -> list[T]:
        """The records that may go now, in release order (per partition number).

        Args:
            now_s: A monotonic clock, seconds.
            more_expected: Whether a topic partition may still deliver.
            partition: Only this partition number (the one a record was just added to:
                an arrival changes no other partition's verdicts); None for all of them
                (on a clock, for idle topics and topics that caught up).
        """
        out: list[T] = []
        if partition is None:
            chosen = list(self._queues.items())
        else:
            queues_of = self._queues.get(partition)
            chosen = [] if queues_of is None else [(partition, queues_of)]
        for partition_number, queues in chosen:
            out.extend(self._release_partition(partition_number, queues, now_s, more_expected))
        self._prune(number for number, _ in chosen)
        return out

    def _release_partition(
        self,
        partition: int,
        queues: dict[str, deque[_Held[T]]],
        now_s: float,
        more_expected: MoreExpected,
    ) -> list[T]:
        out: list[T] = []
        count = sum(len(q) for q in queues.values())
        while count:
            head = min(q[0] for q in queues.values() if q)
            if count > self.max_held:
                self.forced += 1
            else:
                verdict = self._verdict(head, partition, now_s, more_expected)
                if verdict is _Verdict.WAIT:
                    break
                if verdict is _Verdict.IDLE:
                    self.idled += 1
            out.append(queues[head.kind].popleft().item)
            count -= 1
        return out

    def release_all(self) -> list[T]:
        """Everything held, in order per partition number (a stop of a test context that
        must process every record it took)."""
        out: list[T] = []
        for queues in self._queues.values():
            while any(queues.values()):
                head = min(q[0] for q in queues.values() if q)
                out.append(queues[head.kind].popleft().item)
        self._queues = {}
        return out

    def discard(self) -> list[T]:
        """Give up everything held without releasing it, and forget what is known of every
        topic partition (a rebalance or a stop: the records were not processed, so their
        offsets are not committed, and whoever owns the partitions next reads them again
        and merges them afresh). Returns the records given up, in no particular order."""
        out = [held.item for queues in self._queues.values() for q in queues.values() for held in q]
        self._queues = {}
        self._next_offset.clear()
        self._last_arrival_s.clear()
        return out

    def _prune(self, partitions: Iterable[int]) -> None:
        """Forget the given partition numbers' queues once they hold nothing."""
        for partition in partitions:
            queues = self._queues.get(partition)
            if queues is not None and not any(queues.values()):
                del self._queues[partition]

    def _held(self, kind: str, partition: int) -> bool:
        queue = self._queues.get(partition, {}).get(kind)
        return bool(queue)

    def _verdict(
        self, head: _Held[T], partition: int, now_s: float, more_expected: MoreExpected
    ) -> _Verdict:
        if head.key[0] == _UNREADABLE_MS:
            return _Verdict.GO
        verdict = _Verdict.GO
        for kind in self.kinds:
            if kind == head.kind:
                continue
            tp = (kind, partition)
            if self._held(kind, partition):
                continue  # that topic's next record is held, at or after the head
            if not more_expected(kind, partition, self._next_offset.get(tp)):
                continue  # caught up (or not assigned here)
            silent_since = max(self._last_arrival_s.get(tp, head.arrived_s), head.arrived_s)
            if now_s - silent_since >= self.idle_seconds:
                verdict = _Verdict.IDLE
                continue
            return _Verdict.WAIT
        return verdict
