"""The recovery watchdog on the real broker (streams/adapters/faust_recovery.py).

A Faust app with the worker's table manager recovers a table from a changelog of 50
records. The fault is made the way records are lost in a real stall: right after Faust
seeks the changelog partition for recovery, it is sought again past its last record, so
the fetcher has nothing to deliver while Faust still waits for 50 (as when fetched
records are dropped after the position moved past them). Faust alone waits forever.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.adapters.faust_recovery import watched_table_manager
from vigil.errors import RecoveryError
from vigil.stack.settings import StackSettings

N_RECORDS = 50
STALL_SECONDS = 1.0


async def _changelog(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{name}-t-changelog", 1, 1), NewTopic(name, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(N_RECORDS):
            key, value = json.dumps(f"k{i}").encode(), json.dumps(i).encode()
            await producer.send_and_wait(f"{name}-t-changelog", value, key=key, partition=0)
    finally:
        await producer.stop()


async def _recover(bootstrap: str, name: str, kicks: int) -> dict[str, Any]:
    """Recover the table with the stall made; what came of it within 30 s (Faust alone
    would still be waiting)."""
    await _changelog(bootstrap, name)
    restarts: list[int] = []
    manager = watched_table_manager(
        stall_seconds=STALL_SECONDS, kicks=kicks, check_seconds=0.2, on_restart=restarts.append
    )

    class Stalled(manager.recovery_class):  # type: ignore[name-defined,misc]
        async def _seek_offsets(self, consumer: Any, tps: Any, offsets: Any, title: str) -> None:
            await super()._seek_offsets(consumer, tps, offsets, title)
            if title == "active":  # past every record: nothing left to deliver
                await consumer.seek_wait(dict.fromkeys(tps, N_RECORDS))

    class StalledManager(manager):  # type: ignore[valid-type,misc]
        recovery_class = Stalled

    app = faust.App(
        name,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=1,
        topic_disable_leader=True,
        TableManager=StalledManager,
    )
    table = app.Table("t", default=None, partitions=1)

    @app.agent(app.topic(name))
    async def drain(stream: Any) -> None:
        async for _ in stream:
            pass

    started = time.monotonic()
    await app.start()
    try:
        recovery = app.tables.recovery  # type: ignore[attr-defined]
        while time.monotonic() - started < 30:
            if recovery.completed.is_set() or app.crash_reason is not None:
                break
            await asyncio.sleep(0.1)
        return {
            "completed": recovery.completed.is_set(),
            "crash": app.crash_reason,
            "values": sorted(table.values()) if recovery.completed.is_set() else [],
            "restarts": restarts,
        }
    finally:
        await app.stop()


def test_a_stalled_recovery_is_restarted_and_reads_every_record(
    stack: StackSettings, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    result = asyncio.run(_recover(stack.kafka_bootstrap, f"wd{unique}", kicks=2))
    assert result["crash"] is None
    assert result["completed"]
    assert result["values"] == list(range(N_RECORDS))
    assert result["restarts"] == [1]  # one partition, once (the worker's metric counts it)
    restarts = [r for r in caplog.records if "resuming and seeking them again" in r.message]
    assert len(restarts) == 1
    assert (
        f"wd{unique}-t-changelog[0] read to -1 of {N_RECORDS - 1}, fetch position {N_RECORDS}"
        in restarts[0].message
    )


def test_a_recovery_that_stays_stalled_stops_the_worker(stack: StackSettings, unique: str) -> None:
    result = asyncio.run(_recover(stack.kafka_bootstrap, f"wd{unique}", kicks=0))
    assert not result["completed"]
    assert isinstance(result["crash"], RecoveryError)
    assert f"wd{unique}-t-changelog[0]" in str(result["crash"])
    assert result["restarts"] == []
