"""What every benchmark shares: the machine and its load, real stays as Kafka records,
fresh topics, ``vigil worker`` child processes, and a reader of the worker's outputs.

Nothing here starts or stops the local stack; benchmarks use it as it runs, under unique
topic prefixes and consumer groups.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tritonclient.grpc as grpcclient
from kafka import KafkaConsumer, KafkaProducer

from streams.adapters.topics import create_topics
from streams.replay import physionet2012_events, read_length_of_stay
from streams.settings import WorkerSettings
from vigil.stack.settings import StackSettings

__all__ = [
    "DEMO",
    "LOGS",
    "RESULTS",
    "ROOT",
    "BenchEvent",
    "OutputReader",
    "cpu_seconds",
    "fresh_settings",
    "load_average",
    "load_events",
    "machine",
    "produce",
    "rss_bytes",
    "start_worker",
    "stop_worker",
    "triton_counters",
    "triton_delta",
    "write_result",
]

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "physionet2012-demo"
RESULTS = ROOT / "bench" / "results"
LOGS = ROOT / ".vigil" / "bench"
"""Worker logs and data directories (git-ignored)."""


@dataclass(frozen=True, slots=True)
class BenchEvent:
    """One input record: topic kind, key, value and the event id the outputs cite."""

    kind: str
    key: bytes
    value: bytes
    event_id: str


def load_events(stays: int, first: int = 0) -> list[BenchEvent]:
    """Events of demo stays ``first .. first + stays`` (real PhysioNet 2012 data, 48 h
    each, ending with a discharge), merged in event-time order."""
    paths = sorted((DEMO / "set-a").glob("*.txt"))[first : first + stays]
    los = read_length_of_stay(DEMO / "Outcomes-a.txt")
    return [
        BenchEvent(
            kind=event.kind.value,
            key=event.patient_id.encode(),
            value=event.payload,
            event_id=str(json.loads(event.payload)["event_id"]),
        )
        for event in physionet2012_events(paths, length_of_stay=los)
    ]


def load_average() -> dict[str, float]:
    """The 1, 5 and 15 minute load averages (what ``uptime`` prints)."""
    one, five, fifteen = (float(x) for x in Path("/proc/loadavg").read_text().split()[:3])
    return {"load_1m": one, "load_5m": five, "load_15m": fifteen}


def _git(*args: str) -> str:
    git = shutil.which("git") or "git"
    result = subprocess.run(  # noqa: S603 - fixed git read-only commands
        [git, *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return result.stdout.rstrip()


def machine() -> dict[str, Any]:
    """The machine, the Python and the code a figure was measured on."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty_files": [
            line[3:] for line in _git("status", "--porcelain").splitlines() if line[:2] != "??"
        ],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def fresh_settings(name: str, *, partitions: int = 8) -> WorkerSettings:
    """Settings of a worker on the local stack with its own topics (created here)."""
    stack = StackSettings()
    tag = f"bench{name}{uuid.uuid4().hex[:6]}"
    settings = WorkerSettings(
        kafka_bootstrap=stack.kafka_bootstrap,
        topic_prefix=tag,
        app_id=tag,
        topic_partitions=partitions,
        redis_url=stack.redis_url,
        triton_url=stack.triton_grpc_url,
    )
    create_topics(settings)
    return settings


def produce(settings: WorkerSettings, events: Sequence[BenchEvent]) -> dict[str, float]:
    """Produce ``events`` as fast as possible (acks=all); returns each event id's produce
    time (epoch seconds, also the record's Kafka timestamp)."""
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5, batch_size=256_000
    )
    sent_at: dict[str, float] = {}
    try:
        for event in events:
            now = time.time()
            producer.send(
                settings.topic(event.kind),
                key=event.key,
                value=event.value,
                timestamp_ms=int(now * 1000),
            )
            sent_at[event.event_id] = now
        producer.flush(60)
    finally:
        producer.close(10)
    return sent_at


def start_worker(
    settings: WorkerSettings, log: Path, *, code: Path = ROOT, **extra: str
) -> subprocess.Popen[bytes]:
    """Start ``python -m vigil worker`` configured by ``VIGIL_*`` variables only, its
    output appended to ``log``. ``code`` is the checkout whose code it runs (its
    directory comes first on ``sys.path``), for before/after comparisons."""
    env = {
        **os.environ,
        "VIGIL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "VIGIL_TOPIC_PREFIX": settings.topic_prefix,
        "VIGIL_APP_ID": settings.app_id,
        "VIGIL_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "VIGIL_REDIS_URL": settings.redis_url,
        "VIGIL_TRITON_URL": settings.triton_url,
        "VIGIL_METRICS_PORT": "0",
        "VIGIL_DATA_DIR": str(log.parent / f"data-{uuid.uuid4().hex[:6]}"),
    }
    env.update({f"VIGIL_{name.upper()}": value for name, value in extra.items()})
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "vigil", "worker"],
            cwd=code,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """SIGTERM the worker's process group; SIGKILL it after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time a process has used so far, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process, or None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


@dataclass
class OutputReader:
    """Reads a worker's scores, alerts and dead letters as they arrive.

    ``accounted`` maps each input event id to the Kafka timestamp (epoch s) of the first
    output that cites it: a score's provenance or a dead letter's payload.
    """

    settings: WorkerSettings
    accounted: dict[str, float] = field(default_factory=dict)
    scores: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    deadletters: int = 0
    degraded: int = 0
    first_output: float | None = None
    last_output: float | None = None
    _consumer: Any = None

    def __post_init__(self) -> None:
        self._consumer = KafkaConsumer(
            self.settings.topic("scores"),
            self.settings.topic("alerts"),
            self.settings.topic("deadletter"),
            bootstrap_servers=self.settings.kafka_bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            consumer_timeout_ms=200,
        )

    def poll(self, max_seconds: float = 0.5) -> int:
        """Read what is there now, for ``max_seconds`` at most (plus about 0.2 s of
        waiting when nothing comes); returns how many records were read."""
        count = 0
        until = time.monotonic() + max_seconds
        for message in self._consumer:
            count += 1
            self._record(message)
            if time.monotonic() > until:
                break
        return count

    def _record(self, message: Any) -> None:
        at = message.timestamp / 1000
        self.first_output = at if self.first_output is None else min(self.first_output, at)
        self.last_output = at if self.last_output is None else max(self.last_output, at)
        record = json.loads(message.value)
        if message.topic.endswith(".scores"):
            record["_at"] = at
            self.scores.append(record)
            self.degraded += int(record["degraded"])
            for event_id in record["provenance"]["event_ids"]:
                self.accounted.setdefault(event_id, at)
        elif message.topic.endswith(".alerts"):
            record["_at"] = at
            self.alerts.append(record)
        else:
            self.deadletters += 1
            event_id = json.loads(record["payload"]).get("event_id", "")
            self.accounted.setdefault(event_id, at)

    def wait_for(self, event_ids: set[str], timeout: float) -> bool:
        """Poll until every id in ``event_ids`` is accounted for; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if event_ids.issubset(self.accounted):
                return True
        return False

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write ``result`` to ``bench/results/<name>.json`` and print it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written: {path.relative_to(ROOT)}")
    return path


_TRITON_MODELS = (
    "deterioration",
    "deterioration_explain",
    "ood",
    "deterioration_step",
    "deterioration_step_explain",
)
"""Every model the worker calls (the window family and the step family)."""


def triton_counters() -> dict[str, dict[str, int]]:
    """Triton's cumulative statistics of the worker's models (counts and nanoseconds)."""
    client = grpcclient.InferenceServerClient(StackSettings().triton_grpc_url)
    counters: dict[str, dict[str, int]] = {}
    for model in _TRITON_MODELS:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        infer = stats.get("inference_stats", {})
        counters[model] = {
            "inferences": int(stats.get("inference_count", 0)),
            "executions": int(stats.get("execution_count", 0)),
            "requests": int(infer.get("success", {}).get("count", 0)),
            "failed": int(infer.get("fail", {}).get("count", 0)),
            "request_ns": int(infer.get("success", {}).get("ns", 0)),
            "queue_ns": int(infer.get("queue", {}).get("ns", 0)),
            "compute_ns": int(infer.get("compute_infer", {}).get("ns", 0)),
        }
    client.close()
    return counters


def triton_delta(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, dict[str, float | int | None]]:
    """What Triton did between two :func:`triton_counters` readings, per model: requests,
    mean batch size, mean queue and compute time per execution (other clients' requests
    to the same models are included: the stack is shared)."""
    out: dict[str, dict[str, float | int | None]] = {}
    for model, now in after.items():
        d = {key: now[key] - before[model][key] for key in now}
        runs = d["executions"]
        out[model] = {
            "requests_ok": d["requests"],
            "requests_failed": d["failed"],
            "executions": runs,
            "mean_batch": round(d["inferences"] / runs, 2) if runs else None,
            "mean_queue_ms": round(d["queue_ns"] / d["requests"] / 1e6, 1)
            if d["requests"]
            else None,
            "mean_compute_ms_per_execution": round(d["compute_ns"] / runs / 1e6, 1)
            if runs
            else None,
            "mean_request_ms": round(d["request_ns"] / d["requests"] / 1e6, 1)
            if d["requests"]
            else None,
        }
    return out
