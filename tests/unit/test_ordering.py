"""InputMerger: event-time order across co-partitioned topics, caught-up, idle, bounds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from streams.adapters.input_order import InOrderAcks, OrderedIngest, event_time_ms
from streams.core.ordering import InputMerger
from streams.metrics import WorkerMetrics

KINDS = ("adt", "vitals", "labs")


def _never(kind: str, partition: int, next_offset: int | None) -> bool:
    return False


def _always(kind: str, partition: int, next_offset: int | None) -> bool:
    return True


def _merger(**kwargs: Any) -> InputMerger[str]:
    return InputMerger(KINDS, idle_seconds=kwargs.pop("idle_seconds", 10.0), **kwargs, max_held=100)


def _lagging(*kinds: str) -> Any:
    def more(kind: str, partition: int, next_offset: int | None) -> bool:
        return kind in kinds

    return more


def test_a_lab_ahead_of_the_vitals_waits_for_them() -> None:
    merger = _merger()
    more = _lagging("vitals", "labs")  # both still have records to deliver; adt is caught up
    merger.add("lab@5h", kind="labs", partition=0, offset=0, event_ms=5_000, now_s=0.0)
    # The vitals partition may still deliver earlier records: the lab waits.
    assert merger.release(0.0, more) == []
    merger.add("vitals@2h", kind="vitals", partition=0, offset=0, event_ms=2_000, now_s=0.1)
    # The vitals record is the earliest; the lab still waits for a vitals record after it.
    assert merger.release(0.1, more) == ["vitals@2h"]
    merger.add("vitals@6h", kind="vitals", partition=0, offset=1, event_ms=6_000, now_s=0.2)
    assert merger.release(0.2, more) == ["lab@5h"]
    assert len(merger) == 1  # vitals@6h waits for the labs topic


def test_a_sparse_topic_with_a_held_record_does_not_block() -> None:
    merger = _merger()
    merger.add("discharge@60h", kind="adt", partition=0, offset=1, event_ms=60_000, now_s=0.0)
    merger.add("vitals@1h", kind="vitals", partition=0, offset=0, event_ms=1_000, now_s=0.0)
    merger.add("lab@2h", kind="labs", partition=0, offset=0, event_ms=2_000, now_s=0.0)
    # Every topic still lags, but each has a record held here: the earliest goes.
    assert merger.release(0.0, _always) == ["vitals@1h"]


def test_caught_up_topics_hold_nothing_back() -> None:
    merger = _merger()
    merger.add("lab", kind="labs", partition=3, offset=7, event_ms=5_000, now_s=0.0)
    assert merger.release(0.0, _never) == ["lab"]
    assert len(merger) == 0


def test_only_the_same_partition_number_is_waited_for() -> None:
    merger = _merger()
    seen: list[tuple[str, int, int | None]] = []

    def more(kind: str, partition: int, next_offset: int | None) -> bool:
        seen.append((kind, partition, next_offset))
        return partition == 1  # partition 1 of every topic lags; partition 2 is caught up

    merger.add("p2", kind="labs", partition=2, offset=0, event_ms=9_000, now_s=0.0)
    merger.add("p1", kind="labs", partition=1, offset=4, event_ms=1_000, now_s=0.0)
    assert merger.release(0.0, more) == ["p2"]
    assert ("adt", 1, None) in seen
    assert ("vitals", 2, None) in seen


def test_a_release_after_an_arrival_looks_at_that_partition_only() -> None:
    merger = _merger()
    asked: set[int] = set()

    def more(kind: str, partition: int, next_offset: int | None) -> bool:
        asked.add(partition)
        return False  # everything caught up: whatever is looked at goes

    merger.add("p1", kind="labs", partition=1, offset=0, event_ms=1_000, now_s=0.0)
    merger.add("p2", kind="labs", partition=2, offset=0, event_ms=1_000, now_s=0.0)
    assert merger.release(0.0, more, partition=2) == ["p2"]
    assert asked == {2}
    assert merger.release(0.0, more, partition=7) == []  # nothing held there
    assert merger.release(0.0, more) == ["p1"]  # the clock's release: every partition
    assert len(merger) == 0


def test_next_offset_tells_the_adapter_where_the_topic_is() -> None:
    merger = _merger()
    asked: dict[str, int | None] = {}

    def more(kind: str, partition: int, next_offset: int | None) -> bool:
        asked[kind] = next_offset
        return False

    merger.add("v", kind="vitals", partition=0, offset=41, event_ms=1, now_s=0.0)
    merger.release(0.0, more)
    merger.add("l", kind="labs", partition=0, offset=9, event_ms=2, now_s=0.0)
    merger.release(0.0, more)
    assert asked["vitals"] == 42
    assert asked["adt"] is None


def test_equal_times_follow_the_kind_order_then_the_offset() -> None:
    merger = _merger()
    merger.add("lab", kind="labs", partition=0, offset=0, event_ms=100, now_s=0.0)
    merger.add("vitals-a", kind="vitals", partition=0, offset=4, event_ms=100, now_s=0.0)
    merger.add("vitals-b", kind="vitals", partition=0, offset=5, event_ms=100, now_s=0.0)
    merger.add("admit", kind="adt", partition=0, offset=0, event_ms=100, now_s=0.0)
    assert merger.release(0.0, _never) == ["admit", "vitals-a", "vitals-b", "lab"]


def test_a_silent_topic_stops_holding_back_after_the_idle_time() -> None:
    merger = _merger(idle_seconds=5.0)
    merger.add("lab", kind="labs", partition=0, offset=0, event_ms=5_000, now_s=100.0)
    assert merger.release(104.9, _always) == []
    assert merger.release(105.0, _always) == ["lab"]
    assert merger.idled == 1


def test_a_topic_that_keeps_delivering_is_not_idle() -> None:
    merger = _merger(idle_seconds=5.0)
    merger.add("lab", kind="labs", partition=0, offset=0, event_ms=50_000, now_s=0.0)
    for step in range(1, 5):
        # Vitals keep coming, all earlier than the lab; the adt topic is caught up.
        merger.add(
            f"v{step}", kind="vitals", partition=0, offset=step, event_ms=step, now_s=4.0 * step
        )

        def more(kind: str, partition: int, next_offset: int | None) -> bool:
            return kind == "vitals"

        released = merger.release(4.0 * step, more)
        assert released == [f"v{step}"]
    assert len(merger) == 1
    assert merger.idled == 0


def test_the_bound_releases_the_earliest_regardless() -> None:
    merger: InputMerger[int] = InputMerger(KINDS, idle_seconds=60.0, max_held=3)
    for offset in range(5):
        merger.add(offset, kind="labs", partition=0, offset=offset, event_ms=offset, now_s=0.0)
    assert merger.release(0.0, _always) == [0, 1]
    assert merger.forced == 2
    assert len(merger) == 3


def test_unreadable_event_times_go_at_once_from_the_head_of_their_queue() -> None:
    merger = _merger()
    merger.add("bad", kind="vitals", partition=0, offset=0, event_ms=None, now_s=0.0)
    merger.add("later", kind="labs", partition=0, offset=0, event_ms=5_000, now_s=0.0)
    merger.add("bad too", kind="labs", partition=0, offset=1, event_ms=None, now_s=0.0)
    # "bad too" waits behind "later": the offset order of a topic partition is kept.
    assert merger.release(0.0, _always) == ["bad"]
    assert len(merger) == 2


def test_a_record_late_on_its_own_topic_stays_behind_the_earlier_offsets() -> None:
    """A late record must reach the core after the records its topic delivered before it
    (the lateness bound then judges it), however many of those are still held."""
    merger = _merger()
    more = _lagging("labs")
    merger.add("v@10h", kind="vitals", partition=0, offset=0, event_ms=10_000, now_s=0.0)
    merger.add("v@11h", kind="vitals", partition=0, offset=1, event_ms=11_000, now_s=0.0)
    merger.add("late v@1h", kind="vitals", partition=0, offset=2, event_ms=1_000, now_s=0.0)
    assert merger.release(0.0, more) == []  # labs may still deliver earlier records
    merger.add("lab@12h", kind="labs", partition=0, offset=0, event_ms=12_000, now_s=0.0)
    assert merger.release(0.0, more) == ["v@10h", "v@11h", "late v@1h", "lab@12h"]


def test_release_all_empties_in_order() -> None:
    merger: InputMerger[int] = InputMerger(KINDS, idle_seconds=1.0, max_held=100)
    for offset, ms in enumerate((30, 10, 20)):
        merger.add(ms, kind="labs", partition=0, offset=offset, event_ms=ms, now_s=0.0)
    merger.add(15, kind="vitals", partition=0, offset=0, event_ms=15, now_s=0.0)
    # Each topic partition in offset order; across them, the earlier head first.
    assert merger.release_all() == [15, 30, 10, 20]
    assert len(merger) == 0
    assert merger.release(0.0, _always) == []


def test_discard_gives_up_what_is_held_and_forgets_each_topic_partition() -> None:
    merger = _merger()
    merger.add("lab@5h", kind="labs", partition=0, offset=7, event_ms=5_000, now_s=0.0)
    merger.add("vitals@1h", kind="vitals", partition=1, offset=3, event_ms=1_000, now_s=0.0)
    assert sorted(merger.discard()) == ["lab@5h", "vitals@1h"]
    assert len(merger) == 0
    # Read again from an earlier offset after the hand-over: no trace of the old position
    # (the offset the merger expects next is unknown again, so "caught up" is asked
    # with None, the committed offset's case).
    asked: list[int | None] = []

    def more(kind: str, partition: int, next_offset: int | None) -> bool:
        asked.append(next_offset)
        return False

    merger.add("lab@4h", kind="labs", partition=0, offset=5, event_ms=4_000, now_s=1.0)
    assert merger.release(1.0, more) == ["lab@4h"]
    assert asked == [None, None]  # adt and vitals of partition 0 were never seen since


def test_unknown_kind_and_bad_parameters_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown input kind"):
        _merger().add("x", kind="imaging", partition=0, offset=0, event_ms=0, now_s=0.0)
    with pytest.raises(ValueError, match="at least one"):
        InputMerger((), idle_seconds=1.0, max_held=1)
    with pytest.raises(ValueError, match="max_held"):
        InputMerger(KINDS, idle_seconds=1.0, max_held=0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(KINDS), st.integers(0, 2), st.integers(0, 10_000)),
        min_size=1,
        max_size=60,
    ),
    st.randoms(use_true_random=False),
)
def test_interleaved_topics_come_out_in_event_time_order(
    records: list[tuple[str, int, int]], rng: Any
) -> None:
    """Each topic partition is in event-time order (as a replay produces it); the topics
    arrive interleaved at random. While every topic still has records to deliver, the
    release order per partition number is the event-time order; nothing is lost."""
    per_tp: dict[tuple[str, int], list[int]] = {}
    for kind, partition, ms in records:
        per_tp.setdefault((kind, partition), []).append(ms)
    for times in per_tp.values():
        times.sort()
    cursors = dict.fromkeys(per_tp, 0)
    merger: InputMerger[tuple[int, int, str, int]] = InputMerger(
        KINDS, idle_seconds=1e9, max_held=10_000
    )

    def more(kind: str, partition: int, next_offset: int | None) -> bool:
        tp = (kind, partition)
        return tp in per_tp and cursors[tp] < len(per_tp[tp])

    released: list[tuple[int, int, str, int]] = []
    while any(cursors[tp] < len(per_tp[tp]) for tp in per_tp):
        tp = rng.choice([tp for tp in per_tp if cursors[tp] < len(per_tp[tp])])
        offset = cursors[tp]
        ms = per_tp[tp][offset]
        cursors[tp] += 1
        merger.add((tp[1], ms, tp[0], offset), kind=tp[0], partition=tp[1], offset=offset,
                   event_ms=ms, now_s=0.0)  # fmt: skip
        released.extend(merger.release(0.0, more))
    released.extend(merger.release(0.0, more))
    assert len(merger) == 0
    assert len(released) == len(records)
    rank = {kind: i for i, kind in enumerate(KINDS)}
    for partition in {p for _, p, _ in records}:
        mine = [r for r in released if r[0] == partition]
        assert mine == sorted(mine, key=lambda r: (r[1], rank[r[2]], r[3]))


def test_event_time_is_read_from_the_payload() -> None:
    assert event_time_ms(b'{"event_time": "2012-01-01T00:00:01+00:00"}') == 1_325_376_001_000
    assert event_time_ms(b'{"event_time": "2012-01-01T00:00:01Z"}') == 1_325_376_001_000
    assert event_time_ms(b'{"event_time": "2012-01-01T00:00:01"}') is None  # naive
    assert event_time_ms(b'{"event_time": 5}') is None
    assert event_time_ms(b"not json") is None
    assert event_time_ms(b"[]") is None


class _Message:
    def __init__(self, topic: str, partition: int, offset: int, key: bytes, ms: int) -> None:
        self.topic, self.partition, self.offset, self.key = topic, partition, offset, key
        self.value = f'{{"event_time": "{_iso(ms)}"}}'.encode()


class _Event:
    def __init__(self, message: _Message) -> None:
        self.message = message


class _Stream:
    def __init__(self) -> None:
        self.acked: list[int] = []

    async def ack(self, event: _Event) -> None:
        self.acked.append(event.message.offset)


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def _ingest(process_batch: Any, *, batch_max_records: int = 100, ordered: bool = True) -> Any:
    return OrderedIngest(
        object(),
        kinds_by_topic={"v": "vitals", "l": "labs", "a": "adt"},
        kind_order=KINDS,
        process_batch=process_batch,
        batch_max_records=batch_max_records,
        batch_max_ms=5.0,
        idle_seconds=1.0,
        max_held=100,
        event_time_order=ordered,
    )


def test_ordered_ingest_processes_batches_in_order_and_acks_after() -> None:
    """Without a running consumer nothing is waited for; records go out in batches that
    never overlap, each patient's records in release order, and a record is acknowledged
    only after its batch was processed."""

    async def scenario() -> tuple[list[list[str]], list[int], int]:
        batches: list[list[str]] = []
        acked_before: list[int] = []
        running = 0
        peak = 0
        stream = _Stream()

        async def process_batch(events: list[Any]) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            acked_before.append(len(stream.acked))
            await asyncio.sleep(0.01)
            batches.append([f"{e.message.key.decode()}:{e.message.offset}" for e in events])
            running -= 1

        ingest = _ingest(process_batch, batch_max_records=4)
        for step in range(3):
            for index, key in enumerate((b"p1", b"p2")):
                offset = 2 * step + index
                await ingest.offer(stream, _Event(_Message("v", 0, offset, key, 1000 * step)))
        await ingest.drain()
        # Each batch started before any of its own records was acknowledged.
        sizes = [len(b) for b in batches]
        assert acked_before == [sum(sizes[:i]) for i in range(len(sizes))]
        return batches, stream.acked, peak

    batches, acked, peak = asyncio.run(scenario())
    order = [record for batch in batches for record in batch]
    assert [o for o in order if o.startswith("p1")] == ["p1:0", "p1:2", "p1:4"]
    assert [o for o in order if o.startswith("p2")] == ["p2:1", "p2:3", "p2:5"]
    assert all(len(batch) <= 4 for batch in batches)
    assert len(batches) >= 2  # six records, at most four per batch
    assert acked == [0, 1, 2, 3, 4, 5]  # in offset order
    assert peak == 1  # batches never overlap


def test_ordered_ingest_stops_the_worker_and_acknowledges_nothing_when_a_batch_fails() -> None:
    crashed: list[BaseException] = []

    class App:
        async def crash(self, exc: BaseException) -> None:
            crashed.append(exc)

    async def scenario() -> list[int]:
        stream = _Stream()

        async def process_batch(events: list[Any]) -> None:
            raise RuntimeError("Kafka refused the outputs")

        ingest = _ingest(process_batch)
        ingest.app = App()
        await ingest.offer(stream, _Event(_Message("v", 0, 0, b"p1", 0)))
        await asyncio.sleep(0.05)
        # A record arriving while the worker stops is not processed either.
        await ingest.offer(stream, _Event(_Message("v", 0, 1, b"p1", 1000)))
        await asyncio.sleep(0.05)
        return stream.acked

    assert asyncio.run(scenario()) == []
    assert len(crashed) == 1


def test_a_batch_is_acknowledged_once_durable_and_overlaps_only_the_previous_one() -> None:
    """``process_batch`` returns a batch's durability: its records are acknowledged only
    once it completes; the next batch is processed meanwhile, a third one is not."""

    async def scenario() -> list[str]:
        stream = _Stream()
        trace: list[str] = []
        durables: list[asyncio.Future[None]] = []

        async def process_batch(events: list[Any]) -> asyncio.Future[None]:
            trace.append(f"apply {[e.message.offset for e in events]} acked={stream.acked}")
            durables.append(asyncio.get_running_loop().create_future())
            return durables[-1]

        ingest = _ingest(process_batch, batch_max_records=2)

        async def offer_all() -> None:  # waits for room after four (back-pressure)
            for offset in range(6):
                await ingest.offer(stream, _Event(_Message("v", 0, offset, b"p1", 1000 * offset)))

        offers = asyncio.ensure_future(offer_all())
        for _ in range(20):
            await asyncio.sleep(0.01)
        trace.append(f"waiting acked={stream.acked}")
        durables[0].set_result(None)
        for _ in range(20):
            await asyncio.sleep(0.01)
        trace.append(f"first durable acked={stream.acked}")
        while ingest.outstanding:
            for durable in durables:
                if not durable.done():
                    durable.set_result(None)
            await asyncio.sleep(0.01)
        await offers
        trace.append(f"end acked={stream.acked}")
        return trace

    trace = asyncio.run(scenario())
    assert trace[:4] == [
        "apply [0, 1] acked=[]",
        "apply [2, 3] acked=[]",  # applied while the first batch waits for Kafka
        "waiting acked=[]",  # nothing acknowledged, and no third batch
        "apply [4, 5] acked=[0, 1]",  # the third batch once the first one is acknowledged
    ]
    assert trace[-1] == "end acked=[0, 1, 2, 3, 4, 5]"


def test_a_batch_that_does_not_reach_kafka_stops_the_worker_unacknowledged() -> None:
    crashed: list[BaseException] = []

    class App:
        async def crash(self, exc: BaseException) -> None:
            crashed.append(exc)

    async def scenario() -> tuple[list[int], int]:
        stream = _Stream()
        applied = 0

        async def process_batch(events: list[Any]) -> asyncio.Future[None]:
            nonlocal applied
            applied += 1
            durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            durable.set_exception(RuntimeError("changelog refused"))
            return durable

        ingest = _ingest(process_batch, batch_max_records=1)
        ingest.app = App()

        async def offer_all() -> None:
            for offset in range(4):
                await ingest.offer(stream, _Event(_Message("v", 0, offset, b"p1", 1000 * offset)))

        offers = asyncio.ensure_future(offer_all())
        for _ in range(20):
            await asyncio.sleep(0.01)
        offers.cancel()  # the stopped worker takes no more
        return stream.acked, applied

    acked, applied = asyncio.run(scenario())
    assert acked == []
    assert len(crashed) == 1
    assert applied <= 2  # the batch after the failed one at most, never a third


def test_arrival_order_ingest_batches_without_holding_records() -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []

        async def process_batch(events: list[Any]) -> None:
            seen.extend(f"{e.message.topic}:{e.message.offset}" for e in events)

        ingest = _ingest(process_batch, ordered=False)
        stream = _Stream()
        # A lab far ahead in event time is not held back for the vitals topic.
        await ingest.offer(stream, _Event(_Message("l", 0, 0, b"p1", 10_000_000)))
        await ingest.offer(stream, _Event(_Message("v", 0, 0, b"p1", 0)))
        assert ingest.held == 0
        await ingest.drain()
        return seen

    assert asyncio.run(scenario()) == ["l:0", "v:0"]


class _Consumer:
    flow_active = True


class _App:
    def __init__(self) -> None:
        self.consumer = _Consumer()

    async def crash(self, exc: BaseException) -> None:  # pragma: no cover - not expected
        raise AssertionError(f"crashed: {exc!r}")


def _lagging_ingest(process_batch: Any) -> tuple[Any, _App]:
    """An ingest whose consumer flows and whose vitals and labs topics still lag."""
    ingest = _ingest(process_batch)
    app = _App()
    ingest.app = app
    lagging = _lagging("vitals", "labs")
    ingest._more_expected_now = lambda: lagging
    return ingest, app


def test_settle_finishes_released_records_and_gives_held_ones_up_unacknowledged() -> None:
    """Before partitions are handed over: what was released is processed and
    acknowledged; what is held for ordering is neither, nor is a record delivered while
    the flow is stopped, so the committed offsets stop at the first held record and the
    next owner reads the rest again."""

    registry = CollectorRegistry()

    async def scenario() -> tuple[list[int], list[int], int, int, int]:
        stream = _Stream()
        processed: list[int] = []

        async def process_batch(events: list[Any]) -> None:
            await asyncio.sleep(0.01)
            processed.extend(e.message.offset for e in events)

        # Vitals up to 3 h on partition 0; labs at 1.5 h and 5 h. With the vitals and labs
        # topics still lagging (ADT caught up) ...
        ingest, app = _lagging_ingest(process_batch)
        ingest.metrics = WorkerMetrics(registry)
        for offset, ms in enumerate((1000, 2000, 3000)):
            await ingest.offer(stream, _Event(_Message("v", 0, offset, b"p1", ms)))
        for offset, ms in enumerate((1500, 5000)):
            await ingest.offer(stream, _Event(_Message("l", 0, offset, b"p1", ms)))
        # ... the vitals and the first lab are released; the lab at 5 h waits for a
        # vitals record after it.
        held_before = ingest.held
        app.consumer.flow_active = False  # a rebalance starts
        await ingest.offer(stream, _Event(_Message("v", 0, 3, b"p1", 4000)))
        await ingest.settle()
        return processed, stream.acked, held_before, ingest.held, ingest.acks.pending

    processed, acked, held_before, held_after, pending = asyncio.run(scenario())
    assert held_before == 1
    assert sorted(processed) == [0, 0, 1, 2]  # vitals 0-2 and lab 0
    assert sorted(acked) == [0, 0, 1, 2]  # neither lab 1 (held) nor vitals 3 (stopped)
    assert held_after == 0
    assert pending == 0  # nothing taken waits for an acknowledgement any more
    given_up = registry.get_sample_value("vigil_input_order_records_total", {"outcome": "given_up"})
    assert given_up == 2  # lab 1, held, and vitals 3, delivered while stopped


def test_while_the_flow_is_stopped_nothing_held_is_released() -> None:
    async def scenario() -> tuple[int, list[int]]:
        processed: list[int] = []

        async def process_batch(events: list[Any]) -> None:
            processed.extend(e.message.offset for e in events)

        ingest, app = _lagging_ingest(process_batch)
        stream = _Stream()
        await ingest.offer(stream, _Event(_Message("l", 0, 0, b"p1", 5000)))
        app.consumer.flow_active = False
        ingest._more_expected_now = lambda: _never  # would release it, were it not stopping
        ingest._release()
        await asyncio.sleep(0.02)
        return ingest.held, processed

    assert asyncio.run(scenario()) == (1, [])


class _TP:
    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition


class _LaggingConsumer:
    """Assigned input partitions and their high watermarks, as the consumer reports them."""

    flow_active = True

    def __init__(self, highwater: dict[tuple[str, int], int]) -> None:
        self.highwaters = highwater

    def assignment(self) -> list[_TP]:
        return [_TP(*tp) for tp in self.highwaters] + [_TP("vigil.scores", 0)]

    def highwater(self, tp: _TP) -> int:
        return self.highwaters.get((tp.topic, tp.partition), 0)


def test_a_worker_behind_waits_longer_to_fill_larger_batches() -> None:
    """Live input keeps the short wait; a full batch of records waiting in the input
    partitions beyond the last one taken switches to the longer wait."""

    async def scenario(highwater: int) -> tuple[bool, int, list[int]]:
        registry = CollectorRegistry()
        sizes: list[int] = []

        async def process_batch(events: list[Any]) -> None:
            sizes.append(len(events))

        ingest = OrderedIngest(
            _App(),
            kinds_by_topic={"v": "vitals", "l": "labs", "a": "adt"},
            kind_order=KINDS,
            process_batch=process_batch,
            batch_max_records=100,
            batch_max_ms=1.0,
            batch_max_ms_behind=1000.0,
            idle_seconds=1.0,
            max_held=1000,
            event_time_order=False,
            metrics=WorkerMetrics(registry),
        )
        ingest.app.consumer = _LaggingConsumer({("v", 0): highwater})
        stream = _Stream()
        await ingest.offer(stream, _Event(_Message("v", 0, 0, b"p1", 0)))
        behind = ingest._behind()

        async def trickle() -> None:  # the rest of the input arrives over 60 ms
            for offset in range(1, 7):
                await asyncio.sleep(0.01)
                await ingest.offer(stream, _Event(_Message("v", 0, offset, b"p1", offset)))

        await trickle()
        await ingest.drain()
        longer = registry.get_sample_value("vigil_batches_behind_total")
        return behind, int(longer or 0), sizes

    # Caught up (the high watermark is the next offset): one-record batches, short waits.
    behind, longer, sizes = asyncio.run(scenario(highwater=1))
    assert (behind, longer) == (False, 0)
    assert sizes[0] == 1
    # 500 records beyond the one taken: the first batch waits and takes the trickle too.
    behind, longer, sizes = asyncio.run(scenario(highwater=501))
    assert behind
    assert longer >= 1
    assert sizes[0] == 7


def _acks_scenario(finish_order: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Take records (topic, offset) on partition 0 in offset order per topic, finish them
    in ``finish_order``; returns what was acknowledged, in order."""
    acked: list[tuple[str, int]] = []

    class Recorder:
        async def ack(self, event: _Event) -> None:
            acked.append((event.message.topic, event.message.offset))

    async def scenario() -> None:
        acks = InOrderAcks()
        events = {
            (topic, offset): _Event(_Message(topic, 0, offset, b"p", 0))
            for topic, offset in sorted(finish_order)
        }
        for event in events.values():
            acks.take(event)
        for item in finish_order:
            await acks.done(Recorder(), events[item])
        assert acks.pending == 0

    asyncio.run(scenario())
    return acked


def test_in_order_acks_hold_a_record_until_the_earlier_ones_of_its_partition_are_done() -> None:
    """Faust would commit past offset 0 if offset 1 were acknowledged first (it tolerates one
    missing offset after the committed one); here 1 waits for 0, and topics are independent."""
    acked = _acks_scenario([("v", 1), ("l", 0), ("v", 2), ("v", 0), ("l", 1)])
    assert acked == [("l", 0), ("v", 0), ("v", 1), ("v", 2), ("l", 1)]


def test_in_order_acks_keep_nothing_once_all_are_done() -> None:
    acked = _acks_scenario([("v", 0), ("v", 1)])
    assert acked == [("v", 0), ("v", 1)]


def test_in_order_acks_never_acknowledge_past_an_unfinished_record() -> None:
    acked: list[int] = []

    class Recorder:
        async def ack(self, event: _Event) -> None:
            acked.append(event.message.offset)

    async def scenario() -> int:
        acks = InOrderAcks()
        events = [_Event(_Message("v", 3, offset, b"p", 0)) for offset in range(4)]
        for event in events:
            acks.take(event)
        for event in events[1:]:
            await acks.done(Recorder(), event)  # offset 0 never finishes (worker killed)
        return acks.pending

    assert asyncio.run(scenario()) == 4
    assert acked == []
