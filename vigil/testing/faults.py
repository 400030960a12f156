"""Fault-injection harness: replay real stays through workers while a fault strikes.

One *case* replays a fixed list of events into fresh topics, processed by one or two
``vigil worker`` processes, and injects one fault mid-stream (:class:`Fault`): the worker
killed with SIGKILL and restarted, the Kafka broker, Triton or Redis stopped and
restarted, or one of two workers killed (its partitions move to the other). It then waits
until every input event is accounted for and the group's lag is zero, and returns what the
checks need (:class:`CaseResult`): the outputs, the final per-patient states read back
from the ``patients`` changelog, and the recovery times.

The timeline of a case::

    first half produced ─ 20 scores written ─ FAULT ─ (outage; Triton/Redis: input keeps coming)
    ─ RESTORED ─ second half produced in slices ─ every event accounted for, lag zero

Used by ``tests/integration/test_fault_matrix.py`` (small sizes) and
``bench/fault_matrix.py`` (full size). Services are stopped and started through
:class:`~vigil.stack.manager.Stack` on whatever stack the settings name, and are always
restored (and checked healthy, every Triton model ready) before a case returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
from kafka import KafkaConsumer, TopicPartition

from streams.adapters.topics import create_topics
from streams.core.state_codec import decode_state
from streams.replay import ReplayEvent, physionet2012_events, produce, read_length_of_stay
from streams.settings import WorkerSettings
from vigil.stack.manager import Stack
from vigil.stack.settings import StackSettings
from vigil.testing.workers import start_worker, stop_worker, worker_env

__all__ = [
    "DEMO",
    "CaseResult",
    "Fault",
    "alert_conflicts",
    "demo_events",
    "observation_content",
    "parse_time",
    "run_case",
    "state_differences",
]

DEMO = Path(__file__).resolve().parents[2] / "data" / "physionet2012-demo"
INPUT_KINDS = ("vitals", "labs", "imaging", "adt")
STRIKE_AFTER_SCORES = 20
#: Pause between two slices of the second half produced after the fault is undone: long
#: enough that input is still arriving after Triton's return, the gRPC channel's next
#: connection attempt (back-off up to 2.4 s) and the breaker's 2 s cool-down.
SLICE_PAUSE_SECONDS = 2.0
#: Worker settings of every case: a short breaker cool-down so that a Triton outage is
#: left quickly, and a 10 s Kafka session so that a worker that died is replaced within
#: that (the default, 60 s, dominated every recovery time); each worker also gets a
#: static group instance id (see :func:`run_case`). Triton's timeout stays at its default
#: (2 s): at 1 s, a loaded machine turned most calls into deadline errors.
WORKER_SETTINGS = {
    "breaker_reset_seconds": "2",
    "kafka_session_timeout_seconds": "10",
}


class Fault(StrEnum):
    """What goes wrong mid-stream."""

    NONE = "none"
    KILL_WORKER = "kill_worker"
    RESTART_KAFKA = "restart_kafka"
    RESTART_TRITON = "restart_triton"
    RESTART_REDIS = "restart_redis"
    KILL_ONE_OF_TWO = "kill_one_of_two"


@dataclass
class CaseResult:
    """What one case produced and how long it took to recover.

    Times are wall seconds measured from the fault (``fault_at``, ``time.time()``); None
    when the case has no fault or the moment was not reached.

    Attributes:
        first_output_s: First score written once the fault is undone (the service
            back, the killed worker restarted; Triton: the first *model* score). Not a
            recovery time for the two-worker case, whose surviving worker goes on scoring
            its own partitions.
        progress_s: Every input partition that had a backlog at the fault has committed
            past its offset at the fault (also the partitions a killed worker held).
        drained_s: Every input event is accounted for and the group's lag is zero.
        restored_s: The service (or the restarted worker's process) is back.
        backlog_at_fault: Input records not yet committed when the fault struck.
    """

    fault: Fault
    prefix: str
    events: int
    scores: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    dead: list[dict[str, Any]]
    states: dict[str, dict[str, Any]]
    redis_scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    fault_at: float | None = None
    restored_s: float | None = None
    first_output_s: float | None = None
    progress_s: float | None = None
    drained_s: float | None = None
    backlog_at_fault: int = 0
    total_s: float = 0.0

    def unaccounted(self, event_ids: set[str]) -> set[str]:
        """Ids neither cited by a score's provenance nor in dead-letter."""
        cited = {i for s in self.scores for i in s["provenance"]["event_ids"]}
        dead = set()
        for record in self.dead:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                dead.add(json.loads(record["payload"])["event_id"])
        return event_ids - cited - dead

    def summary(self) -> dict[str, Any]:
        """The numbers a report shows."""

        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 1)

        return {
            "fault": self.fault.value,
            "events": self.events,
            "backlog_at_fault": self.backlog_at_fault,
            "restored_s": r(self.restored_s),
            "first_output_s": r(self.first_output_s),
            "progress_s": r(self.progress_s),
            "drained_s": r(self.drained_s),
            "scores": len(self.scores),
            "alerts": len(self.alerts),
            "deadletter": len(self.dead),
            "total_s": r(self.total_s),
        }


def demo_events(stays: int, first: int = 0) -> list[ReplayEvent]:
    """The events of ``stays`` demo stays (sorted by file name from ``first``), in
    event-time order."""
    paths = sorted((DEMO / "set-a").glob("*.txt"))[first : first + stays]
    los = read_length_of_stay(DEMO / "Outcomes-a.txt")
    return list(physionet2012_events(paths, length_of_stay=los))


# -- the comparison with an undisturbed run ------------------------------------------------


def observation_content(state: dict[str, Any]) -> dict[str, Any]:
    """The part of a patient's state that depends only on which input events reached it.

    Kept: admission time, static descriptors, every series as ``(time, value)`` points,
    imaging embeddings, discharge time, artifact counts, the event-time watermarks and the
    set of event ids seen. Left out, because two undisturbed runs already differ in them
    (docs/replay.md, "Determinism"): the last score, the alert state, when the patient was
    last scored and what is still waiting to be cited (all follow the order in which the
    input topics happen to be fetched, and the risk also follows the Triton batch). Points
    at equal times are compared as sorted lists, so their arrival order does not count.
    """
    return {
        "admit_ms": state["admit_ms"],
        "statics": state["statics"],
        "series": {code: sorted(map(tuple, pts)) for code, pts in state["series"].items()},
        "images": sorted((t, tuple(e)) for t, e in state["images"]),
        "discharged_ms": state["discharged_ms"],
        "artifacts": state["artifacts"],
        "watermark_ms": state["watermark_ms"],
        "stream_watermarks": state["stream_watermarks"],
        "event_ids": sorted(state["recent_ids"]),
    }


def state_differences(
    reference: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]]
) -> list[str]:
    """Patients whose observation content differs (or exists in one run only), each
    with the fields that differ."""
    found = []
    for pid in sorted(set(reference) | set(other)):
        if pid not in reference or pid not in other:
            found.append(f"{pid}: only in {'reference' if pid in reference else 'this run'}")
            continue
        a, b = observation_content(reference[pid]), observation_content(other[pid])
        fields = [k for k in a if a[k] != b[k]]
        if fields:
            found.append(f"{pid}: {', '.join(fields)}")
    return found


def _without_wall_clock(record: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in record.items() if k != "processing_time"}, sort_keys=True)


def alert_conflicts(alerts: Sequence[dict[str, Any]]) -> list[str]:
    """Alert changes that are the same change but differ otherwise.

    An alert id names an episode, and the policy changes it several times (open,
    escalated per severity, deferred for review and open again, resolved), each change
    one record at its own event time. A change is (alert id, state, severity, event
    time); under at-least-once delivery it may be written twice, but only as the same
    record (apart from ``processing_time``).
    """
    versions: dict[tuple[str, str, str, str], set[str]] = defaultdict(set)
    for record in alerts:
        key = (record["alert_id"], record["state"], record["severity"], record["event_time"])
        versions[key].add(_without_wall_clock(record))
    return [f"{k}: {len(v)} versions" for k, v in versions.items() if len(v) > 1]


def score_conflicts(scores: Sequence[dict[str, Any]]) -> list[str]:
    """Events cited by two different score records (identical repeats are allowed)."""
    versions: dict[str, set[str]] = defaultdict(set)
    for record in scores:
        text = _without_wall_clock(record)
        for event_id in record["provenance"]["event_ids"]:
            versions[event_id].add(text)
    return [f"{i}: {len(v)} scores" for i, v in versions.items() if len(v) > 1]


# -- reading Kafka -------------------------------------------------------------------------


def _read(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of ``topic`` up to its end offsets now, partition by partition."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        ends = consumer.end_offsets(tps)
        todo = {tp for tp in tps if ends[tp] > 0}
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 60
        while todo and time.monotonic() < deadline:
            for tp, batch in consumer.poll(timeout_ms=500).items():
                for m in batch:
                    if m.offset < ends[tp]:
                        records.append((m.key, m.value))
                if consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
        if todo:
            raise AssertionError(f"could not read {topic} to its end")
        return records
    finally:
        consumer.close()


def _values(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [json.loads(v) for _, v in _read(bootstrap, topic) if v is not None]


def final_states(bootstrap: str, app_id: str) -> dict[str, dict[str, Any]]:
    """Each patient's last state in the ``patients`` changelog.

    A state the worker expired (discharged, or silent) ends in a tombstone; its last
    state before that is taken, so that when the expiry timer happened to run does not
    count.
    """
    states: dict[str, dict[str, Any]] = {}
    for key, value in _read(bootstrap, f"{app_id}-patients-changelog"):
        if key is not None and value is not None:
            states[key.decode()] = decode_state(value).to_dict()
    return states


class _Offsets:
    """Committed and end offsets of the group on the input topics (reconnects on error)."""

    def __init__(self, bootstrap: str, group: str, prefix: str, partitions: int) -> None:
        self.bootstrap, self.group = bootstrap, group
        self.tps = [
            TopicPartition(f"{prefix}.{k}", p) for k in INPUT_KINDS for p in range(partitions)
        ]
        self.scores = [TopicPartition(f"{prefix}.scores", p) for p in range(partitions)]
        self._consumer: KafkaConsumer | None = None

    def scores_written(self) -> int:
        """Records in the scores topic (0 while Kafka does not answer)."""
        if self.read() is None or self._consumer is None:
            return 0
        return sum(self._consumer.end_offsets(self.scores).values())

    def read(self) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]] | None:
        """(committed, end) per partition, or None while Kafka does not answer."""
        try:
            if self._consumer is None:
                self._consumer = KafkaConsumer(
                    bootstrap_servers=self.bootstrap,
                    group_id=self.group,
                    enable_auto_commit=False,
                    request_timeout_ms=5000,
                )
            ends = self._consumer.end_offsets(self.tps)
            done = {tp: self._consumer.committed(tp) or 0 for tp in self.tps}
        except Exception:  # noqa: BLE001 - the broker may be down on purpose
            self.close()
            return None
        return done, ends

    def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close()
            self._consumer = None


# -- faults --------------------------------------------------------------------------------


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def models_ready(stack: StackSettings, names: Sequence[str]) -> bool:
    """Whether Triton reports every named model ready."""
    try:
        return all(
            httpx.get(f"http://{stack.triton_http_url}/v2/models/{n}/ready", timeout=2).status_code
            == 200
            for n in names
        )
    except httpx.HTTPError:
        return False


def triton_models(stack: StackSettings) -> list[str]:
    """Every model of the repository the stack serves."""
    return sorted(p.parent.name for p in stack.resolved().triton_repo.glob("*/config.pbtxt"))


def restore(stack: StackSettings, service: str) -> None:
    """Start ``service`` again and wait until it is healthy (Triton: every model ready).

    Raises:
        AssertionError: It did not come back within the stack's start timeout.
    """
    Stack(stack).up([service])
    if service == "triton":
        models = triton_models(stack)
        deadline = time.monotonic() + stack.start_timeout_seconds
        while not models_ready(stack, models):
            assert time.monotonic() < deadline, f"Triton models not ready: {models}"
            time.sleep(0.5)


@contextlib.contextmanager
def _service_down(stack: StackSettings, service: str) -> Iterator[None]:
    """Stop ``service`` for the block; it is restored however the block ends."""
    Stack(stack).down([service])
    try:
        yield
    finally:
        restore(stack, service)


# -- one case ------------------------------------------------------------------------------


def _slices(events: Sequence[ReplayEvent], n: int) -> list[list[ReplayEvent]]:
    return [list(events[i * len(events) // n : (i + 1) * len(events) // n]) for i in range(n)]


def parse_time(text: str) -> float:
    """An ISO 8601 time from a record (``...Z``) as POSIX seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_case(
    stack: StackSettings,
    fault: Fault,
    events: Sequence[ReplayEvent],
    workdir: Path,
    *,
    name: str,
    outage_seconds: float = 6.0,
    slices: int = 8,
    timeout_seconds: float = 240.0,
    worker_settings: dict[str, str] | None = None,
) -> CaseResult:
    """Replay ``events`` through fresh topics while ``fault`` strikes; see the module
    docstring for the timeline.

    Args:
        stack: The stack to run on (its services are stopped and restored).
        fault: The fault.
        events: Events in event-time order.
        workdir: Where worker data directories and logs go.
        name: Unique topic prefix and consumer group.
        outage_seconds: How long a stopped service stays down.
        slices: The second half is produced in this many slices (a quarter of them one a
            second during a Triton or Redis outage, the rest ``SLICE_PAUSE_SECONDS``
            apart once the fault is undone).
        timeout_seconds: Longest wait for every event to be accounted for.
        worker_settings: Extra ``VIGIL_*`` settings for the workers (by field name).

    Raises:
        AssertionError: A worker exited by itself, or the time ran out.
    """
    started = time.monotonic()
    settings = WorkerSettings(kafka_bootstrap=stack.kafka_bootstrap, topic_prefix=name, app_id=name)
    create_topics(settings)
    _wait_leaders(stack.kafka_bootstrap, [settings.topic(k) for k in INPUT_KINDS])
    extra = {**WORKER_SETTINGS, **(worker_settings or {})}
    # Each worker keeps its static group instance id across a restart, as a deployment
    # (a StatefulSet's pod name, say) would: the restarted one takes its partitions back
    # at once.
    env = worker_env(
        stack,
        prefix=name,
        app_id=name,
        data_dir=workdir / "w0",
        kafka_group_instance_id=f"{name}-0",
        **extra,
    )
    env2 = worker_env(
        stack,
        prefix=name,
        app_id=name,
        data_dir=workdir / "w1",
        kafka_group_instance_id=f"{name}-1",
        **extra,
    )
    logs = [workdir / "worker0.log", workdir / "worker1.log"]
    event_ids = {json.loads(e.payload)["event_id"] for e in events}
    half = len(events) // 2
    first, rest = list(events[:half]), _slices(events[half:], slices)
    result = CaseResult(fault, name, len(events), [], [], [], {})
    offsets = _Offsets(stack.kafka_bootstrap, name, name, settings.topic_partitions)

    workers = [start_worker(env, logs[0])]
    if fault is Fault.KILL_ONE_OF_TWO:
        workers.append(start_worker(env2, logs[1]))
    try:
        if fault is Fault.KILL_ONE_OF_TWO:
            _wait_members(stack.kafka_bootstrap, name, 2, workers, logs)
        produce(first, bootstrap=stack.kafka_bootstrap, topic_prefix=name)
        # Strike once the worker is producing outputs (before its first commit, which
        # Faust makes every 2.8 s, a small first half can be done already).
        at_fault: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + 120
        while fault is not Fault.NONE:
            if offsets.scores_written() >= STRIKE_AFTER_SCORES:
                read = offsets.read()
                if read is not None:
                    at_fault = read[0]
                    result.backlog_at_fault = sum(read[1][tp] - read[0][tp] for tp in read[0])
                    break
            _check_alive(workers, logs)
            assert time.monotonic() < deadline, "no output within 120 s"
            time.sleep(0.1)
        result.fault_at = time.time()
        rest = _strike(stack, fault, result, workers, env, logs, rest, outage_seconds, name)
        for piece in rest:
            produce(piece, bootstrap=stack.kafka_bootstrap, topic_prefix=name)
            time.sleep(SLICE_PAUSE_SECONDS)
        _wait_drained(
            stack, fault, result, workers, logs, offsets, at_fault, event_ids, timeout_seconds
        )
    finally:
        for proc in workers:
            stop_worker(proc)
        offsets.close()
    result.states = final_states(stack.kafka_bootstrap, name)
    result.total_s = time.monotonic() - started
    return result


def _strike(
    stack: StackSettings,
    fault: Fault,
    result: CaseResult,
    workers: list[subprocess.Popen[bytes]],
    env: dict[str, str],
    logs: list[Path],
    rest: list[list[ReplayEvent]],
    outage_seconds: float,
    name: str,
) -> list[list[ReplayEvent]]:
    """Inject the fault and undo it; returns the slices still to produce."""
    assert result.fault_at is not None
    if fault is Fault.KILL_WORKER:
        _kill(workers[0])
        workers[0] = start_worker(env, logs[0])
        result.restored_s = time.time() - result.fault_at
    elif fault is Fault.KILL_ONE_OF_TWO:
        _kill(workers[1])
        workers.pop()
    elif fault in (Fault.RESTART_KAFKA, Fault.RESTART_TRITON, Fault.RESTART_REDIS):
        service = {
            Fault.RESTART_KAFKA: "kafka",
            Fault.RESTART_TRITON: "triton",
            Fault.RESTART_REDIS: "redis",
        }[fault]
        with _service_down(stack, service):
            end = time.monotonic() + outage_seconds
            # Input keeps coming while Triton or Redis is away (Kafka cannot take it), but
            # most of it is kept for after: a worker that has nothing left to score when
            # Triton returns cannot show that it scores with the model again.
            keep = len(rest) - len(rest) // 4
            while time.monotonic() < end:
                if service != "kafka" and len(rest) > keep:
                    produce(rest.pop(0), bootstrap=stack.kafka_bootstrap, topic_prefix=name)
                time.sleep(1.0)
        result.restored_s = time.time() - result.fault_at
        if service == "kafka":
            # A broker that answers may not lead its partitions again yet.
            _wait_leaders(stack.kafka_bootstrap, [f"{name}.{k}" for k in INPUT_KINDS])
    return rest


def _wait_leaders(bootstrap: str, topics: Sequence[str]) -> None:
    """Wait until every partition of ``topics`` has a leader: records sent to a topic
    created a moment ago can otherwise be refused (``streams.replay.produce`` raises)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        deadline = time.monotonic() + 30
        while True:
            described = admin.describe_topics(list(topics))
            if all(
                t["error_code"] == 0
                and t["partitions"]
                and all(p["leader_id"] >= 0 for p in t["partitions"])
                for t in described
            ):
                return
            assert time.monotonic() < deadline, "topics without a leader after 30 s"
            time.sleep(0.2)
    finally:
        admin.close()


def _check_alive(workers: Sequence[subprocess.Popen[bytes]], logs: Sequence[Path]) -> None:
    for proc, log in zip(workers, logs, strict=False):
        assert proc.poll() is None, f"a worker exited:\n{log.read_text()[-3000:]}"


def _wait_members(
    bootstrap: str,
    group: str,
    n: int,
    workers: Sequence[subprocess.Popen[bytes]],
    logs: Sequence[Path],
) -> None:
    """Wait until the consumer group has ``n`` members (both workers assigned)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        deadline = time.monotonic() + 120
        while True:
            info = admin.describe_groups([group]).get(group, {})
            if info.get("group_state") == "Stable" and len(info.get("members", [])) == n:
                return
            _check_alive(workers, logs)
            assert time.monotonic() < deadline, f"the group never had {n} stable members"
            time.sleep(0.5)
    finally:
        admin.close()


def _redis_scores(
    stack: StackSettings, prefix: str, patients: Sequence[str]
) -> dict[str, dict[str, Any]]:
    import redis

    client = redis.Redis(host=stack.host, port=stack.redis_port)
    try:
        found = {}
        for pid in patients:
            value = client.get(f"{prefix}:patient:{pid}:score")
            if value is not None:
                found[pid] = json.loads(value)
        return found
    finally:
        client.close()


def _wait_drained(
    stack: StackSettings,
    fault: Fault,
    result: CaseResult,
    workers: Sequence[subprocess.Popen[bytes]],
    logs: Sequence[Path],
    offsets: _Offsets,
    at_fault: dict[TopicPartition, int],
    event_ids: set[str],
    timeout_seconds: float,
) -> None:
    """Poll offsets (every 0.5 s) and outputs (every 3 s) until everything is accounted
    for and the lag is zero; fill in the recovery times."""
    fault_at = result.fault_at or time.time()
    deadline = time.monotonic() + timeout_seconds
    last_outputs = 0.0
    behind = {tp for tp, done in at_fault.items()}
    bootstrap = stack.kafka_bootstrap
    while True:
        _check_alive(workers, logs)
        read = offsets.read()
        if read is not None:
            done, ends = read
            if result.progress_s is None and at_fault:
                behind = {tp for tp in behind if done[tp] <= at_fault[tp] < ends[tp]}
                if not behind:
                    result.progress_s = time.time() - fault_at
            lag = sum(ends[tp] - done[tp] for tp in done)
        else:
            lag = -1
        if time.monotonic() - last_outputs >= 3.0 and lag == 0:
            last_outputs = time.monotonic()
            result.scores = _values(bootstrap, f"{result.prefix}.scores")
            result.dead = _values(bootstrap, f"{result.prefix}.deadletter")
            if not result.unaccounted(event_ids):
                result.drained_s = time.time() - fault_at
                break
        if time.monotonic() > deadline:
            result.scores = _values(bootstrap, f"{result.prefix}.scores")
            result.dead = _values(bootstrap, f"{result.prefix}.deadletter")
            missing = len(result.unaccounted(event_ids))
            raise AssertionError(
                f"{fault.value}: {missing} of {len(event_ids)} events unaccounted for and lag "
                f"{lag} after {timeout_seconds:.0f}s"
            )
        time.sleep(0.5)
    result.alerts = _values(bootstrap, f"{result.prefix}.alerts")
    if fault is Fault.NONE:
        result.fault_at = None
        return
    restored = fault_at + (result.restored_s or 0.0)
    if fault is Fault.RESTART_TRITON:
        after = [parse_time(s["processing_time"]) for s in result.scores if not s["degraded"]]
        after = [t for t in after if t >= restored]
    else:
        after = [parse_time(s["processing_time"]) for s in result.scores]
        after = [t for t in after if t >= restored]
    if after:
        result.first_output_s = min(after) - fault_at
    if fault is Fault.RESTART_REDIS:
        patients = sorted({s["patient_id"] for s in result.scores})
        result.redis_scores = _redis_scores(stack, result.prefix, patients)
