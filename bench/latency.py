"""Event-to-score and event-to-alert latency of one worker at a paced input rate.

For each rate, fresh topics and a fresh ``vigil worker``: a few warm-up stays go through
first (start-up, group join and the first Triton calls are not measured), then events of
other real PhysioNet 2012 stays are produced at the rate for ``--seconds`` (in 10 ms
ticks; each record's Kafka timestamp is the wall time of its ``send``).

What is measured, all on this machine's clock:

* **event to score**: for each score, the Kafka timestamp of the score record (set by the
  worker's producer when it sends it) minus the Kafka timestamp of the newest input event
  the score cites (the one that made the patient due);
* **event to alert**: the same for each alert record, against the newest event of the
  score it came from (same patient and event time);
* **backlog**: every second, records produced minus the offsets the worker's consumer
  group has committed (Faust commits every few seconds), and its growth per second over
  the paced phase (least-squares slope);
* per second of pacing (by the newest cited event's send time): scores, median and
  largest event to score, to see whether a tail is steady or one stall;
* the worker's batches over the paced phase: count, mean records, mean time per stage.

A rate the worker does not keep up with (backlog growing by more than 5% of the input
rate) gets no percentile: its latencies would only measure the queue. Its backlog growth
is reported instead.

    .venv/bin/python -m bench.latency --rates 100 1000 5000 --seconds 20
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaAdminClient, KafkaProducer

from bench.common import (
    LOGS,
    ROOT,
    BenchEvent,
    OutputReader,
    fresh_settings,
    load_average,
    load_events,
    machine,
    produce,
    start_worker,
    stop_worker,
    write_result,
)
from bench.throughput import batch_figures, batch_sums, closed_port
from streams.settings import WorkerSettings

__all__ = ["paced_run"]

WARMUP_STAYS = 4
KEEP_UP_FRACTION = 0.05


def _committed(admin: KafkaAdminClient, group: str) -> int:
    offsets = admin.list_group_offsets({group: None}).get(group, {})
    return sum(meta.offset for meta in offsets.values() if meta.offset >= 0)


def _percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50_ms": None, "p99_ms": None}
    array = np.array(values) * 1000
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(array, 50)), 1),
        "p99_ms": round(float(np.percentile(array, 99)), 1),
        "max_ms": round(float(array.max()), 1),
    }


def paced_run(
    settings: WorkerSettings,
    warmup: Sequence[BenchEvent],
    events: Sequence[BenchEvent],
    *,
    rate: float,
    seconds: float,
    drain_seconds: float,
    step_model: str | None = None,
    code: Path | None = None,
) -> dict[str, Any]:
    """Warm a fresh worker up, produce ``events`` at ``rate`` for ``seconds``, wait up to
    ``drain_seconds`` for them, and return latencies and backlog samples."""
    reader = OutputReader(settings)
    metrics_port = closed_port()
    extra: dict[str, Any] = {"triton_step_model": step_model} if step_model is not None else {}
    proc = start_worker(
        settings,
        LOGS / f"{settings.app_id}.log",
        code=code or ROOT,
        metrics_port=str(metrics_port),
        **extra,
    )
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        produce(settings, warmup)
        if not reader.wait_for({e.event_id for e in warmup}, timeout=180):
            raise RuntimeError("warm-up events not processed within 180 s")
        base_committed = _committed(admin, settings.app_id)
        warm_batches = batch_sums(metrics_port)
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                reader.poll()

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=2
        )
        todo = list(events[: int(rate * seconds)])
        sent_at: dict[str, float] = {}
        samples: list[tuple[float, int, int]] = []
        started = time.time()
        next_sample = started
        produced = 0
        while produced < len(todo):
            now = time.time()
            due = min(len(todo), int((now - started) * rate) + 1)
            for event in todo[produced:due]:
                producer.send(
                    settings.topic(event.kind),
                    key=event.key,
                    value=event.value,
                    timestamp_ms=int(now * 1000),
                )
                sent_at[event.event_id] = now
            produced = due
            if now >= next_sample:
                lag = produced - (_committed(admin, settings.app_id) - base_committed)
                samples.append((now - started, produced, lag))
                next_sample += 1.0
            time.sleep(max(0.0, 0.01 - (time.time() - now)))
        producer.flush(60)
        paced_seconds = time.time() - started
        producer.close(10)
        drain_until = time.time() + drain_seconds
        wanted = set(sent_at)
        while time.time() < drain_until and not wanted.issubset(reader.accounted):
            lag = produced - (_committed(admin, settings.app_id) - base_committed)
            samples.append((time.time() - started, produced, lag))
            time.sleep(1.0)
        stop.set()
        thread.join(5)
        batches = batch_figures(batch_sums(metrics_port), warm_batches)
    finally:
        stop_worker(proc)
        admin.close()
        reader.close()

    paced = [(t, lag) for t, _, lag in samples if t <= paced_seconds]
    slope = (
        float(np.polyfit([t for t, _ in paced], [lag for _, lag in paced], 1)[0])
        if len(paced) >= 3
        else None
    )
    achieved = len(sent_at) / paced_seconds
    kept_up = slope is not None and slope <= KEEP_UP_FRACTION * achieved
    newest: dict[tuple[str, str], float] = {}
    to_score: list[float] = []
    by_second: dict[int, list[float]] = {}
    for score in reader.scores:
        times = [sent_at[i] for i in score["provenance"]["event_ids"] if i in sent_at]
        if times:
            newest[(score["patient_id"], score["event_time"])] = max(times)
            to_score.append(score["_at"] - max(times))
            by_second.setdefault(int(max(times) - started), []).append(to_score[-1])
    to_alert = [
        alert["_at"] - newest[(alert["patient_id"], alert["event_time"])]
        for alert in reader.alerts
        if (alert["patient_id"], alert["event_time"]) in newest
    ]
    accounted = sum(1 for i in sent_at if i in reader.accounted)
    result: dict[str, Any] = {
        "rate_target": rate,
        "rate_achieved": round(achieved, 1),
        "events_produced": len(sent_at),
        "paced_seconds": round(paced_seconds, 2),
        "events_accounted_by_end": accounted,
        "kept_up": kept_up,
        "backlog_growth_events_per_second": None if slope is None else round(slope, 1),
        "backlog_at_end_of_pacing": paced[-1][1] if paced else None,
        "backlog_samples": [[round(t, 1), produced_, lag] for t, produced_, lag in samples],
        "degraded_scores": reader.degraded,
        "batches": batches,
        "event_to_score_by_second": [
            [second, len(found), round(1000 * float(np.median(found))), round(1000 * max(found))]
            for second, found in sorted(by_second.items())
        ],
    }
    if kept_up:
        result["event_to_score"] = _percentiles(to_score)
        result["event_to_alert"] = _percentiles(to_alert)
    else:
        result["event_to_score"] = {
            "n": len(to_score),
            "p50_ms": None,
            "p99_ms": None,
            "why": "not kept up: latency is queueing time, see backlog growth",
        }
        result["event_to_alert"] = {"n": len(to_alert), "p50_ms": None, "p99_ms": None}
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure each rate and write ``bench/results/latency.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 1000.0, 5000.0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait after pacing")
    parser.add_argument("--name", default="latency")
    parser.add_argument(
        "--step-model",
        default=None,
        help="VIGIL_TRITON_STEP_MODEL for the worker: deterioration_step, or '' for the "
        "window model; unset: the worker's default (the window model)",
    )
    parser.add_argument(
        "--code", type=Path, default=None, help="run the worker from this checkout (A/B runs)"
    )
    args = parser.parse_args(argv)
    warmup = load_events(WARMUP_STAYS)
    pool = load_events(500 - WARMUP_STAYS, first=WARMUP_STAYS)
    runs = []
    for rate in args.rates:
        before = load_average()
        run = paced_run(
            fresh_settings("lat"),
            warmup,
            pool,
            rate=rate,
            seconds=args.seconds,
            drain_seconds=args.drain,
            step_model=args.step_model,
            code=args.code,
        )
        runs.append(
            {
                "load_before": before,
                "load_after": load_average(),
                "step_model": args.step_model,
                "worker_code": str(args.code) if args.code else "this checkout",
                **run,
            }
        )
        print(
            f"rate {rate:.0f}/s: achieved {run['rate_achieved']}, kept up {run['kept_up']}, "
            f"backlog growth {run['backlog_growth_events_per_second']}/s, "
            f"score {run['event_to_score']}, alert {run['event_to_alert']}"
        )
    result = {"benchmark": "latency", "machine": machine(), "runs": runs}
    write_result(args.name, result)
    return result


if __name__ == "__main__":
    main()
