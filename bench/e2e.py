"""End-to-end benchmark of one worker on the real local stack (``vigil stack up`` first).

Replays demo stays into fresh topics, runs one ``vigil worker`` process, and reports:

* throughput: input events per second, from the first event produced until every event
  is cited by a score or dead-lettered (the whole pipeline, Triton included);
* event-to-score latency: for each score, wall time from producing the newest event it
  cites to the score's ``processing_time``; p50 and p99.

Run at full speed (``--rate 0``) for throughput, or at a fixed input rate for latency:

    .venv/bin/python bench/e2e.py --stays 200 --rate 0
    .venv/bin/python bench/e2e.py --stays 200 --rate 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, KafkaProducer

from streams.adapters.topics import create_topics
from streams.replay import physionet2012_events, read_length_of_stay
from streams.settings import WorkerSettings

DEMO = Path(__file__).resolve().parents[1] / "data" / "physionet2012-demo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stays", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = as fast as possible")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    settings = WorkerSettings(
        kafka_bootstrap=args.bootstrap, topic_prefix=f"bench{tag}", app_id=f"bench{tag}"
    )
    create_topics(settings)
    paths = sorted((DEMO / "set-a").glob("*.txt"))[: args.stays]
    events = list(
        physionet2012_events(paths, length_of_stay=read_length_of_stay(DEMO / "Outcomes-a.txt"))
    )
    env = {
        **os.environ,
        "VIGIL_KAFKA_BOOTSTRAP": args.bootstrap,
        "VIGIL_TOPIC_PREFIX": settings.topic_prefix,
        "VIGIL_APP_ID": settings.app_id,
        "VIGIL_METRICS_PORT": "0",
        "VIGIL_DATA_DIR": tempfile.mkdtemp(prefix="vigil-bench-"),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "vigil", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    consumer = KafkaConsumer(
        settings.topic("scores"),
        settings.topic("deadletter"),
        bootstrap_servers=args.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=200,
    )
    try:
        time.sleep(8)  # worker start-up (group join, table recovery) is not measured
        producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=5)
        sent_at: dict[str, float] = {}
        started = time.perf_counter()
        for i, event in enumerate(events):
            if args.rate > 0:
                due = started + i / args.rate
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            event_id = json.loads(event.payload)["event_id"]
            sent_at[event_id] = time.time()
            producer.send(
                f"{settings.topic_prefix}.{event.kind.value}",
                key=event.patient_id.encode(),
                value=event.payload,
            )
        producer.flush()
        produced_seconds = time.perf_counter() - started
        accounted: set[str] = set()
        latencies: list[float] = []
        degraded = 0
        scores = 0
        while len(accounted) < len(events):
            if time.perf_counter() - started > args.timeout:
                raise SystemExit(f"timeout: {len(accounted)}/{len(events)} accounted")
            for message in consumer:
                record = json.loads(message.value)
                if message.topic.endswith(".scores"):
                    ids = record["provenance"]["event_ids"]
                    accounted.update(ids)
                    scores += 1
                    degraded += int(record["degraded"])
                    processed = datetime.fromisoformat(record["processing_time"]).timestamp()
                    newest = max((sent_at[i] for i in ids if i in sent_at), default=None)
                    if newest is not None:
                        latencies.append(processed - newest)
                else:
                    accounted.add(json.loads(record["payload"]).get("event_id", ""))
        total_seconds = time.perf_counter() - started
    finally:
        consumer.close()
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
    lat = np.array(latencies)
    result = {
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "stays": args.stays,
        "events": len(events),
        "input_rate_target": args.rate or "max",
        "produce_seconds": round(produced_seconds, 2),
        "pipeline_seconds": round(total_seconds, 2),
        "events_per_second": round(len(events) / total_seconds, 1),
        "scores": scores,
        "degraded_scores": degraded,
        "event_to_score_p50_ms": round(float(np.percentile(lat, 50)) * 1000, 1),
        "event_to_score_p99_ms": round(float(np.percentile(lat, 99)) * 1000, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
