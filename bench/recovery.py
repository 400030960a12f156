"""Recovery after SIGKILL: seconds from killing a worker to its replacement's first score.

Real stays are produced while a worker runs: a first part before it starts, the rest
paced during the run. After ``--kill-after`` seconds of output the worker's process group
gets SIGKILL, and a new worker starts at once with the same data directory (as a
restarted pod with its volume). Recovery is the time from the kill to the first score
record written after it (Kafka timestamp of the record). Measured twice in one run, same
data, fresh topics each:

* ``defaults``: the worker's default settings (static group membership derived from the
  host and the data directory, 10 s session);
* ``before``: the settings before 5 Dec (dynamic membership, Faust's 60 s session),
  for the ratio.

    .venv/bin/python -m bench.recovery --stays 30
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from bench.common import (
    LOGS,
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

__all__ = ["measure"]

_CASES: dict[str, dict[str, str]] = {
    "defaults": {},
    "before": {"kafka_static_membership": "false", "kafka_session_timeout_seconds": "60"},
}


def measure(case: str, stays: int, kill_after: float, timeout: float) -> dict[str, Any]:
    """One kill-and-restart under ``case``'s settings; returns the timings."""
    events = load_events(stays)
    settings = fresh_settings(f"rec{case}")
    first, rest = events[: len(events) // 3], events[len(events) // 3 :]
    produce(settings, first)
    data_dir = str(LOGS / f"recovery-{uuid.uuid4().hex[:6]}")
    extra: dict[str, Any] = {"data_dir": data_dir, **_CASES[case]}
    log = LOGS / f"{settings.app_id}.log"
    reader = OutputReader(settings)
    stop = threading.Event()

    def feed() -> None:
        # The rest in slices, so that input keeps arriving across the kill.
        for start in range(0, len(rest), 50):
            if stop.is_set():
                return
            produce(settings, rest[start : start + 50])
            time.sleep(0.25)

    worker = start_worker(settings, log, **extra)
    feeder = threading.Thread(target=feed, name="recovery-feed")
    replacement = None
    try:
        deadline = time.monotonic() + 120
        while reader.first_output is None and time.monotonic() < deadline:
            reader.poll()
        if reader.first_output is None:
            raise RuntimeError(f"no output within 120 s (see {log})")
        feeder.start()
        until = time.monotonic() + kill_after
        while time.monotonic() < until:
            reader.poll()
        killed_at = time.time()
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        replacement = start_worker(settings, log, **extra)
        recovered: float | None = None
        deadline = time.monotonic() + timeout
        while recovered is None and time.monotonic() < deadline:
            reader.poll()
            after = [s["_at"] for s in reader.scores if s["_at"] > killed_at]
            recovered = min(after) - killed_at if after else None
    finally:
        stop.set()
        if feeder.is_alive():
            feeder.join()
        stop_worker(worker)
        if replacement is not None:
            stop_worker(replacement)
        reader.close()
    return {
        "case": case,
        "settings": _CASES[case],
        "events": len(events),
        "recovery_seconds": None if recovered is None else round(recovered, 1),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure both cases and write ``bench/results/recovery.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stays", type=int, default=30)
    parser.add_argument("--kill-after", type=float, default=5.0, help="seconds of output")
    parser.add_argument("--timeout", type=float, default=150.0, help="wait for a recovery")
    parser.add_argument("--name", default="recovery")
    args = parser.parse_args(argv)
    before = load_average()
    cases = [measure(case, args.stays, args.kill_after, args.timeout) for case in _CASES]
    result = {
        "benchmark": "recovery",
        "machine": machine(),
        "load_before": before,
        "load_after": load_average(),
        "cases": cases,
    }
    for case in cases:
        print(f"{case['case']}: first score {case['recovery_seconds']} s after SIGKILL")
    write_result(args.name, result)
    return result


if __name__ == "__main__":
    main()
