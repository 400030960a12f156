"""``vigil evaluate`` end to end: check the arguments, read the inputs, compute, write.

Argument problems are :class:`~vigil.errors.ConfigError` (exit 2); Kafka problems are
:class:`~vigil.errors.TopicError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from streams.evaluation.degraded import degraded_share
from streams.evaluation.evaluate import DataFormat, EvaluationConfig, evaluate
from streams.evaluation.outcomes import StayOutcome
from streams.evaluation.records import decode_alerts, decode_scores
from streams.evaluation.report import write_report
from streams.evaluation.sources import (
    read_file_lines,
    read_outcomes_2012,
    read_outcomes_2019,
    read_topic_lines,
)
from streams.evaluation.stays import alert_episodes, build_tracks
from vigil.errors import ConfigError

__all__ = ["EvaluateRequest", "parse_admitted_at", "run_evaluation"]

FORMATS: tuple[DataFormat, ...] = ("physionet2012", "physionet2019")


@dataclass(frozen=True, slots=True)
class EvaluateRequest:
    """The arguments of ``vigil evaluate`` (see ``vigil evaluate --help``)."""

    scores: Path | None
    topic: str | None
    alerts: Path | None
    alerts_topic: str | None
    outcomes: Sequence[Path]
    data_format: str
    report: Path | None
    kafka_bootstrap: str
    n_resamples: int = 1000
    seed: int = 0
    max_burdens: Sequence[float] = (0.01,)
    risk_threshold: float = 0.5
    admitted_at: datetime | None = None
    timelines: int = 4
    kafka_options: Mapping[str, Any] | None = None
    """Kafka security options (``streams.adapters.security.kafka_python_options``)."""

    def check(self) -> tuple[DataFormat, Path]:
        """The format and report folder, once every argument is known good.

        Raises:
            ConfigError: The first problem found.
        """
        if (self.scores is None) == (self.topic is None):
            raise ConfigError("give exactly one of --scores FILE or --topic TOPIC")
        if self.alerts is not None and self.alerts_topic is not None:
            raise ConfigError("give at most one of --alerts FILE or --alerts-topic TOPIC")
        if self.data_format not in FORMATS:
            raise ConfigError(
                f"unsupported --format {self.data_format!r}; supported: {', '.join(FORMATS)}"
            )
        if not self.outcomes:
            raise ConfigError("--outcomes is required")
        if self.data_format == "physionet2012" and len(self.outcomes) != 1:
            raise ConfigError("--format physionet2012 takes one --outcomes file (Outcomes-a.txt)")
        if self.report is None:
            raise ConfigError("--report DIR is required")
        if self.report.exists() and not self.report.is_dir():
            raise ConfigError(f"--report {self.report} exists and is not a folder")
        if not 0 < self.risk_threshold <= 1:
            raise ConfigError(f"--threshold must be in (0, 1], got {self.risk_threshold}")
        if not self.max_burdens or any(not b > 0 for b in self.max_burdens):
            raise ConfigError("--max-burden must be a positive number of alerts/patient-hour")
        if self.n_resamples < 0 or self.timelines < 0:
            raise ConfigError("--bootstrap and --timelines must be 0 or more")
        return self.data_format, self.report


def parse_admitted_at(text: str | None) -> datetime | None:
    """``--admitted-at``: an RFC 3339 time with a zone offset, or None.

    Raises:
        ConfigError: Not a time, or no zone offset.
    """
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--admitted-at must be an RFC 3339 time, got {text!r}") from None
    if value.tzinfo is None:
        raise ConfigError(f"--admitted-at needs a zone offset (e.g. Z), got {text!r}")
    return value


def _lines(path: Path | None, topic: str | None, request: EvaluateRequest) -> Iterable[str | bytes]:
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"no such file: {path}")
        return read_file_lines(path)
    if topic is None:
        raise ConfigError("give exactly one of --scores FILE or --topic TOPIC")
    return read_topic_lines(topic, request.kafka_bootstrap, kafka_options=request.kafka_options)


def run_evaluation(request: EvaluateRequest) -> dict[str, Any]:
    """Evaluate and write the report folder.

    Returns:
        A short summary: the report path, the degraded (NEWS2 only) share of the scores,
        stays evaluated, bad lines and each view's model AUROC (model scores only).

    Raises:
        ConfigError: A bad argument or unreadable input.
        TopicError: Kafka cannot be read.
    """
    data_format, report_dir = request.check()
    first_score_hours: dict[str, float] | None = None
    skipped: list[str] = []
    outcomes: dict[str, StayOutcome]
    if data_format == "physionet2012":
        if not request.outcomes[0].is_file():
            raise ConfigError(f"no such file: {request.outcomes[0]}")
        outcomes = read_outcomes_2012(request.outcomes[0])
    else:
        outcomes, skipped = read_outcomes_2019(request.outcomes)
        first_score_hours = {
            p: float(o.row_hours[0]) for p, o in outcomes.items() if o.row_hours.size
        }
    scores = decode_scores(_lines(request.scores, request.topic, request))
    tracks, superseded = build_tracks(scores.records, request.admitted_at, first_score_hours)
    decoded: dict[str, Any] = {"scores": scores.summary()}
    episodes = None
    alert_records = None
    if request.alerts is not None or request.alerts_topic is not None:
        alerts = decode_alerts(_lines(request.alerts, request.alerts_topic, request))
        decoded["alerts"] = alerts.summary()
        episodes = alert_episodes(alerts.records, tracks)
        alert_records = alerts.records
    degraded = degraded_share(scores.records, alert_records)
    config = EvaluationConfig(
        data_format=data_format,
        n_resamples=request.n_resamples,
        seed=request.seed,
        max_burdens=tuple(request.max_burdens),
        risk_threshold=request.risk_threshold,
        timelines=request.timelines,
    )
    result = evaluate(tracks, outcomes, config, episodes, degraded=degraded)
    admission = (
        f"every stay admitted at {request.admitted_at.isoformat()} (--admitted-at)"
        if request.admitted_at is not None
        else "each stay's first score event time"
        + (" minus its first row's ICULOS hours" if data_format == "physionet2019" else "")
    )
    inputs = {
        "scores": str(request.scores) if request.scores is not None else f"topic {request.topic}",
        "alerts": (
            str(request.alerts)
            if request.alerts is not None
            else (f"topic {request.alerts_topic}" if request.alerts_topic else None)
        ),
        "outcomes": [str(p) for p in request.outcomes],
        "outcome_files_skipped": skipped,
        "decoded": decoded,
        "superseded_scores": superseded,
        "admission": admission,
    }
    write_report(
        result,
        config=config,
        inputs=inputs,
        tracks=tracks,
        outcomes=outcomes,
        episodes=episodes,
        out_dir=report_dir,
    )
    return {
        "report": str(report_dir / "report.html"),
        "degraded": degraded.as_dict(),
        "stays": result.metrics["stays"],
        "bad_lines": {name: d["bad_lines"] for name, d in decoded.items()},
        "model_auroc": {
            view: d["model"]["auroc"]["estimate"]
            for view, d in result.metrics["discrimination"].items()
        },
    }
