"""Fuzz benchmark: push generated events, valid and adversarial, through the pure core
and, optionally, a real worker on the local stack (``vigil stack up`` first).

Core run: a seeded stream (``vigil/testing/fuzz_corpus.py``) of valid vitals, labs, imaging,
ADT and ack records with bad records of every mutation class interleaved goes through
:class:`Processor` as the worker feeds it, then its valid records alone go through a fresh
processor; the invariants of ``vigil/testing/fuzz_harness.py`` are checked (specific dead-letter
reason and origin per bad record, duplicates dropped, valid records unaffected).

Worker run (``--worker N``): N events, real PhysioNet 2012 stays as the valid ones and
generated bad ones, produced to fresh topics and read by one ``vigil worker`` process; every
bad record must be in dead-letter with its reason and Kafka origin, every valid one cited
by a score (or dead-lettered as too late).

    .venv/bin/python -m bench.fuzz --events 100000
    .venv/bin/python -m bench.fuzz --events 0 --worker 5000
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from streams.core.pipeline import Processor, ProcessorConfig
from vigil.testing.fuzz_corpus import RandomPicker, StreamSpec, build_stream
from vigil.testing.fuzz_harness import assign_origins, check, feed
from vigil.testing.fuzz_kafka import run_worker_fuzz

NOW = datetime(2025, 6, 1, tzinfo=UTC)


def _table(title: str, counts: Counter[str]) -> None:
    print(f"{title}:")
    for name, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {name:24} {count:>8,}")


def core(events: int, bad_fraction: float, seed: int, max_bytes: int) -> bool:
    bad = round(events * bad_fraction)
    spec = StreamSpec(
        patients=[f"fz{n:04d}" for n in range(max(1, events // 500))],
        valid=events - bad,
        bad=bad,
        now=NOW,
        max_bytes=max_bytes,
    )
    started = time.perf_counter()
    items = build_stream(RandomPicker(seed), spec)
    built = time.perf_counter() - started
    origins = assign_origins(items, "fz")
    config = ProcessorConfig(code_version="fuzz", max_event_bytes=max_bytes)
    started = time.perf_counter()
    mixed = feed(Processor(config, clock=lambda: NOW), items, origins, flush=True)
    elapsed = time.perf_counter() - started
    valid = [(i, o) for i, o in zip(items, origins, strict=True) if not i.bad]
    clean = feed(
        Processor(config, clock=lambda: NOW),
        [i for i, _ in valid],
        [o for _, o in valid],
        flush=True,
    )
    errors = check(items, origins, mixed, clean)
    by_class = Counter(i.cls for i in items)
    outcomes = Counter(
        "deadletter" if dead is not None else (outcome or "ack_applied")
        for dead, outcome in mixed.results
    )
    reasons = Counter(dead.reason.value for dead, _ in mixed.results if dead is not None)
    print(f"core: {len(items):,} records ({bad:,} bad), seed {seed}, built in {built:.1f} s")
    print(f"core: mixed run {elapsed:.1f} s, {len(items) / elapsed:,.0f} records/s (one thread)")
    _table("records by class", by_class)
    _table("outcomes", outcomes)
    _table("dead-letter reasons", reasons)
    print(f"core: invariants {'held' if not errors else 'FAILED'}")
    for error, count in Counter(errors).most_common(20):
        print(f"  {count} x {error}")
    return not errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="core run size; 0 skips")
    parser.add_argument("--bad-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-bytes", type=int, default=16_384, help="record size limit")
    parser.add_argument("--worker", type=int, default=0, help="worker run size; 0 skips")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    print(f"Python {platform.python_version()}, {platform.machine()}")
    ok = True
    if args.events:
        ok &= core(args.events, args.bad_fraction, args.seed, args.max_bytes)
    if args.worker:
        with tempfile.TemporaryDirectory() as tmp:
            report = run_worker_fuzz(
                args.bootstrap,
                total=args.worker,
                bad_fraction=args.bad_fraction,
                seed=args.seed,
                workdir=Path(tmp),
                timeout_seconds=args.timeout,
            )
        print(report.summary())
        ok &= not report.errors
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
