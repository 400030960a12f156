"""Read a worker's outputs back from Kafka, and wait until it has handled every input.

An input event is *accounted for* once a score cites it in its provenance or it is in
dead-letter. Reading stops at the end offsets a topic has when reading starts
(:func:`streams.evaluation.sources.read_topic_lines`), so a read never waits for an idle
timeout.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from streams.evaluation.sources import read_topic_lines

__all__ = ["WALL_CLOCK_FIELDS", "comparable", "read_records", "wait_until_accounted"]

WALL_CLOCK_FIELDS = frozenset({"processing_time"})
"""Output fields that depend on when a record was processed, not on its input."""


def read_records(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record of ``topic`` as decoded JSON, in partition then offset order."""
    return [json.loads(value) for value in read_topic_lines(topic, bootstrap)]


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """An output record as two runs over the same input must both write it: without its
    wall-clock fields, and with provenance topics stripped of their prefix (each run has
    its own)."""
    out = {k: v for k, v in record.items() if k not in WALL_CLOCK_FIELDS}
    if "provenance" in out:
        provenance = dict(out["provenance"])
        provenance["offsets"] = [
            {**r, "topic": r["topic"].rsplit(".", 1)[-1]} for r in provenance["offsets"]
        ]
        out["provenance"] = provenance
    return out


def _cited(scores: Iterable[dict[str, Any]]) -> set[str]:
    return {i for s in scores for i in s["provenance"]["event_ids"]}


def _dead_ids(dead: Iterable[dict[str, Any]]) -> set[str]:
    ids = set()
    for record in dead:
        try:
            ids.add(json.loads(record["payload"])["event_id"])
        except (ValueError, KeyError, TypeError):
            continue
    return ids


def wait_until_accounted(
    bootstrap: str,
    prefix: str,
    event_ids: set[str],
    worker: subprocess.Popen[bytes],
    log: Path,
    timeout_seconds: float,
) -> float:
    """Poll ``<prefix>.scores`` and ``<prefix>.deadletter`` until every id is accounted for.

    Returns:
        Wall seconds waited.

    Raises:
        AssertionError: The worker exited (with its log's tail), or the time ran out (with
            how many events are still unaccounted for).
    """
    started = time.monotonic()
    missing = len(event_ids)
    while time.monotonic() - started < timeout_seconds:
        seen = _cited(read_records(bootstrap, f"{prefix}.scores"))
        seen |= _dead_ids(read_records(bootstrap, f"{prefix}.deadletter"))
        missing = len(event_ids - seen)
        if not missing:
            return time.monotonic() - started
        assert worker.poll() is None, log.read_text()[-3000:]
        time.sleep(2)
    raise AssertionError(
        f"{missing} of {len(event_ids)} events unaccounted for after {timeout_seconds:.0f}s"
    )
