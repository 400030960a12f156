"""Replay of demo stays, then ``vigil evaluate`` on what the worker emitted.

The first 100 of the 500 demo stays (PhysioNet 2012 set A, with their discharges) go
through the real Kafka, worker, Triton and Redis; all 500 (about 39,000 events) take
more than this test's time on a shared two-core machine, and their run, made with
:func:`replay_and_check`, is recorded in docs/evaluation.md. ``vigil evaluate`` then
reads the ``scores`` and ``alerts`` topics and writes its report; its numbers must equal
an offline computation on the same scores, done here independently with
:mod:`streams.core.risk_metrics`: AUROC and AUPRC of the model risk and of NEWS2 at 48 h and 24 h
after admission, the number of stays, and the count of alert episodes and alerted stays.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streams.adapters.topics import create_topics
from streams.core.risk_metrics import auprc, auroc
from streams.datasets.physionet2012 import read_outcomes
from streams.replay import DEFAULT_ANCHOR, physionet2012_events, produce, read_length_of_stay
from streams.settings import WorkerSettings
from vigil.cli import main
from vigil.stack.settings import StackSettings
from vigil.testing.outputs import read_records, wait_until_accounted
from vigil.testing.workers import running_worker, worker_env

DEMO = Path(__file__).resolve().parents[2] / "data" / "physionet2012-demo"
OUTCOMES = DEMO / "Outcomes-a.txt"
N_STAYS = 100
PLOTS = ("roc.png", "precision_recall.png", "calibration.png", "burden.png")


def _at(scores: list[dict[str, Any]], field: str, cutoff: datetime) -> float | None:
    """The last non-missing ``field`` at or before ``cutoff`` (scores in offset order)."""
    best: tuple[datetime, float] | None = None
    for score in scores:
        at = datetime.fromisoformat(score["event_time"])
        value = score[field] if field == "risk" else (score["news2"] or {}).get("total")
        # ">=" on equal times: a later record of the same state time replaces the earlier.
        if value is not None and at <= cutoff and (best is None or at >= best[0]):
            best = (at, float(value))
    return None if best is None else best[1]


def _offline(
    scores: dict[str, list[dict[str, Any]]], deaths: dict[str, int], hours: float, field: str
) -> tuple[int, float, float]:
    labels, values = [], []
    cutoff = DEFAULT_ANCHOR + timedelta(hours=hours)
    for pid in sorted(scores):
        value = _at(scores[pid], field, cutoff)
        if value is not None:
            labels.append(deaths[pid])
            values.append(value)
    y, s = np.asarray(labels, np.float64), np.asarray(values, np.float64)
    return len(labels), auroc(y, s), auprc(y, s)


def replay_and_check(
    stack: StackSettings, prefix: str, tmp_path: Path, n_stays: int, timeout_seconds: float
) -> dict[str, Any]:
    """Replay the first ``n_stays`` demo stays, evaluate, check; returns ``metrics.json``."""
    bootstrap = stack.kafka_bootstrap
    create_topics(WorkerSettings(kafka_bootstrap=bootstrap, topic_prefix=prefix, app_id=prefix))
    paths = sorted((DEMO / "set-a").glob("*.txt"))[:n_stays]
    events = list(physionet2012_events(paths, length_of_stay=read_length_of_stay(OUTCOMES)))
    ids = {json.loads(e.payload)["event_id"] for e in events}
    env = worker_env(
        stack,
        prefix=prefix,
        app_id=prefix,
        data_dir=tmp_path / "worker",
        # OOD off: this test is about accounting and throughput; the default configuration
        # with the OOD detector on is exercised end to end by test_clinical_e2e.py.
        triton_ood_model="",
    )
    log = tmp_path / "worker.log"
    with running_worker(env, log) as worker:
        produce(events, bootstrap=bootstrap, topic_prefix=prefix)
        wait_until_accounted(bootstrap, prefix, ids, worker, log, timeout_seconds)

    report = tmp_path / "report"
    argv = [
        "evaluate",
        "--topic",
        f"{prefix}.scores",
        "--alerts-topic",
        f"{prefix}.alerts",
        "--outcomes",
        str(OUTCOMES),
        "--format",
        "physionet2012",
        "--report",
        str(report),
        "--kafka-bootstrap",
        bootstrap,
        "--admitted-at",
        DEFAULT_ANCHOR.isoformat(),
        "--bootstrap",
        "200",  # the intervals are not checked here; the estimates do not depend on it
    ]
    assert main(argv) == 0
    metrics = json.loads((report / "metrics.json").read_text())

    scores: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in read_records(bootstrap, f"{prefix}.scores"):
        scores[record["patient_id"]].append(record)
    deaths = {str(rid): row.in_hospital_death for rid, row in read_outcomes(OUTCOMES).items()}
    assert len(scores) == n_stays
    assert set(scores) <= set(deaths)
    assert metrics["stays"]["evaluated"] == n_stays
    assert metrics["stays"]["positive"] == sum(deaths[p] for p in scores)

    for view, hours in (("48h", 48.0), ("24h", 24.0)):
        for predictor, field in (("model", "risk"), ("news2", "news2")):
            n, roc, pr = _offline(scores, deaths, hours, field)
            reported = metrics["discrimination"][view][predictor]
            assert reported["n"] == n, (view, predictor)
            assert reported["auroc"]["estimate"] == pytest.approx(roc, abs=1e-12)
            assert reported["auprc"]["estimate"] == pytest.approx(pr, abs=1e-12)
    assert 0.5 < metrics["discrimination"]["48h"]["model"]["auroc"]["estimate"] <= 1.0

    alerts = read_records(bootstrap, f"{prefix}.alerts")
    burden = metrics["alerts"]["burden"]
    assert burden["alerts"] == len({a["alert_id"] for a in alerts})
    assert burden["stays_alerted"] == len({a["patient_id"] for a in alerts})

    html = (report / "report.html").read_text()
    timelines = sorted(p.name for p in report.glob("timeline_*.png"))
    assert timelines
    for name in (*PLOTS, *timelines):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f'src="{name}"' in html, name
    return dict(metrics)


@pytest.mark.slow
def test_replay_report_matches_an_offline_computation(
    stack: StackSettings, unique: str, tmp_path: Path
) -> None:
    replay_and_check(stack, f"evale2e{unique}", tmp_path, N_STAYS, timeout_seconds=480)
