"""``vigil demo``: the whole pipeline on the bundled demo stays, live in the terminal.

It creates a fresh set of topics, starts a worker process, replays the 500 demo stays of
PhysioNet 2012 (from the model's held-out test split, see data/physionet2012-demo) as
fast as Kafka takes them, shows scores and alerts as they arrive, and ends with a
summary of what the pipeline did, measured against the stays' real outcomes, and the
``vigil evaluate`` report of the run's scores and alerts (``evaluation/report.html`` in
the run's report folder; see docs/evaluation.md).

The headline of the live view, of the progress lines and of the summary is the share of
scores degraded to NEWS2 only (Triton unavailable), with its reasons, in bold red when it
is not zero: degraded scoring is the answer to an outage, never to load, and a run that
silently became NEWS2 must not pass for a model run. On a terminal the view is drawn live;
otherwise (CI, a pipe, a log file) one plain progress line is printed every
``progress_every``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from kafka import KafkaConsumer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from streams.adapters.security import kafka_python_options
from streams.adapters.topics import create_topics
from streams.console.demo import DEMO_USER, start_demo_console
from streams.core.risk_metrics import auprc, auroc
from streams.datasets.physionet2012 import read_outcomes
from streams.evaluation.degraded import DEGRADED_LABEL, DegradedShare
from streams.evaluation.run import EvaluateRequest, run_evaluation
from streams.replay import DEFAULT_ANCHOR, physionet2012_events, produce, read_length_of_stay
from streams.settings import WorkerSettings
from vigil.errors import ConfigError, VigilError

__all__ = ["DEMO_DATA", "DemoResult", "degraded_text", "progress_line", "run_demo"]

DEMO_DATA = Path(__file__).resolve().parent.parent / "data" / "physionet2012-demo"


@dataclass
class DemoResult:
    """What the demo saw (also written as JSON to the report directory)."""

    produced: int = 0
    scores: int = 0
    degraded: DegradedShare = field(default_factory=DegradedShare)
    deadletters: int = 0
    alerts: Counter[str] = field(default_factory=Counter)
    max_risk: dict[str, float] = field(default_factory=dict)
    max_news2: dict[str, int] = field(default_factory=dict)
    alerted: set[str] = field(default_factory=set)
    cited: set[str] = field(default_factory=set)
    recent_alerts: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=8))

    @property
    def degraded_scores(self) -> int:
        """Scores degraded to NEWS2 only."""
        return self.degraded.degraded

    def add(self, topic: str, record: dict[str, Any]) -> None:
        """Count one output record.

        Args:
            topic: ``scores``, ``alerts`` or ``deadletter`` (the topic kind).
            record: The record's JSON, decoded.
        """
        if topic == "scores":
            pid = record["patient_id"]
            self.scores += 1
            self.cited.update(record["provenance"]["event_ids"])
            self.degraded.add(bool(record["degraded"]), record.get("degraded_reason"))
            # The model's peak risk comes from model scores only, never a degraded one.
            if not record["degraded"] and record["risk"] is not None:
                self.max_risk[pid] = max(self.max_risk.get(pid, 0.0), record["risk"])
            news2 = record["news2"]["total"] if record["news2"] else 0
            self.max_news2[pid] = max(self.max_news2.get(pid, 0), news2)
        elif topic == "alerts":
            self.alerts[record["state"]] += 1
            self.degraded.add_alert(bool(record.get("degraded")))
            if record["state"] == "open":
                self.alerted.add(record["patient_id"])
            self.recent_alerts.append(record)
        else:
            self.deadletters += 1


def degraded_text(degraded: DegradedShare) -> Text:
    """The degraded headline: bold red with a warning when any score was degraded."""
    if degraded.degraded:
        return Text(f"WARNING {degraded.headline()}", style="bold white on red")
    return Text(degraded.headline(), style="bold green" if degraded.scores else "")


def progress_line(result: DemoResult, expected: int, elapsed: timedelta) -> str:
    """One plain line of progress (for a log file or a pipe), degraded share included."""
    opened = result.alerts.get("open", 0)
    warn = "WARNING " if result.degraded.degraded else ""
    return (
        f"demo {elapsed.total_seconds():.0f}s: events produced {result.produced}/{expected}, "
        f"scores {result.scores}, alerts opened {opened} "
        f"({sum(result.alerts.values())} changes), dead-letter {result.deadletters}; "
        f"{warn}{result.degraded.headline()}"
    )


def _view(result: DemoResult, expected: int, started: float) -> Group:
    summary = Table.grid(padding=(0, 2))
    elapsed = time.monotonic() - started
    summary.add_row(
        f"events produced [bold]{result.produced}[/]/{expected}",
        f"scores [bold]{result.scores}[/]",
        f"dead-letter [bold]{result.deadletters}[/]",
        f"alerts {dict(result.alerts)}",
        f"{elapsed:.0f}s",
    )
    alerts = Table("stay", "state", "severity", "risk", "explanation", title="latest alerts")
    for alert in reversed(result.recent_alerts):
        risk: str | Text = (
            Text(DEGRADED_LABEL, style="red") if alert["risk"] is None else f"{alert['risk']:.2f}"
        )
        alerts.add_row(
            alert["patient_id"], alert["state"], alert["severity"], risk, alert["explanation"]
        )
    return Group(degraded_text(result.degraded), summary, alerts)


class _Display:
    """The live view on a terminal, else a progress line every ``every`` (and at the end).

    Args:
        console: Where to draw.
        render: The live view, for a terminal.
        line: The progress line, for anything else.
        every: Time between progress lines.
        clock: Monotonic seconds (injected for tests).
    """

    def __init__(
        self,
        console: Console,
        render: Callable[[], Group],
        line: Callable[[], str],
        every: timedelta,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.render = render
        self.line = line
        self.every = every.total_seconds()
        self.clock = clock
        self.live: Live | None = None
        self.last_line: float | None = None

    def __enter__(self) -> _Display:
        if self.console.is_terminal:
            self.live = Live(self.render(), console=self.console, refresh_per_second=4)
            self.live.__enter__()
        return self

    def update(self) -> None:
        """Redraw the live view, or print a line when ``every`` has passed."""
        if self.live is not None:
            self.live.update(self.render())
            return
        now = self.clock()
        if self.last_line is None or now - self.last_line >= self.every:
            self._print()
            self.last_line = now

    def _print(self) -> None:
        self.console.print(self.line(), markup=False, highlight=False, soft_wrap=True)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.live is not None:
            self.live.update(self.render())
            self.live.__exit__(kind, value, traceback)
        else:
            self._print()


def _consume(settings: WorkerSettings, result: DemoResult, stop: threading.Event) -> None:
    consumer = KafkaConsumer(
        settings.topic("scores"),
        settings.topic("alerts"),
        settings.topic("deadletter"),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=500,
        **kafka_python_options(settings),
    )
    try:
        while not stop.is_set():
            for message in consumer:
                result.add(message.topic.rsplit(".", 1)[1], json.loads(message.value))
                if stop.is_set():
                    break
    finally:
        consumer.close()


def _summary(result: DemoResult, outcomes: dict[str, int], hours: float) -> dict[str, Any]:
    stays = sorted(set(result.max_risk) & set(outcomes))
    labels = np.array([outcomes[s] for s in stays])
    degraded = result.degraded
    summary: dict[str, Any] = {
        # The headline: how much of the run was NEWS2 only.
        "degraded": degraded.as_dict(),
        "data": "500 PhysioNet 2012 set-A stays from the model's held-out test split",
        "stays_scored_by_model": len(stays),
        "events_produced": result.produced,
        "scores": result.scores,
        "degraded_scores": degraded.degraded,
        "deadletters": result.deadletters,
        "alert_changes": dict(result.alerts),
        "model_metrics": (
            f"*_max_risk use the {degraded.model_scores} model scores only; "
            f"{degraded.degraded} {DEGRADED_LABEL} scores excluded"
        ),
        "news2_metrics": (
            f"*_max_news2 use all {degraded.scores} scores, {DEGRADED_LABEL} scores included"
        ),
    }
    if len(stays) and 0 < labels.sum() < len(labels):
        risk = np.array([result.max_risk[s] for s in stays])
        news2 = np.array([result.max_news2.get(s, 0) for s in stays], dtype=float)
        alerted = np.array([s in result.alerted for s in stays])
        summary.update(
            {
                "deaths": int(labels.sum()),
                "auroc_max_risk": round(auroc(labels, risk), 4),
                "auprc_max_risk": round(auprc(labels, risk), 4),
                "auroc_max_news2": round(auroc(labels, news2), 4),
                "stays_alerted": int(alerted.sum()),
                "deaths_alerted_fraction": round(float(alerted[labels == 1].mean()), 4),
                "survivors_alerted_fraction": round(float(alerted[labels == 0].mean()), 4),
                "alerts_opened_per_patient_day": round(
                    result.alerts["open"] / max(len(stays) * hours / 24, 1e-9), 4
                ),
            }
        )
    return summary


def run_demo(
    settings: WorkerSettings,
    *,
    data_dir: Path = DEMO_DATA,
    limit_stays: int | None = None,
    report_dir: Path = Path("reports"),
    timeout_seconds: float = 900.0,
    console: Console | None = None,
    progress_every: timedelta = timedelta(seconds=10),
    console_port: int | None = 8088,
) -> dict[str, Any]:
    """Run the demo end to end; returns (and writes) the summary.

    The summary's ``degraded`` (first key) is the share of scores degraded to NEWS2 only,
    with the reasons; ``evaluation_report`` is the ``report.html`` that ``vigil evaluate``
    wrote from the run's ``scores`` and ``alerts`` topics (every stay admitted at the
    replay's anchor, so the 48 h and 24 h views are exact).

    Args:
        settings: The worker's settings (the run gets its own topic prefix and app id).
        data_dir: The demo stays.
        limit_stays: Replay only the first N stays.
        report_dir: Where the run's folder goes.
        timeout_seconds: Give up when the pipeline has not accounted for every event.
        console: Where the view goes (default stderr); live only on a terminal.
        progress_every: Time between progress lines when the console is not a terminal.
        console_port: Port of the ward console started beside the run (``vigil console``
            on the run's topics, with a demo user whose password is printed); None: none.

    Raises:
        ConfigError: The demo data are missing.
        VigilError: The worker died or the pipeline did not finish in time.
        TopicError: The scores or alerts could not be read back for the evaluation.
    """
    console = console or Console(stderr=True)
    paths = sorted((data_dir / "set-a").glob("*.txt"))[:limit_stays]
    if not paths:
        raise ConfigError(f"no demo stays in {data_dir / 'set-a'}")
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    run = settings.model_copy(update={"topic_prefix": f"demo{stamp}", "app_id": f"demo{stamp}"})
    created = create_topics(run)
    console.print(f"topics created under prefix [bold]{run.topic_prefix}[/] ({len(created)})")
    los = read_length_of_stay(data_dir / "Outcomes-a.txt")
    events = list(physionet2012_events(paths, length_of_stay=los))
    expected_ids = {json.loads(e.payload)["event_id"] for e in events}
    report = report_dir / f"demo-{stamp}"
    report.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "VIGIL_KAFKA_BOOTSTRAP": run.kafka_bootstrap,
        "VIGIL_TOPIC_PREFIX": run.topic_prefix,
        "VIGIL_APP_ID": run.app_id,
        "VIGIL_REDIS_URL": run.redis_url,
        "VIGIL_TRITON_URL": run.triton_url,
        "VIGIL_METRICS_PORT": str(run.metrics_port),
        "VIGIL_DATA_DIR": str(report / "worker-data"),
    }
    ward = None
    if console_port is not None:
        try:
            ward = start_demo_console(
                prefix=run.topic_prefix,
                report=report,
                kafka_bootstrap=run.kafka_bootstrap,
                redis_url=run.redis_url,
                port=console_port,
            )
        except OSError as exc:
            console.print(f"[yellow]ward console not started[/]: port {console_port}: {exc}")
    if ward is not None:
        console.print(
            f"ward console: [bold]{ward.url}[/] (demo login [bold]{DEMO_USER}[/] / "
            f"[bold]{ward.password}[/]: a demo user, loopback only)"
        )
    log = report / "worker.log"
    with log.open("ab") as handle:
        worker = subprocess.Popen(
            [sys.executable, "-m", "vigil", "worker"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    result = DemoResult()
    stop = threading.Event()
    reader = threading.Thread(target=_consume, args=(run, result, stop), daemon=True)
    reader.start()

    def progress(count: int, _at: datetime) -> None:
        result.produced = count

    producer = threading.Thread(
        target=lambda: setattr(
            result,
            "produced",
            produce(
                events,
                bootstrap=run.kafka_bootstrap,
                topic_prefix=run.topic_prefix,
                kafka_options=kafka_python_options(run),
                progress=progress,
            ),
        ),
        daemon=True,
    )
    started = time.monotonic()
    display = _Display(
        console,
        render=lambda: _view(result, len(events), started),
        line=lambda: progress_line(
            result, len(events), timedelta(seconds=time.monotonic() - started)
        ),
        every=progress_every,
    )
    producer.start()
    try:
        with display:
            while True:
                display.update()
                if worker.poll() is not None:
                    raise VigilError(f"the worker exited; see {log}")
                accounted = len(result.cited) + result.deadletters
                if not producer.is_alive() and accounted >= len(expected_ids):
                    break
                if time.monotonic() - started > timeout_seconds:
                    raise VigilError(
                        f"pipeline did not finish in {timeout_seconds:.0f}s "
                        f"({accounted}/{len(expected_ids)} events accounted); see {log}"
                    )
                time.sleep(0.25)
    finally:
        stop.set()
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(60)
        reader.join(5)
        if ward is not None and ward.proc.poll() is None:
            os.killpg(ward.proc.pid, signal.SIGTERM)
            ward.proc.wait(30)
    deaths = {
        str(rid): row.in_hospital_death
        for rid, row in read_outcomes(data_dir / "Outcomes-a.txt").items()
    }
    summary = _summary(result, deaths, hours=48.0)
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    console.print("writing the evaluation report (vigil evaluate) ...")
    evaluation = run_evaluation(
        EvaluateRequest(
            scores=None,
            topic=run.topic("scores"),
            alerts=None,
            alerts_topic=run.topic("alerts"),
            outcomes=[data_dir / "Outcomes-a.txt"],
            data_format="physionet2012",
            report=report / "evaluation",
            kafka_bootstrap=run.kafka_bootstrap,
            kafka_options=kafka_python_options(run),
            admitted_at=DEFAULT_ANCHOR,
        )
    )
    summary["evaluation_report"] = evaluation["report"]
    if ward is not None:
        summary["ward_console"] = {"url": ward.url, "user": DEMO_USER, "reopen": ward.reopen}
        console.print(
            f"ward console of this run: {escape(ward.reopen)}\n  then open {ward.url} and sign "
            f"in as {DEMO_USER} / {ward.password} (a demo user, loopback only)"
        )
    (report / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(degraded_text(result.degraded))
    return {"report": str(report), **summary}
