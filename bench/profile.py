"""Summarise a py-spy profile (``--format raw``: one ``frame;frame;... count`` line per
distinct stack, root first) of the worker: where its CPU time goes per input event.

Only active samples are recorded (py-spy leaves threads it judges idle out), so a sample
stands for about ``1 / rate`` seconds of a thread running or runnable; on a machine whose
cores are oversubscribed that is more than the CPU time it got (the throughput benchmark
reads the worker's real CPU time from ``/proc`` beside it). Frames are grouped into stages by the
function names below; a sample counts for the innermost stage on its stack.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["STAGES", "summarise"]

STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # innermost first: the first stage whose marker is on the stack wins, scanning leaf-up
    ("state: to_dict + table write (Faust JSON, changelog)", ("to_dict (", "put (streams/app")),
    ("state: from_dict / decode (table read)", ("from_dict (", "decode_state (")),
    (
        "feature window (PatientState.features)",
        ("PatientState.features (", "build_features (", "features_at ("),
    ),
    ("NEWS2", ("news2 (", "news2_from_observations (")),
    ("decode + validate (pydantic)", ("decode_input (",)),
    ("score/alert records (finish, alert policy)", ("finish (", "alert_records (")),
    ("Triton client (tritonclient gRPC, batching)", ("streams/adapters/triton.py",)),
    (
        "output send (Faust/aiokafka producer)",
        ("Emitter.", "_emit (", "send (faust", "aiokafka/producer"),
    ),
    ("Redis writes", ("redis_store.py",)),
    ("state encode + changelog", ("state_codec.py", "StateTable.write", "DurableTable")),
    ("other batch work", ("process_batch (", "_process_batch (", "process_event (")),
    ("aiokafka consumer / Faust stream", ("aiokafka/consumer", "faust/transport", "faust/streams")),
    ("Faust tables / commit", ("faust/tables", "faust/transport/consumer")),
    ("metrics (prometheus_client)", ("prometheus_client",)),
)


def _stage(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, markers in STAGES:
            if any(marker in frame for marker in markers):
                return name
    return "other (event loop, asyncio, GC, start-up)"


def _function(frame: str) -> str:
    # "name (path/to/file.py:123)" -> "name (path/to/file.py)"
    head, _, rest = frame.partition(" (")
    return f"{head} ({rest.rsplit(':', 1)[0]})" if rest else head


def summarise(path: Path, *, rate_hz: float, events: int, seconds: float) -> dict[str, Any]:
    """Per-stage and per-function CPU time of a raw py-spy profile.

    Args:
        path: The profile.
        rate_hz: Samples per second it was recorded at.
        events: Input events accounted for while it recorded.
        seconds: How long it recorded (wall time).
    """
    stages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        stages[_stage(frames)] += count
        own[_function(frames[-1])] += count
        for function in {_function(frame) for frame in frames}:
            inclusive[function] += count
    cpu_seconds = total / rate_hz
    per_event_ms = 1000 * cpu_seconds / events if events else None

    def share(counter: Counter[str], top: int) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "share": round(count / total, 3),
                "active_ms_per_event": None
                if per_event_ms is None
                else round(per_event_ms * count / total, 3),
            }
            for name, count in counter.most_common(top)
        ]

    return {
        "file": str(path.name),
        "tool": "py-spy record --rate 50 --format raw --nonblocking (active threads only)",
        "samples": total,
        "wall_seconds": round(seconds, 1),
        "active_seconds_sampled": round(cpu_seconds, 1),
        "events_in_window": events,
        "active_ms_per_event": None if per_event_ms is None else round(per_event_ms, 2),
        "stages": share(stages, len(STAGES) + 1),
        "top_self": share(own, 20),
        "top_inclusive": share(inclusive, 30),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Summarise a saved profile: ``python -m bench.profile FILE --events N --seconds S``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    summary = summarise(args.path, rate_hz=args.rate, events=args.events, seconds=args.seconds)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
