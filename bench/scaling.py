"""One worker against two on the same backlog: speed, and whether the outputs are the same.

The same real stays are produced to two sets of fresh topics. One ``vigil worker`` reads
the first set, two workers in one consumer group read the second (both timed as in
:mod:`bench.throughput`). Then every score and alert of each run is read back from Kafka
and compared:

* scores by (patient, event time): how many keys each run has, how many both have, and of
  those how many carry a different risk (rounded to 1e-5);
* alert changes by (alert id, state, severity, event time).

Identical outputs mean the same keys and risks and the same alert changes; repeats of a
key (at-least-once after a rebalance) are counted apart, as consumers upsert them.

    .venv/bin/python -m bench.scaling --stays 200 --step-model deterioration_step [--join-after 3]

With ``--join-after`` the second worker joins while the first is in the middle of the
backlog, so the comparison covers a rebalance that moves partitions holding records.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer

from bench.common import (
    fresh_settings,
    load_average,
    load_events,
    machine,
    produce,
    write_result,
)
from bench.throughput import run_workers
from streams.settings import WorkerSettings

__all__ = ["compare", "main"]

_RISK_DIGITS = 5


def _read_all(settings: WorkerSettings, kind: str) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(
        settings.topic(kind),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=5000,
    )
    try:
        return [json.loads(message.value) for message in consumer]
    finally:
        consumer.close()


def _score_key(score: dict[str, Any]) -> tuple[str, str]:
    return str(score["patient_id"]), str(score["event_time"])


def _risk(score: dict[str, Any]) -> float | None:
    risk = score.get("risk")
    return None if risk is None else round(float(risk), _RISK_DIGITS)


def compare(
    one: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    two: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> dict[str, Any]:
    """How the (scores, alerts) of two runs differ (see the module docstring)."""
    scores_1, alerts_1 = one
    scores_2, alerts_2 = two
    keys_1 = Counter(_score_key(s) for s in scores_1)
    keys_2 = Counter(_score_key(s) for s in scores_2)
    risk_1 = {_score_key(s): _risk(s) for s in scores_1}
    risk_2 = {_score_key(s): _risk(s) for s in scores_2}
    common = set(keys_1) & set(keys_2)

    def changes(alerts: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
        return {(a["alert_id"], a["state"], a.get("severity"), a["event_time"]) for a in alerts}

    changes_1, changes_2 = changes(alerts_1), changes(alerts_2)
    result = {
        "scores": [len(scores_1), len(scores_2)],
        "distinct_score_keys": [len(keys_1), len(keys_2)],
        "repeated_score_records": [
            len(scores_1) - len(keys_1),
            len(scores_2) - len(keys_2),
        ],
        "score_keys_in_both": len(common),
        "score_keys_only_in_one_worker_run": len(set(keys_1) - set(keys_2)),
        "score_keys_only_in_two_worker_run": len(set(keys_2) - set(keys_1)),
        "risk_differs_on_common_keys": sum(1 for k in common if risk_1[k] != risk_2[k]),
        "alert_changes": [len(changes_1), len(changes_2)],
        "alert_changes_only_in_one_worker_run": len(changes_1 - changes_2),
        "alert_changes_only_in_two_worker_run": len(changes_2 - changes_1),
    }
    result["identical"] = (
        result["score_keys_only_in_one_worker_run"] == 0
        and result["score_keys_only_in_two_worker_run"] == 0
        and result["risk_differs_on_common_keys"] == 0
        and changes_1 == changes_2
    )
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure and write ``bench/results/<name>.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stays", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--step-model",
        default=None,
        help="VIGIL_TRITON_STEP_MODEL for the workers: deterioration_step, or '' for the "
        "window model; unset: the worker's default (the window model)",
    )
    parser.add_argument(
        "--join-after",
        type=float,
        default=None,
        help="start the second worker this many seconds after the first one's first output "
        "(a rebalance in the middle of the backlog); unset: both start together",
    )
    parser.add_argument(
        "--code", type=Path, default=None, help="run the workers of another checkout"
    )
    parser.add_argument("--name", default="scaling")
    args = parser.parse_args(argv)
    events = load_events(args.stays)
    extra = {} if args.step_model is None else {"triton_step_model": args.step_model}
    runs: list[dict[str, Any]] = []
    outputs = []
    load_before = load_average()
    for workers in (1, 2):
        settings = fresh_settings("sc")
        produce(settings, events)
        timing = run_workers(
            settings,
            events,
            workers=workers,
            timeout=args.timeout,
            join_after_s=args.join_after if workers > 1 else None,
            code=args.code,
            extra=extra,
        )
        outputs.append((_read_all(settings, "scores"), _read_all(settings, "alerts")))
        runs.append({"workers": workers, **timing})
    per_second = [run.get("events_per_second") or 0.0 for run in runs]
    result = {
        "benchmark": "scaling",
        "machine": machine(),
        "load_before": load_before,
        "load_after": load_average(),
        "stays": args.stays,
        "events": len(events),
        "step_model": args.step_model,
        "join_after_seconds": args.join_after,
        "code": None if args.code is None else str(args.code),
        "runs": runs,
        "two_to_one": round(per_second[1] / per_second[0], 2) if per_second[0] else None,
        "outputs": compare(outputs[0], outputs[1]),
    }
    write_result(args.name, result)
    return result


if __name__ == "__main__":
    main()
