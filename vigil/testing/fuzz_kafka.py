"""A fuzz stream through a real ``vigil worker`` on the local stack.

Valid records are real PhysioNet 2012 stays (``data/physionet2012-demo``); bad records of
the classes whose reason does not depend on worker state are interleaved (at most 20
records after their source, so a duplicate or late copy meets its patient's state before
the worker could expire it). Each record's Kafka origin comes from the producer's
acknowledgement, and the worker's dead letters and scores are matched against it.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from streams.adapters.topics import create_topics
from streams.core.events import DeadLetterReason, topic_name
from streams.replay import physionet2012_events, read_length_of_stay
from streams.settings import WorkerSettings
from vigil.stack.settings import StackSettings
from vigil.testing.fuzz_corpus import (
    STATE_INDEPENDENT,
    Item,
    RandomPicker,
    StreamSpec,
    add_bad,
    replay_items,
)
from vigil.testing.outputs import read_records
from vigil.testing.workers import start_worker, stop_worker, worker_env

__all__ = ["DEMO", "WorkerFuzzReport", "run_worker_fuzz", "worker_stream"]

DEMO = Path(__file__).resolve().parents[2] / "data" / "physionet2012-demo"
# Valid records may be dead-lettered only for these (documented) reasons.
VALID_MAY_BE = frozenset({DeadLetterReason.TOO_LATE.value})


def worker_stream(total: int, bad_fraction: float, seed: int, now: datetime) -> list[Item]:
    """About ``total`` records: whole PhysioNet stays (admit to discharge, so every event
    gets scored) and, interleaved, a ``bad_fraction`` of bad ones."""
    paths = sorted((DEMO / "set-a").glob("*.txt"))
    stay_length = read_length_of_stay(DEMO / "Outcomes-a.txt")
    events: list[Any] = []
    stays = 0
    while len(events) < total * (1 - bad_fraction) and stays < len(paths):
        stays += 1
        events = list(physionet2012_events(paths[:stays], length_of_stay=stay_length))
    items = replay_items(events)
    spec = StreamSpec(
        patients=sorted({i.patient_id for i in items}),
        valid=0,
        bad=round(len(items) * bad_fraction / (1 - bad_fraction)),
        now=now,
        classes=(*sorted(STATE_INDEPENDENT), "duplicate", "too_late"),
    )
    return add_bad(RandomPicker(seed), items, spec, spread=20)


@dataclass
class WorkerFuzzReport:
    """What the worker did with a fuzz stream."""

    produced: int = 0
    bad: int = 0
    produce_seconds: float = 0.0
    drain_seconds: float = 0.0
    worker_alive: bool = False
    reasons: Counter[str] = field(default_factory=Counter)
    classes: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"worker: {self.produced:,} records ({self.bad:,} bad) produced in "
            f"{self.produce_seconds:.1f} s, all accounted for after {self.drain_seconds:.1f} s "
            f"({self.produced / max(self.drain_seconds, 1e-9):,.0f} records/s end to end)",
            f"worker: alive at the end: {self.worker_alive}",
            "records by class: " + ", ".join(f"{k} {v}" for k, v in sorted(self.classes.items())),
            "dead-letter reasons: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items())),
            f"worker: invariants {'held' if not self.errors else 'FAILED'}",
            *(f"  {e}" for e in self.errors[:20]),
        ]
        return "\n".join(lines)


def _produce(bootstrap: str, prefix: str, items: list[Item]) -> list[tuple[str, int, int]]:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_in_flight_requests_per_connection=1,
        max_request_size=2**21,
    )
    try:
        futures = [producer.send(topic_name(i.kind, prefix), key=i.key, value=i.raw) for i in items]
        producer.flush()
        metadata = [f.get(timeout=30) for f in futures]
    finally:
        producer.close()
    return [(m.topic, m.partition, m.offset) for m in metadata]


def _judge(
    items: list[Item],
    origins: list[tuple[str, int, int]],
    dead: dict[tuple[str, int, int], dict[str, Any]],
    cited: Counter[str],
) -> tuple[list[str], list[str]]:
    """Errors, and the records not yet accounted for (class, topic, partition, offset)."""
    errors: list[str] = []
    pending: list[str] = []
    for item, origin in zip(items, origins, strict=True):
        record = dead.get(origin)
        where = f"{item.cls} at {origin[0]}/{origin[1]}@{origin[2]}"
        if item.cls == "duplicate":
            if record is not None:
                errors.append(f"duplicate dead-lettered as {record['reason']}")
            if cited[item.event_id or ""] > 1:
                errors.append("duplicate: its event id was cited twice")
        elif item.bad:
            if record is None:
                pending.append(where)
                continue
            if record["reason"] != item.expected:
                errors.append(f"{item.cls}: reason {record['reason']}, expected {item.expected}")
            if record["payload_size_bytes"] != len(item.raw):
                errors.append(f"{item.cls}: payload_size_bytes is not the record's size")
            if item.key is not None and record["key"] != item.key.decode():
                errors.append(f"{item.cls}: dead-letter key is not the record's key")
        elif record is not None:
            if record["reason"] not in VALID_MAY_BE:
                errors.append(f"valid {item.kind.value} record dead-lettered: {record['reason']}")
        elif not cited[item.event_id or ""]:
            pending.append(where)
        elif cited[item.event_id or ""] > 1:
            errors.append("a valid event was cited by two scores")
    return errors, pending


def run_worker_fuzz(
    bootstrap: str | None,
    *,
    total: int,
    bad_fraction: float,
    seed: int,
    workdir: Path,
    timeout_seconds: float,
) -> WorkerFuzzReport:
    """Produce a fuzz stream to fresh topics, run one worker on it, and judge its outputs.

    Args:
        bootstrap: Kafka bootstrap servers; None for the local stack's.
    """
    stack = StackSettings()
    bootstrap = bootstrap or stack.kafka_bootstrap
    prefix = f"fuzz{uuid.uuid4().hex[:10]}"
    create_topics(WorkerSettings(kafka_bootstrap=bootstrap, topic_prefix=prefix, app_id=prefix))
    items = worker_stream(total, bad_fraction, seed, now=datetime.now(UTC))
    report = WorkerFuzzReport(
        produced=len(items),
        bad=sum(i.bad for i in items),
        classes=Counter(i.cls for i in items),
    )
    env = worker_env(stack, prefix=prefix, app_id=prefix, data_dir=workdir / "worker")
    env["VIGIL_KAFKA_BOOTSTRAP"] = bootstrap
    log = workdir / "worker.log"
    worker = start_worker(env, log)
    try:
        started = time.monotonic()
        origins = _produce(bootstrap, prefix, items)
        report.produce_seconds = time.monotonic() - started
        pending: list[str] = []
        while True:
            dead = {
                (r["source_topic"], r["partition"], r["offset"]): r
                for r in read_records(bootstrap, f"{prefix}.deadletter")
            }
            scores = read_records(bootstrap, f"{prefix}.scores")
            cited = Counter(i for s in scores for i in s["provenance"]["event_ids"])
            errors, pending = _judge(items, origins, dead, cited)
            report.drain_seconds = time.monotonic() - started
            if worker.poll() is not None:
                errors.append("the worker exited: " + log.read_text()[-2000:])
                break
            if not pending or report.drain_seconds > timeout_seconds:
                break
            time.sleep(2)
        report.worker_alive = worker.poll() is None
        if pending:
            errors.append(
                f"{len(pending)} records unaccounted for after {report.drain_seconds:.0f} s: "
                + ", ".join(pending[:10])
            )
        report.errors = errors
        report.reasons = Counter(r["reason"] for r in dead.values())
    finally:
        stop_worker(worker)
    return report
