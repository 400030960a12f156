"""Memory per patient state, from real PhysioNet 2012 stays at the end of their 48 h.

Each stay's events go through the worker's own :class:`Processor` (no Kafka, no Triton:
every due score is finished in degraded mode, ``risk`` null, so ``last_score`` and the
alert state are filled as in the worker). Then:

* **core CPU time per event**: ``Processor.ingest`` (decode, validate, apply, and the
  feature window and NEWS2 of each due score) plus ``finish``, in this one process;
* **JSON bytes** of ``PatientState.to_dict()`` after the stay's last event (discharge
  included), compact separators, as the worker's state-size metric measures it; Faust's
  changelog record carries the same JSON;
* **heap bytes per patient** of the in-memory table: 1,000 patients' ``to_dict()`` values
  (the stays cycled, each copy a distinct object, as Faust's memory store holds them),
  measured with ``tracemalloc``, and the process RSS growth for those 1,000.

    .venv/bin/python -m bench.state_size --stays 500
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
import tracemalloc
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from bench.common import load_events, machine, rss_bytes, write_result
from streams.core.events import TopicKind
from streams.core.pipeline import Processor, ProcessorConfig
from streams.core.state import Origin, PatientState

__all__ = ["final_states"]

TARGET_BYTES = 20_000


def final_states(stays: int) -> tuple[dict[str, PatientState], int, float]:
    """Every stay's state after its last event, computed by the worker's processor;
    also how many events that took and the CPU seconds of processing them."""
    processor = Processor(ProcessorConfig(), lambda: datetime.now(UTC))
    states: dict[str, PatientState] = {}
    events = load_events(stays)
    started = time.process_time()
    for offset, event in enumerate(events):
        kind = TopicKind(event.kind)
        origin = Origin(f"bench.{kind.value}", 0, offset)
        result = processor.ingest(states, kind, event.key, event.value, origin)
        if result.snapshot is not None:
            processor.finish(states, result.snapshot, None, "bench_offline")
    return states, len(events), time.process_time() - started


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure and write ``bench/results/state_size.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stays", type=int, default=500)
    parser.add_argument("--patients", type=int, default=1000, help="table size for heap/RSS")
    parser.add_argument("--name", default="state_size", help="result file name")
    args = parser.parse_args(argv)
    states, events, cpu = final_states(args.stays)
    sizes = np.array([len(json.dumps(s.to_dict(), separators=(",", ":"))) for s in states.values()])
    texts = [json.dumps(s.to_dict()) for s in states.values()]
    by_field: dict[str, list[int]] = {}
    for state in states.values():
        for key, value in state.to_dict().items():
            by_field.setdefault(key, []).append(len(json.dumps(value, separators=(",", ":"))))
    # RSS first, without tracemalloc (whose own bookkeeping would count), then the heap.
    gc.collect()
    rss_before = _rss_self()
    table = _table(texts, args.patients)
    gc.collect()
    rss_after = _rss_self()
    del table
    gc.collect()
    tracemalloc.start()
    table = _table(texts, args.patients)
    heap, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    result = {
        "benchmark": "state_size",
        "machine": machine(),
        "stays": len(states),
        "events": events,
        "core_cpu_seconds": round(cpu, 2),
        "core_cpu_ms_per_event": round(1000 * cpu / events, 3),
        "json_bytes": {
            "p50": int(np.percentile(sizes, 50)),
            "p95": int(np.percentile(sizes, 95)),
            "max": int(sizes.max()),
            "mean": int(sizes.mean()),
        },
        "target_bytes": TARGET_BYTES,
        "meets_target_at_max": bool(sizes.max() <= TARGET_BYTES),
        "json_bytes_mean_by_field": {
            key: int(np.mean(sizes_)) for key, sizes_ in sorted(by_field.items())
        },
        "table_patients": len(table),
        "heap_bytes_per_patient": int(heap / len(table)),
        "rss_growth_mib_per_1000_patients": round(
            (rss_after - rss_before) / 2**20 * 1000 / len(table), 1
        ),
    }
    write_result(args.name, result)
    return result


def _table(texts: list[str], patients: int) -> dict[str, Any]:
    """``patients`` table values decoded from ``texts`` (cycled), each a distinct object."""
    return {f"p{i}": json.loads(texts[i % len(texts)]) for i in range(patients)}


def _rss_self() -> int:
    value = rss_bytes(os.getpid())
    if value is None:  # pragma: no cover - /proc/self always exists on Linux
        raise RuntimeError("no /proc/self/status")
    return value


if __name__ == "__main__":
    main()
