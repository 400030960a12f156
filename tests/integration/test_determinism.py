"""Deterministic replay: one recording played twice gives the same scores and alerts.

20 real stays are replayed into a source prefix and recorded with
:func:`streams.replay.record` (``vigil record``). The recording is then played back
(``vigil replay --format jsonl``: :func:`streams.replay.read_jsonl` and
:func:`streams.replay.produce`) into two fresh prefixes, each then processed by its own
worker, with step scoring (the default). The ``scores`` and ``alerts`` of the two runs
must be the same records, apart from wall-clock fields (``processing_time``) and the
topic prefix in provenance, compared as multisets per patient in event-time order.

Two causes were measured and fixed (details in docs/replay.md, "Determinism"): the
order in which a patient's vitals, labs and ADT records reached its state followed fetch
timing (the worker now applies each partition number's records in event-time order,
``streams/core/ordering.py``), and the risk of one input varied by up to 1.2e-7 with the
batch it was computed in (the Triton wrapper now runs fixed-shape blocks,
``models/common/triton_model.py``). A third cause went with a fix of the merger: it sorted all
held records of a partition number by event time, so a record arriving late on its own
topic was applied in or out of order depending on how much was held at that moment; it
now keeps each topic partition's offset order. Identical in 7 of 7 runs since.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from streams.adapters.topics import create_topics
from streams.replay import physionet2012_events, produce, read_jsonl, read_length_of_stay, record
from streams.settings import WorkerSettings
from vigil.stack.settings import StackSettings
from vigil.testing.outputs import comparable, read_records, wait_until_accounted
from vigil.testing.workers import running_worker, worker_env

DEMO = Path(__file__).resolve().parents[2] / "data" / "physionet2012-demo"
N_STAYS = 20
INPUTS = ("vitals", "labs", "adt")

Run = dict[str, dict[str, list[dict[str, Any]]]]  # topic kind -> patient -> records


class NotDeterministicError(AssertionError):
    """The two runs' scores or alerts differ."""


def _create(stack: StackSettings, prefix: str) -> WorkerSettings:
    settings = WorkerSettings(
        kafka_bootstrap=stack.kafka_bootstrap, topic_prefix=prefix, app_id=prefix
    )
    create_topics(settings)
    return settings


def _per_patient(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Normalised records per patient, sorted by event time (then content): a multiset."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        grouped[r["patient_id"]].append(comparable(r))
    return {
        pid: sorted(rs, key=lambda r: (r["event_time"], json.dumps(r, sort_keys=True)))
        for pid, rs in grouped.items()
    }


def _play(stack: StackSettings, recording: Path, prefix: str, ids: set[str], tmp_path: Path) -> Run:
    _create(stack, prefix)
    env = worker_env(
        stack,
        prefix=prefix,
        app_id=prefix,
        data_dir=tmp_path / prefix,
        # OOD off: this test is about accounting and throughput; the default configuration
        # with the OOD detector on is exercised end to end by test_clinical_e2e.py.
        triton_ood_model="",
        # Step scoring and its alert point: the defaults (docs/replay.md, "Determinism of
        # step scoring").
    )
    # The whole recording is on the topics before the worker reads it (a backlog, the
    # merger's hardest case). Produced while the worker reads, one topic can run ahead of
    # another that has nothing to deliver yet, and records then interleave differently
    # from run to run: a property of live input, not of the recording (docs/replay.md).
    produce(read_jsonl(recording), bootstrap=stack.kafka_bootstrap, topic_prefix=prefix)
    log = tmp_path / f"{prefix}.log"
    with running_worker(env, log) as worker:
        wait_until_accounted(stack.kafka_bootstrap, prefix, ids, worker, log, 300)
    return {
        kind: _per_patient(read_records(stack.kafka_bootstrap, f"{prefix}.{kind}"))
        for kind in ("scores", "alerts")
    }


def _differences(first: Run, second: Run) -> str:
    """Where two runs' scores differ, classified by cause (for the failure message)."""
    causes: Counter[str] = Counter()
    patients = set()
    largest = 0.0
    first_at: dict[str, str] = {}
    for pid in set(first["scores"]) | set(second["scores"]):
        a = {s["event_time"]: s for s in first["scores"].get(pid, [])}
        b = {s["event_time"]: s for s in second["scores"].get(pid, [])}
        if first["scores"].get(pid) == second["scores"].get(pid):
            continue
        patients.add(pid)
        causes["score at a time only one run has"] += len(a.keys() ^ b.keys())
        for at in a.keys() & b.keys():
            x, y = a[at], b[at]
            if x == y:
                continue
            if set(x["provenance"]["event_ids"]) != set(y["provenance"]["event_ids"]):
                causes["same time, different events cited (input interleaving)"] += 1
            elif x["risk"] != y["risk"]:
                causes["same events cited, different risk"] += 1
                if x["risk"] is not None and y["risk"] is not None:
                    largest = max(largest, abs(x["risk"] - y["risk"]))
                first_at[pid] = min(first_at.get(pid, at), at)
            else:
                fields = sorted(k for k in x.keys() | y.keys() if x.get(k) != y.get(k))
                causes[f"same events and risk, {fields} differ"] += 1
    alerts = sum(
        first["alerts"].get(p) != second["alerts"].get(p)
        for p in set(first["alerts"]) | set(second["alerts"])
    )
    return (
        f"scores differ for {len(patients)} of {len(first['scores'])} patients "
        f"({dict(causes)}; largest risk difference {largest:.3g}; first differing score "
        f"per patient {first_at}); alerts differ for {alerts} patients"
    )


@pytest.mark.slow
def test_same_recording_replayed_twice_gives_the_same_scores_and_alerts(
    stack: StackSettings, unique: str, tmp_path: Path
) -> None:
    bootstrap = stack.kafka_bootstrap
    source = f"det{unique}src"
    _create(stack, source)
    paths = sorted((DEMO / "set-a").glob("*.txt"))[:N_STAYS]
    events = list(
        physionet2012_events(paths, length_of_stay=read_length_of_stay(DEMO / "Outcomes-a.txt"))
    )
    ids = {json.loads(e.payload)["event_id"] for e in events}
    assert produce(events, bootstrap=bootstrap, topic_prefix=source) == len(events)
    recording = tmp_path / "inputs.jsonl"
    written = record(
        [f"{source}.{kind}" for kind in INPUTS],
        recording,
        bootstrap=bootstrap,
        from_beginning=True,
        until_idle=timedelta(seconds=3),
    )
    assert written == len(events)

    first = _play(stack, recording, f"det{unique}a", ids, tmp_path)
    second = _play(stack, recording, f"det{unique}b", ids, tmp_path)

    assert len(first["scores"]) == N_STAYS
    if first != second:
        raise NotDeterministicError(_differences(first, second))
