"""Throughput of ``vigil worker`` against a raw aiokafka consume loop on the same data.

Real PhysioNet 2012 stays are produced to fresh topics (8 partitions) before anything
reads them. Then:

* a raw aiokafka loop reads every input record (no decoding; a second pass also parses
  each value with ``json.loads``), timed from the end of ``start()`` to its last record;
* ``--workers N`` ``vigil worker`` processes (one consumer group, real Triton, Redis and
  Kafka) read the same records, timed from the worker's first output to the last input
  event being accounted for (cited by a score or dead-lettered), both as Kafka
  timestamps of the worker's own output records. Start-up (group join, table recovery,
  Triton connection) is reported apart.

With ``--profile SECONDS``, py-spy (``pip install py-spy``, or its path in ``--py-spy``;
a sampling profiler attached by pid, 50 samples/s, active threads only) records the first
worker for that long once it has produced its first output, and ``bench.profile``
summarises the samples.

    .venv/bin/python -m bench.throughput --stays 200
    .venv/bin/python -m bench.throughput --stays 200 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    LOGS,
    RESULTS,
    ROOT,
    BenchEvent,
    OutputReader,
    cpu_seconds,
    fresh_settings,
    load_average,
    load_events,
    machine,
    produce,
    rss_bytes,
    start_worker,
    stop_worker,
    triton_counters,
    triton_delta,
    write_result,
)
from bench.profile import summarise
from streams.settings import WorkerSettings

__all__ = ["raw_consume", "run_workers"]

_INPUTS = ("vitals", "labs", "imaging", "adt")


async def _raw_consume(settings: WorkerSettings, expected: int, decode: bool) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        *(settings.topic(kind) for kind in _INPUTS),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.app_id}-raw-{int(decode)}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    started = time.perf_counter()
    await consumer.start()
    joined = time.perf_counter()
    first: float | None = None
    count = 0
    try:
        while count < expected:
            if time.perf_counter() - started > 120:
                raise RuntimeError(f"raw consumer read {count} of {expected} records")
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for messages in batches.values():
                if first is None and messages:
                    first = time.perf_counter()
                for message in messages:
                    count += 1
                    if decode:
                        json.loads(message.value)
        ended = time.perf_counter()
    finally:
        await consumer.stop()
    if first is None:  # pragma: no cover - the loop above reads at least one record
        raise RuntimeError("no record read")
    return {
        "records": count,
        "json_decode": decode,
        "seconds_first_to_last": round(ended - first, 3),
        "seconds_after_start": round(ended - joined, 3),
        "seconds_with_startup": round(ended - started, 3),
        # From the end of start() (bootstrap) to the last record: the first fetch can
        # return every record at once, which makes first-to-last meaningless.
        "records_per_second": round(count / (ended - joined), 1),
    }


def raw_consume(settings: WorkerSettings, expected: int, *, decode: bool) -> dict[str, Any]:
    """Read ``expected`` records from the input topics with a bare aiokafka loop."""
    return asyncio.run(_raw_consume(settings, expected, decode))


def _profile(pid: int, seconds: float, out: Path, spy: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - py-spy on our own child
        [
            *(spy, "record", "--pid", str(pid), "--rate", "50"),
            *("--duration", str(int(seconds)), "--format", "raw"),
            *("--output", str(out), "--nonblocking"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


def run_workers(
    settings: WorkerSettings,
    events: Sequence[BenchEvent],
    *,
    workers: int,
    timeout: float,
    profile_seconds: float = 0.0,
    profile_out: Path = RESULTS / "profile-worker.txt",
    py_spy: str = "py-spy",
    code: Path | None = None,
    join_after_s: float | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``workers`` workers on topics that already hold ``events`` until every event
    is accounted for; returns the timings. ``extra``: worker settings by field name
    (``triton_step_model``). With ``join_after_s`` the first worker starts
    alone and the others join its group that many seconds after its first output (a
    rebalance in the middle of the backlog)."""
    logs = LOGS
    reader = OutputReader(settings)
    wanted = {event.event_id for event in events}
    triton_before = triton_counters()
    launched = time.time()
    metrics_ports = [closed_port() for _ in range(workers)]

    def start(i: int) -> subprocess.Popen[bytes]:
        return start_worker(
            settings,
            logs / f"{settings.app_id}-{i}.log",
            code=code or ROOT,
            **{"metrics_port": str(metrics_ports[i]), **(extra or {})},
        )

    procs = [start(i) for i in range(1 if join_after_s is not None else workers)]
    spy: subprocess.Popen[bytes] | None = None
    profile_window: tuple[float, float] | None = None
    rss_first: int | None = None
    try:
        while reader.first_output is None:
            if time.time() - launched > 120 or any(p.poll() is not None for p in procs):
                raise RuntimeError("no worker output within 120 s (see bench/results/logs)")
            reader.poll()
        rss_first = rss_bytes(procs[0].pid)
        cpu_first = [cpu_seconds(p.pid) or 0.0 for p in procs]
        first_seen = time.time()
        if profile_seconds > 0:
            spy = _profile(procs[0].pid, profile_seconds, profile_out, py_spy)
            profile_window = (time.time(), time.time() + profile_seconds)
        done = False
        while time.time() - launched < timeout:
            reader.poll()
            if wanted.issubset(reader.accounted):
                done = True
                break
            if len(procs) < workers and time.time() - first_seen >= (join_after_s or 0.0):
                procs.extend(start(i) for i in range(len(procs), workers))
                cpu_first.extend(0.0 for _ in range(len(cpu_first), workers))
        rss_last = rss_bytes(procs[0].pid)
        cpu_used = sum(
            (cpu_seconds(p.pid) or 0.0) - c for p, c in zip(procs, cpu_first, strict=True)
        )
        cpu_wall = time.time() - first_seen
        if spy is not None:
            spy.wait(profile_seconds + 60)
        batches = [batch_figures(batch_sums(port)) for port in metrics_ports]
    finally:
        for proc in procs:
            stop_worker(proc)
        reader.close()
    triton = triton_delta(triton_before, triton_counters())
    accounted = [reader.accounted[i] for i in wanted if i in reader.accounted]
    if reader.first_output is None:  # pragma: no cover - waited for above
        raise RuntimeError("no worker output")
    last = max(accounted)
    result: dict[str, Any] = {
        "workers": workers,
        "events": len(events),
        "accounted": len(accounted),
        "complete": done,
        "scores": len(reader.scores),
        "degraded_scores": reader.degraded,
        "alerts": len(reader.alerts),
        "deadletters": reader.deadletters,
        "startup_seconds": round(reader.first_output - launched, 2),
        "seconds_first_output_to_last_event": round(last - reader.first_output, 2),
        "events_per_second": round(len(accounted) / (last - reader.first_output), 1),
        "events_per_second_with_startup": round(len(accounted) / (last - launched), 1),
        "worker_cpu_seconds_after_first_output": round(cpu_used, 1),
        "worker_cpu_share_of_one_core": round(cpu_used / cpu_wall, 2),
        "worker_cpu_ms_per_event": round(1000 * cpu_used / len(accounted), 2),
        "worker_rss_mib_at_first_output": None if rss_first is None else round(rss_first / 2**20),
        "worker_rss_mib_at_end": None if rss_last is None else round(rss_last / 2**20),
        "triton_during_run": triton,
        "batches_per_worker": batches,
    }
    if profile_window is not None:
        begin, end = profile_window
        in_window = sum(1 for at in accounted if begin <= at <= end)
        result["profile"] = summarise(
            profile_out, rate_hz=50, events=in_window, seconds=end - begin
        )
    return result


def batch_sums(port: int) -> dict[str, float] | None:
    """The worker's batch metrics as read from its own ``/metrics``: per series name (and
    ``:stage``), the running count or sum; None when unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vigil_batch_stage_seconds_bucket":
                if sample.labels.get("le") == "1.0":  # batches whose stage took up to 1 s
                    sums[f"vigil_batch_stage_up_to_1s:{sample.labels['stage']}"] = sample.value
            elif sample.name.startswith(("vigil_batch_records_", "vigil_batch_stage_seconds_")):
                stage = sample.labels.get("stage", "")
                sums[f"{sample.name}{':' + stage if stage else ''}"] = sample.value
    return sums


def batch_figures(
    after: dict[str, float] | None, before: dict[str, float] | None = None
) -> dict[str, Any] | None:
    """Batch count, mean records per batch, mean milliseconds per stage and how many
    batches spent over a second in a stage, over the batches between two
    :func:`batch_sums` readings (None for a worker that has no batch
    metrics, an older checkout)."""
    if after is None:
        return None
    base = before or {}
    sums = {key: value - base.get(key, 0.0) for key, value in after.items()}
    count = sums.get("vigil_batch_records_count", 0.0)
    if not count:
        return None
    return {
        "batches": int(count),
        "mean_records": round(sums["vigil_batch_records_sum"] / count, 1),
        "mean_stage_ms": {
            key.rsplit(":", 1)[1]: round(1000 * value / count, 2)
            for key, value in sums.items()
            if key.startswith("vigil_batch_stage_seconds_sum:")
        },
        "stage_over_1s": {
            stage: int(sums[key] - sums.get(f"vigil_batch_stage_up_to_1s:{stage}", 0.0))
            for key in sums
            if key.startswith("vigil_batch_stage_seconds_count:")
            for stage in [key.rsplit(":", 1)[1]]
        },
    }


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again once the socket is


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure and write ``bench/results/throughput-<N>w.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stays", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="py-spy path")
    parser.add_argument("--name", default=None, help="result file name")
    parser.add_argument(
        "--code", type=Path, default=None, help="run the worker from this checkout (A/B runs)"
    )
    parser.add_argument(
        "--without-triton",
        action="store_true",
        help="diagnostic: point the worker at a closed port, so every score is degraded "
        "(NEWS2 only) and the figure is the worker's own cost without the model",
    )
    parser.add_argument(
        "--step-model",
        default=None,
        help="VIGIL_TRITON_STEP_MODEL for the worker: a step model (deterioration_step), or "
        "'' for the window model; unset: the worker's default (the window model)",
    )
    args = parser.parse_args(argv)

    name = args.name or f"throughput-{args.workers}w"
    events = load_events(args.stays)
    settings = fresh_settings("tp")
    load_before = load_average()
    produce_started = time.perf_counter()
    produce(settings, events)
    produce_seconds = time.perf_counter() - produce_started
    raw = raw_consume(settings, len(events), decode=False)
    raw_json = raw_consume(settings, len(events), decode=True)
    extra = {"triton_url": f"127.0.0.1:{closed_port()}"} if args.without_triton else {}
    if args.step_model is not None:
        extra["triton_step_model"] = args.step_model
    worker = run_workers(
        settings,
        events,
        workers=args.workers,
        timeout=args.timeout,
        profile_seconds=args.profile,
        profile_out=RESULTS / f"profile-{name}.txt",
        py_spy=args.py_spy,
        code=args.code,
        extra=extra,
    )
    result = {
        "benchmark": "throughput",
        "machine": machine(),
        "load_before": load_before,
        "load_after": load_average(),
        "stays": args.stays,
        "events": len(events),
        "produce_seconds": round(produce_seconds, 2),
        "raw_aiokafka": raw,
        "raw_aiokafka_json": raw_json,
        "worker_code": str(args.code or "this checkout"),
        "without_triton": args.without_triton,
        "step_model": args.step_model,
        "worker": worker,
        "worker_to_raw_ratio": round(worker["events_per_second"] / raw["records_per_second"], 5),
    }
    write_result(name, result)
    return result


if __name__ == "__main__":
    main()
