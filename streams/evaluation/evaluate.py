"""Every number of ``vigil evaluate``, from tracks and outcomes (pure).

Views: PhysioNet 2012 is judged per stay at each horizon (48 h and 24 h after admission,
the last score at or before it); PhysioNet 2019 per hourly row (the last score at or
before the row, as the challenge scores rows). Predictors: the model risk, the NEWS2 total
of the same score records, and (2012) SAPS-I and SOFA from the outcomes file.

Model metrics (the model's discrimination, calibration, simulated alerts and utility) use
model scores only: a degraded score (NEWS2 only) is left out of them. NEWS2 baselines use
every score, degraded or not, since NEWS2 is computed for both. ``metrics["degraded"]``
states the share, the reasons and what was left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from streams.core.risk_metrics import expected_calibration_error, reliability_table
from streams.evaluation.bootstrap import discrimination
from streams.evaluation.burden import (
    OperatingPoint,
    alert_burden,
    crossing_hours,
    lead_time_summary,
    sensitivity_at_burden,
    threshold_sweep,
)
from streams.evaluation.degraded import (
    DEGRADED_LABEL,
    DegradedShare,
    model_risk_from_earlier_score,
    stays_without_model_score,
)
from streams.evaluation.outcomes import StayOutcome
from streams.evaluation.stays import Signal, Track, values_at
from streams.evaluation.utility import normalised_utility

__all__ = ["DataFormat", "Evaluation", "EvaluationConfig", "View", "evaluate"]

DataFormat = Literal["physionet2012", "physionet2019"]
_NEWS2_UTILITY_THRESHOLDS = (5, 7)
_SWEEP_POINTS_KEPT = 200
_SIGNALS: tuple[tuple[str, Signal], ...] = (("model", "risk"), ("news2", "news2"))


@dataclass(frozen=True, slots=True)
class EvaluationConfig:
    """Choices of one evaluation (every one is recorded in ``metrics.json``).

    Attributes:
        data_format: ``physionet2012`` or ``physionet2019``.
        horizons_hours: 2012 only: per-stay prediction times, hours after admission.
        n_resamples: Bootstrap resamples per interval.
        seed: Bootstrap seed.
        max_burdens: Burden limits, alerts per patient-hour, for sensitivity at a burden.
        risk_threshold: 2019 utility: predict sepsis when the risk is at or above this.
        n_bins: Calibration bins (equal width).
        timelines: How many stays get an alert-timeline plot.
    """

    data_format: DataFormat
    horizons_hours: tuple[float, ...] = (48.0, 24.0)
    n_resamples: int = 1000
    seed: int = 0
    max_burdens: tuple[float, ...] = (0.01,)
    risk_threshold: float = 0.5
    n_bins: int = 10
    timelines: int = 4


@dataclass(frozen=True, slots=True)
class View:
    """Units of one view with each predictor's labels and scores (for the plots).

    ``predictors`` maps a name to ``(labels [N], scores [N])``; ``risk`` is the model
    risk's ``(labels, risks)`` used for calibration.
    """

    name: str
    predictors: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]
    risk: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]


@dataclass(slots=True)
class Evaluation:
    """The result: ``metrics`` (JSON-ready) and what the plots need."""

    metrics: dict[str, Any]
    views: list[View] = field(default_factory=list)
    sweeps: dict[str, list[OperatingPoint]] = field(default_factory=dict)
    timeline_stays: list[str] = field(default_factory=list)


def _unit_arrays(
    tracks: Sequence[Track], outcomes: Mapping[str, StayOutcome], hours: float
) -> dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]]:
    """2012: per predictor, ``(labels, scores, stay index)`` of the stays it covers."""
    out: dict[str, tuple[list[float], list[float], list[int]]] = {
        name: ([], [], []) for name in ("model", "news2", "saps_i", "sofa")
    }
    for index, track in enumerate(tracks):
        outcome = outcomes[track.patient_id]
        values: dict[str, float | None] = {
            "model": float(values_at(track, "risk", [hours])[0]),
            "news2": float(values_at(track, "news2", [hours])[0]),
            "saps_i": outcome.saps_i,
            "sofa": outcome.sofa,
        }
        for name, value in values.items():
            if value is not None and not np.isnan(value):
                out[name][0].append(float(outcome.label))
                out[name][1].append(value)
                out[name][2].append(index)
    return {
        name: (np.asarray(y, np.float64), np.asarray(s, np.float64), np.asarray(c, np.int64))
        for name, (y, s, c) in out.items()
    }


def _row_arrays(
    tracks: Sequence[Track], outcomes: Mapping[str, StayOutcome]
) -> dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]]:
    """2019: per predictor, ``(row labels, scores, stay index)`` of the rows it covers."""
    parts: dict[str, list[tuple[Any, Any, Any]]] = {"model": [], "news2": []}
    for index, track in enumerate(tracks):
        outcome = outcomes[track.patient_id]
        for name, signal in _SIGNALS:
            scores = values_at(track, signal, outcome.row_hours)
            keep = ~np.isnan(scores)
            parts[name].append(
                (outcome.row_labels[keep], scores[keep], np.full(int(keep.sum()), index))
            )
    out = {}
    for name, rows in parts.items():
        y = np.concatenate([r[0] for r in rows]).astype(np.float64) if rows else np.zeros(0)
        s = np.concatenate([r[1] for r in rows]).astype(np.float64) if rows else np.zeros(0)
        c = np.concatenate([r[2] for r in rows]).astype(np.int64) if rows else np.zeros(0, int)
        out[name] = (y, s, c)
    return out


def _calibration(
    labels: npt.NDArray[np.float64], risks: npt.NDArray[np.float64], bins: int
) -> dict[str, Any]:
    if labels.size == 0:
        return {"n": 0, "ece": None, "bins": []}
    table = reliability_table(labels, risks, n_bins=bins)
    return {
        "n": int(labels.size),
        "ece": expected_calibration_error(labels, risks, n_bins=bins),
        "bins": [
            {
                "low": b.low,
                "high": b.high,
                "count": b.count,
                "mean_predicted": b.mean_predicted,
                "observed_rate": b.observed_rate,
            }
            for b in table
        ],
    }


def _utility(
    tracks: Sequence[Track], outcomes: Mapping[str, StayOutcome], config: EvaluationConfig
) -> dict[str, Any]:
    labels = [outcomes[t.patient_id].row_labels for t in tracks]
    risk = [values_at(t, "risk", outcomes[t.patient_id].row_hours) for t in tracks]
    news2 = [values_at(t, "news2", outcomes[t.patient_id].row_hours) for t in tracks]

    def at(values: list[npt.NDArray[np.float64]], threshold: float) -> dict[str, float]:
        return normalised_utility([v >= threshold for v in values], labels)  # NaN is False

    sweep = [
        {"threshold": round(float(thr), 2), **at(risk, float(thr))}
        for thr in np.arange(0.05, 0.951, 0.05)
    ]
    best = max(sweep, key=lambda p: -np.inf if np.isnan(p["normalised"]) else p["normalised"])
    return {
        "stays": len(tracks),
        "model": {"threshold": config.risk_threshold, **at(risk, config.risk_threshold)},
        "news2": [{"threshold": t, **at(news2, t)} for t in _NEWS2_UTILITY_THRESHOLDS],
        "model_sweep": sweep,
        "model_best_threshold_in_sample": best,
    }


def _thin(points: list[OperatingPoint]) -> list[dict[str, float | int]]:
    step = max(1, int(np.ceil(len(points) / _SWEEP_POINTS_KEPT)))
    kept = points[::step]
    if points and kept[-1] is not points[-1]:
        kept.append(points[-1])
    return [p.as_dict() for p in kept]


def _burden_section(
    tracks: Sequence[Track], outcomes: Mapping[str, StayOutcome], config: EvaluationConfig
) -> tuple[dict[str, Any], dict[str, list[OperatingPoint]]]:
    section: dict[str, Any] = {}
    sweeps: dict[str, list[OperatingPoint]] = {}
    evaluated = {t.patient_id: outcomes[t.patient_id] for t in tracks}
    for name, signal in _SIGNALS:
        sweep = threshold_sweep(tracks, outcomes, signal)
        sweeps[name] = sweep
        limits = []
        for limit in config.max_burdens:
            point = sensitivity_at_burden(sweep, limit)
            lead = None
            if point is not None:
                first = {t.patient_id: crossing_hours(t, signal, point.threshold) for t in tracks}
                lead = lead_time_summary(first, evaluated)
            limits.append(
                {
                    "max_alerts_per_patient_hour": limit,
                    "operating_point": None if point is None else point.as_dict(),
                    "lead_time": lead,
                }
            )
        section[name] = {"at_burden": limits, "curve": _thin(sweep)}
    return section, sweeps


def _timeline_stays(
    tracks: Sequence[Track], outcomes: Mapping[str, StayOutcome], count: int
) -> list[str]:
    """Deterministic picks: the highest-risk positive and negative stays, half each."""

    def peak(track: Track) -> float:
        finite = track.risk[~np.isnan(track.risk)]
        return float(finite.max()) if finite.size else -1.0

    ranked = sorted(tracks, key=lambda t: (-peak(t), t.patient_id))
    positives = [t.patient_id for t in ranked if outcomes[t.patient_id].label]
    negatives = [t.patient_id for t in ranked if not outcomes[t.patient_id].label]
    n_pos = min(len(positives), (count + 1) // 2)
    picked = positives[:n_pos] + negatives[: count - n_pos]
    return picked + positives[n_pos : n_pos + count - len(picked)]


def _degraded_section(
    degraded: DegradedShare,
    evaluated: Sequence[Track],
    outcomes: Mapping[str, StayOutcome],
    config: EvaluationConfig,
) -> dict[str, Any]:
    """The degraded share, and what the model and NEWS2 metrics were computed on."""
    if config.data_format == "physionet2012":
        units = "stays"
        carried = {
            f"{hours:g}h": sum(model_risk_from_earlier_score(t, [hours]) for t in evaluated)
            for hours in config.horizons_hours
        }
    else:
        units = "hourly rows"
        carried = {
            "hourly": sum(
                model_risk_from_earlier_score(t, outcomes[t.patient_id].row_hours)
                for t in evaluated
            )
        }
    return degraded.as_dict() | {
        "model_metrics": (
            f"model metrics use the {degraded.model_scores} model scores only; "
            f"{degraded.degraded} {DEGRADED_LABEL} scores excluded"
        ),
        "news2_metrics": (
            f"NEWS2 baselines use all {degraded.scores} scores, {DEGRADED_LABEL} scores included"
        ),
        "stays_without_model_score": stays_without_model_score(evaluated),
        "model_risk_from_earlier_score": carried,
        "model_risk_from_earlier_score_units": units,
    }


def evaluate(
    tracks: Mapping[str, Track],
    outcomes: Mapping[str, StayOutcome],
    config: EvaluationConfig,
    episodes: Mapping[str, Sequence[float]] | None = None,
    *,
    degraded: DegradedShare,
) -> Evaluation:
    """Compute every metric.

    Args:
        tracks: Scores per stay (see :func:`streams.evaluation.stays.build_tracks`).
        outcomes: Outcome per stay.
        config: The evaluation's choices.
        episodes: Alert episode start hours per stay, None when no alerts were given.
        degraded: Degraded counts of the score (and alert) records the tracks came from
            (see :func:`streams.evaluation.degraded.degraded_share`).
    """
    evaluated = [tracks[p] for p in sorted(tracks) if p in outcomes]
    result = Evaluation(metrics={})
    m = result.metrics
    m["degraded"] = _degraded_section(degraded, evaluated, outcomes, config)
    m["stays"] = {
        "scored": len(tracks),
        "evaluated": len(evaluated),
        "positive": sum(outcomes[t.patient_id].label for t in evaluated),
        "scored_without_outcome": sum(1 for p in tracks if p not in outcomes),
        "outcome_without_scores": sum(1 for p in outcomes if p not in tracks),
    }
    views: list[tuple[str, dict[str, Any]]] = []
    if config.data_format == "physionet2012":
        for hours in config.horizons_hours:
            views.append((f"{hours:g}h", _unit_arrays(evaluated, outcomes, hours)))
    else:
        views.append(("hourly", _row_arrays(evaluated, outcomes)))
    m["discrimination"], m["calibration"], m["no_prediction"] = {}, {}, {}
    for name, arrays in views:
        m["discrimination"][name] = {
            predictor: discrimination(
                y, s, c, n_resamples=config.n_resamples, seed=config.seed
            ).as_dict()
            for predictor, (y, s, c) in arrays.items()
        }
        y, s, _ = arrays["model"]
        m["calibration"][name] = _calibration(y, s, config.n_bins)
        m["no_prediction"][name] = {
            p: len(evaluated) - int(np.unique(c).size) for p, (_, _, c) in arrays.items()
        }
        result.views.append(View(name, {p: (y_, s_) for p, (y_, s_, _) in arrays.items()}, (y, s)))
    if episodes is not None:
        first = {p: min(hours) for p, hours in episodes.items() if hours}
        m["alerts"] = {
            "burden": alert_burden(episodes, evaluated),
            "lead_time": lead_time_summary(
                first, {t.patient_id: outcomes[t.patient_id] for t in evaluated}
            ),
        }
    else:
        m["alerts"] = None
    m["simulated_alerts"], result.sweeps = _burden_section(evaluated, outcomes, config)
    m["simulated_alerts"]["patient_hours"] = float(sum(t.span_hours for t in evaluated))
    m["utility"] = (
        _utility(evaluated, outcomes, config) if config.data_format == "physionet2019" else None
    )
    result.timeline_stays = _timeline_stays(evaluated, outcomes, config.timelines)
    return result
