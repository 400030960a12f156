"""aiokafka's seek to the committed offsets does not rewind a partition without one
(the half of the kill_one_of_two loss that lives in aiokafka; see
tests/unit/test_faust_rewind.py and streams/adapters/faust_recovery.py)."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.adapters.faust_recovery import rewind_uncommitted
from vigil.stack.settings import StackSettings


async def _scenario(bootstrap: str, name: str) -> tuple[int, int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(name, f"r{i}".encode(), key=b"132545", partition=0)
    finally:
        await producer.stop()
    tp = TopicPartition(name, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=name,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        taken = 0
        while taken < 10:  # fetched, then dropped (Faust during recovery)
            batch = await consumer.getmany(tp, timeout_ms=2000)
            taken += len(batch.get(tp, []))
        committed = await consumer.seek_to_committed()  # Faust's perform_seek
        assert committed == {tp: None}
        after_seek = await consumer.position(tp)
        await rewind_uncommitted(consumer, committed, lambda topic: True)
        after_rewind = await consumer.position(tp)
        again = await consumer.getmany(tp, timeout_ms=2000)
        return after_seek, after_rewind, len(again.get(tp, []))
    finally:
        await consumer.stop()


def test_seek_to_committed_leaves_an_uncommitted_partition_past_dropped_records(
    stack: StackSettings, unique: str
) -> None:
    after_seek, after_rewind, read_again = asyncio.run(
        _scenario(stack.kafka_bootstrap, f"rewind{unique}")
    )
    assert after_seek == 10  # not rewound: records 0-9 would never be read again
    assert after_rewind == 0
    assert read_again == 10
