"""A worker stopped mid-stream and restarted loses nothing (the real stack).

100 real stays are replayed in two halves. The worker is stopped with SIGTERM while it is
still working through the first half, the second half is produced while no worker runs,
and a new worker picks up from the committed offsets after restoring the ``patients``
table from its changelog. Every input event must then be cited by a score or be in
dead-letter. Events accepted before the stop but not yet scored are only known to the
restored table (as pending provenance), so their citation also proves the restore.
Outputs may repeat only as identical records (at-least-once with idempotent outputs:
docs/worker.md).
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from streams.adapters.topics import create_topics
from streams.replay import physionet2012_events, produce, read_length_of_stay
from streams.settings import WorkerSettings
from vigil.stack.settings import StackSettings
from vigil.testing.workers import start_worker, stop_worker, worker_env

DEMO = Path(__file__).resolve().parents[2] / "data" / "physionet2012-demo"
N_STAYS = 100


def _read_all(bootstrap: str, topic: str, idle_ms: int = 2000) -> list[Any]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=idle_ms,
    )
    try:
        return list(consumer)
    finally:
        consumer.close()


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> tuple[int, int]:
    """(committed, end) offsets of ``group`` on ``topic``, summed over partitions."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = consumer.end_offsets(tps)
        return sum(consumer.committed(tp) or 0 for tp in tps), sum(ends.values())
    finally:
        consumer.close()


def _without_wall_clock(record: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in record.items() if k != "processing_time"}, sort_keys=True)


def _differences(conflicts: dict[Any, set[str]]) -> str:
    """Which fields differ between the versions of the first few conflicting records."""
    lines = [f"{len(conflicts)} records repeated with different content"]
    for key, versions in list(conflicts.items())[:3]:
        records = [json.loads(v) for v in versions]
        fields = sorted(
            {f for r in records for f in r if len({json.dumps(x.get(f)) for x in records}) > 1}
        )
        lines.append(f"{key}: fields {fields}: " + "; ".join(
            json.dumps({f: r.get(f) for f in fields})[:400] for r in records
        ))  # fmt: skip
    return "\n".join(lines)


@pytest.mark.slow
def test_restart_mid_stream_loses_nothing(
    stack: StackSettings, unique: str, tmp_path: Path
) -> None:
    prefix = app_id = f"restart{unique}"
    settings = WorkerSettings(
        kafka_bootstrap=stack.kafka_bootstrap, topic_prefix=prefix, app_id=app_id
    )
    create_topics(settings)
    env = worker_env(stack, prefix=prefix, app_id=app_id, data_dir=tmp_path / "worker")
    paths = sorted((DEMO / "set-a").glob("*.txt"))[:N_STAYS]
    events = list(
        physionet2012_events(paths, length_of_stay=read_length_of_stay(DEMO / "Outcomes-a.txt"))
    )
    produced = {json.loads(e.payload)["event_id"] for e in events}
    half = len(events) // 2
    vitals = settings.topic("vitals")
    log = tmp_path / "worker.log"

    worker = start_worker(env, log)
    try:
        # The first half arrives in slices while the worker runs, and the worker is
        # stopped (SIGTERM) once part of it is committed, while slices still arrive: the
        # stop lands mid-stream however fast the worker is (a batch worker processed a
        # half produced at once before the first poll). The last slice is produced after
        # the stop, so the stopped worker cannot have read everything.
        slices = [events[i : min(i + 25, half)] for i in range(0, half, 25)]
        fed = 0
        stopping = threading.Event()

        def feed() -> None:
            nonlocal fed
            for piece in slices[:-1]:
                if stopping.is_set():
                    return
                produce(piece, bootstrap=stack.kafka_bootstrap, topic_prefix=prefix)
                fed += 1
                time.sleep(0.2)

        feeder = threading.Thread(target=feed, name="restart-feed")
        feeder.start()
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                done, end = _committed(stack.kafka_bootstrap, app_id, vitals, 8)
                if done > 0:
                    break
                assert worker.poll() is None, log.read_text()[-3000:]
                time.sleep(0.5)
            stop_worker(worker)  # SIGTERM
        finally:
            stopping.set()
            feeder.join()
        for piece in slices[fed:]:
            produce(piece, bootstrap=stack.kafka_bootstrap, topic_prefix=prefix)
        done, end = _committed(stack.kafka_bootstrap, app_id, vitals, 8)
        assert 0 < done < end, f"the stop was not mid-stream ({done} of {end} committed)"

        produce(events[half:], bootstrap=stack.kafka_bootstrap, topic_prefix=prefix)
        worker = start_worker(env, log)
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            scores = _read_all(stack.kafka_bootstrap, settings.topic("scores"))
            dead = _read_all(stack.kafka_bootstrap, settings.topic("deadletter"), 500)
            cited = {i for m in scores for i in json.loads(m.value)["provenance"]["event_ids"]}
            dead_ids = {json.loads(json.loads(m.value)["payload"])["event_id"] for m in dead}
            if produced <= cited | dead_ids:
                break
            assert worker.poll() is None, log.read_text()[-3000:]
            time.sleep(3)
    finally:
        stop_worker(worker)

    missing = produced - cited - dead_ids
    assert not missing, f"{len(missing)} events lost across the restart"

    # Repeated outputs are allowed only as identical records.
    by_citation: dict[str, set[str]] = defaultdict(set)
    for m in scores:
        record = json.loads(m.value)
        for event_id in record["provenance"]["event_ids"]:
            by_citation[event_id].add(_without_wall_clock(record))
    repeated = {key: versions for key, versions in by_citation.items() if len(versions) > 1}
    assert not repeated, _differences(repeated)
    # One alert change is (alert id, state, severity, event time): an episode may re-open
    # at the same severity after an OOD deferral, at a later event time (docs/reliability.md).
    alerts: dict[tuple[str, str, str, str], set[str]] = defaultdict(set)
    for m in _read_all(stack.kafka_bootstrap, settings.topic("alerts"), 500):
        record = json.loads(m.value)
        key = (record["alert_id"], record["state"], record["severity"], record["event_time"])
        alerts[key].add(_without_wall_clock(record))
    conflicts = {key: versions for key, versions in alerts.items() if len(versions) > 1}
    assert not conflicts, _differences(conflicts)
