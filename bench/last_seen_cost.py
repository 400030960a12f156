"""What the step model's OOD clock costs the worker per score.

Every step-model score reads ``hours_since_seen`` from the patient's state
(:func:`streams.core.last_seen.hours_since_seen_on_ticks`, O(P)). This builds real states
by ingesting demo stays through the pure core (:class:`streams.core.pipeline.Processor`)
and times that call at each state's latest event time, in rounds.

    .venv/bin/python -m bench.last_seen_cost --stays 20 --calls 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from bench.common import ROOT, load_average, machine, write_result
from streams.core.events import TopicKind
from streams.core.last_seen import hours_since_seen_on_ticks
from streams.core.pipeline import Processor, ProcessorConfig
from streams.core.state import Origin, PatientState
from streams.replay import physionet2012_events, read_length_of_stay

__all__ = ["main"]

_DEMO = ROOT / "data" / "physionet2012-demo"


def _states(n: int) -> list[PatientState]:
    processor = Processor(ProcessorConfig(), lambda: datetime(2026, 1, 1, tzinfo=UTC))
    states: dict[str, PatientState] = {}
    paths = sorted((_DEMO / "set-a").glob("*.txt"))[:n]
    los = read_length_of_stay(_DEMO / "Outcomes-a.txt")
    for event in sorted(physionet2012_events(paths, length_of_stay=los)):
        processor.ingest(states, TopicKind(event.kind), event.key, event.payload, Origin("b", 0, 0))
    return [s for s in states.values() if s.admit_ms is not None and s.watermark_ms is not None]


def main() -> None:
    """Time the call; write ``bench/results/last-seen-cost.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stays", type=int, default=20)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    states = _states(args.stays)
    clocks = [
        (s.series, s.admit_ms, s.watermark_ms)
        for s in states
        if s.admit_ms is not None and s.watermark_ms is not None
    ]
    load_before = load_average()
    per_call_us = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        for i in range(args.calls):
            series, admit_ms, at_ms = clocks[i % len(clocks)]
            hours_since_seen_on_ticks(series, admit=admit_ms, at=at_ms, ticks_per_hour=3.6e6)
        per_call_us.append((time.perf_counter() - started) / args.calls * 1e6)
    result = {
        "benchmark": "last_seen_cost",
        "machine": machine(),
        "load_before": load_before,
        "load_after": load_average(),
        "states": len(states),
        "calls_per_round": args.calls,
        "us_per_call": [round(v, 1) for v in per_call_us],
    }
    write_result("last-seen-cost", result)
    print(f"hours_since_seen: {', '.join(f'{v:.1f}' for v in per_call_us)} µs per call")


if __name__ == "__main__":
    main()
