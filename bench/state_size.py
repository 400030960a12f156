"""Memory per patient state, from real PhysioNet 2012 stays at the end of their 48 h.

Each stay's events go through the worker's own :class:`Processor` (no Kafka, no Triton:
every due score is finished in degraded mode, ``risk`` null, so ``last_score`` and the
alert state are filled as in the worker). Then:

* **core CPU time per event**: ``Processor.ingest`` (decode, validate, apply, and the
  feature window and NEWS2 of each due score) plus ``finish``, in this one process;
* **JSON bytes** of ``PatientState.to_dict()`` after the stay's last event (discharge
  included), compact separators, as the worker's state-size metric measures it; Faust's
  changelog record carries the same JSON;
* **binary bytes** of ``encode_state`` (``streams.core.state_codec``, format version 2)
  for the same states, and **encode + decode µs per state** for it and for the JSON
  path (``json.dumps(to_dict())`` + ``from_dict(json.loads(...))``): the best of
  ``--repeats`` timings of each state (the least disturbed by other processes), and what
  the series and the event ids account for (the same states without them);
* **heap bytes per patient** of the in-memory table: 1,000 patients' ``to_dict()`` values
  (the stays cycled, each copy a distinct object, as Faust's memory store holds them),
  measured with ``tracemalloc``, and the process RSS growth for those 1,000.

    .venv/bin/python -m bench.state_size --stays 500
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import time
import tracemalloc
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.common import load_events, machine, rss_bytes, write_result
from streams.core.events import TopicKind
from streams.core.pipeline import Processor, ProcessorConfig
from streams.core.state import Origin, PatientState
from streams.core.state_codec import STATE_FORMAT_VERSION, decode_state, encode_state

__all__ = ["final_states"]

TARGET_BYTES = 20_000
TARGET_BINARY_BYTES_P99 = 8_000
"""Issue 15: at most 8 KB serialised at the p99 of the 500 demo stays."""
TARGET_CODEC_MICROS = 50.0
"""Issue 15: encode + decode at most 50 µs per state."""


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
    parser.add_argument("--repeats", type=int, default=5, help="timings per state (best kept)")
    args = parser.parse_args(argv)
    states, events, cpu = final_states(args.stays)
    sizes = np.array([len(json.dumps(s.to_dict(), separators=(",", ":"))) for s in states.values()])
    binary = np.array([len(encode_state(s)) for s in states.values()])
    codec = _codec_figures(list(states.values()), args.repeats)
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
        "json_bytes": _summary(sizes),
        "target_bytes": TARGET_BYTES,
        "meets_target_at_max": bool(sizes.max() <= TARGET_BYTES),
        "binary_format_version": STATE_FORMAT_VERSION,
        "binary_bytes": _summary(binary),
        "binary_target_bytes_p99": TARGET_BINARY_BYTES_P99,
        "binary_meets_target_at_p99": bool(np.percentile(binary, 99) <= TARGET_BINARY_BYTES_P99),
        **codec,
        "codec_target_us": TARGET_CODEC_MICROS,
        "codec_meets_target_at_mean": bool(
            codec["binary_encode_decode_us"]["mean"] <= TARGET_CODEC_MICROS
        ),
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


def _summary(values: NDArray[Any], digits: int = 0) -> dict[str, float]:
    """p50 / p95 / p99 / max / mean of ``values``, rounded to ``digits``."""
    figures = {
        "p50": np.percentile(values, 50),
        "p95": np.percentile(values, 95),
        "p99": np.percentile(values, 99),
        "max": values.max(),
        "mean": values.mean(),
    }
    return {key: round(float(value), digits) for key, value in figures.items()}


def _best_micros(action: Callable[[], object], repeats: int, loops: int = 3) -> float:
    """Best of ``repeats`` timings of ``loops`` calls, in µs per call."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(loops):
            action()
        best = min(best, time.perf_counter() - started)
    return best / loops * 1e6


def _codec_figures(states: list[PatientState], repeats: int) -> dict[str, Any]:
    """Encode/decode µs per state (binary and JSON), and what series and ids account for."""

    def binary_micros(state: PatientState) -> tuple[float, float]:
        data = encode_state(state)
        return (
            _best_micros(lambda: encode_state(state), repeats),
            _best_micros(lambda: decode_state(data), repeats),
        )

    def json_micros(state: PatientState) -> float:
        text = json.dumps(state.to_dict(), separators=(",", ":"))
        return _best_micros(
            lambda: json.dumps(state.to_dict(), separators=(",", ":")), repeats, 1
        ) + _best_micros(lambda: PatientState.from_dict(json.loads(text)), repeats, 1)

    encode, decode = np.array([binary_micros(state) for state in states]).T
    no_series = [dataclasses.replace(state, series={}) for state in states]
    no_ids = [dataclasses.replace(state, recent_ids={}, pending_ids=[]) for state in states]
    return {
        "binary_encode_us": _summary(encode, 1),
        "binary_decode_us": _summary(decode, 1),
        "binary_encode_decode_us": _summary(encode + decode, 1),
        "binary_encode_decode_us_mean_without": {
            "series": round(float(np.mean([sum(binary_micros(s)) for s in no_series])), 1),
            "event_ids": round(float(np.mean([sum(binary_micros(s)) for s in no_ids])), 1),
        },
        "binary_bytes_mean_without": {
            "series": int(np.mean([len(encode_state(s)) for s in no_series])),
            "event_ids": int(np.mean([len(encode_state(s)) for s in no_ids])),
        },
        "json_encode_decode_us": _summary(np.array([json_micros(s) for s in states]), 1),
    }


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
