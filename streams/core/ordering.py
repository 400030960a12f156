"""Event-time order across the co-partitioned input topics (pure: no Kafka here).

Vitals, labs, ADT and imaging arrive on separate topics, and Kafka orders records only
within one partition. A consumer working through a backlog reads each topic at its own
pace: one fetch of a labs partition spans many more hours of event time than one of a
vitals partition, so labs run hours ahead. Applied in that arrival order, a patient's
state is scored at a lab's time while its vitals are hours behind, and an ADT discharge
read early makes every later record due at once (``docs/ood.md``, "In the stream").

:class:`InputMerger` holds the records of each partition number and releases them in
``(event time, topic rank, offset)`` order. A record is released once every other input
topic of the same partition number either has a later record held here (so nothing
earlier can still come from it: a partition is read in offset order and, within the
lateness bound, in event-time order), or has nothing more to deliver (caught up), or has
been silent for ``idle_seconds`` (a stuck or unassigned topic must not stall the others).
This is the timestamp-ordered partition group of Kafka Streams with its
``max.task.idle.ms``, kept per worker process. What "caught up" means is the adapter's
business (``streams.adapters.input_order``): it is passed in as a callable.

Records whose event time cannot be read are released at once: they are dead-lettered
whatever their position.
"""

from __future__ import annotations

import enum
import heapq
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
        self._heaps: dict[int, list[_Held[T]]] = {}
        self._held: dict[tuple[str, int], int] = {}
        self._next_offset: dict[tuple[str, int], int] = {}
        self._last_arrival_s: dict[tuple[str, int], float] = {}
        self._seq = 0
        self.forced = 0
        """Records released early because a partition held ``max_held``."""
        self.idled = 0
        """Records released because another topic was silent for ``idle_seconds``."""

    def __len__(self) -> int:
        return sum(len(heap) for heap in self._heaps.values())

    def add(
        self, item: T, *, kind: str, partition: int, offset: int, event_ms: int | None, now_s: float
    ) -> None:
        """Hold one record (``now_s``: a monotonic clock, seconds)."""
        if kind not in self._rank:
            raise ValueError(f"unknown input kind {kind!r}")
        tp = (kind, partition)
        self._seq += 1
        when = _UNREADABLE_MS if event_ms is None else event_ms
        held = _Held((when, self._rank[kind], offset), self._seq, kind, now_s, item)
        heapq.heappush(self._heaps.setdefault(partition, []), held)
        self._held[tp] = self._held.get(tp, 0) + 1
        self._next_offset[tp] = max(self._next_offset.get(tp, 0), offset + 1)
        self._last_arrival_s[tp] = now_s

    def release(self, now_s: float, more_expected: MoreExpected) -> list[T]:
        """The records that may go now, in release order (per partition number)."""
        out: list[T] = []
        for partition, heap in self._heaps.items():
            while heap:
                if len(heap) > self.max_held:
                    self.forced += 1
                else:
                    verdict = self._verdict(heap[0], partition, now_s, more_expected)
                    if verdict is _Verdict.WAIT:
                        break
                    if verdict is _Verdict.IDLE:
                        self.idled += 1
                out.append(self._pop(partition, heap))
        self._heaps = {p: heap for p, heap in self._heaps.items() if heap}
        return out

    def release_all(self) -> list[T]:
        """Everything held, in order per partition number (a rebalance or a stop: held
        records must be processed and acknowledged before the partitions go)."""
        out: list[T] = []
        for partition, heap in self._heaps.items():
            while heap:
                out.append(self._pop(partition, heap))
        self._heaps = {}
        return out

    def forget(self, tps: Iterable[tuple[str, int]]) -> None:
        """Drop what is known of partitions no longer assigned (their held records must
        have been released first)."""
        for tp in tps:
            self._next_offset.pop(tp, None)
            self._last_arrival_s.pop(tp, None)

    def _pop(self, partition: int, heap: list[_Held[T]]) -> T:
        held = heapq.heappop(heap)
        tp = (held.kind, partition)
        left = self._held[tp] - 1
        if left:
            self._held[tp] = left
        else:
            del self._held[tp]
        return held.item

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
            if self._held.get(tp):
                continue  # a held record of that topic is at or after the head
            if not more_expected(kind, partition, self._next_offset.get(tp)):
                continue  # caught up (or not assigned here)
            silent_since = max(self._last_arrival_s.get(tp, head.arrived_s), head.arrived_s)
            if now_s - silent_since >= self.idle_seconds:
                verdict = _Verdict.IDLE
                continue
            return _Verdict.WAIT
        return verdict
