"""Alert burden, sensitivity at a fixed burden, and lead times (pure).

* **Patient time** is the span of scored event time of each stay (first to last score),
  summed over stays.
* **Burden** is alert episodes per patient-hour (and per patient-day, x24).
* **Sensitivity at a burden**: a threshold on a score signal is swept; each stay alerts
  once, at its first score at or above the threshold ("first crossing = alert"). For each
  threshold, burden = alerted stays / patient-hours, and sensitivity = positive stays whose
  crossing is at or before their outcome time / positive stays. The reported point is the
  lowest threshold whose burden is at most the limit (burden only falls as the threshold
  rises, so that point has the highest sensitivity allowed).
* **Lead time** = outcome time - alert time, hours; positive when the alert came first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from streams.evaluation.outcomes import StayOutcome
from streams.evaluation.stays import Signal, Track

__all__ = [
    "OperatingPoint",
    "alert_burden",
    "crossing_hours",
    "lead_time_summary",
    "patient_hours",
    "sensitivity_at_burden",
    "threshold_sweep",
]


def patient_hours(tracks: Sequence[Track]) -> float:
    """Total patient time of the stays, hours."""
    return float(sum(track.span_hours for track in tracks))


def _rate(count: float, hours: float) -> float:
    return count / hours if hours > 0 else float("nan")


def alert_burden(
    episodes: Mapping[str, Sequence[float]], tracks: Sequence[Track]
) -> dict[str, float | int]:
    """Alert episodes per patient-hour and per patient-day over ``tracks``.

    Args:
        episodes: Start hours of each alert episode, per stay.
        tracks: The stays evaluated; episodes of other stays are not counted.
    """
    hours = patient_hours(tracks)
    count = sum(len(episodes.get(track.patient_id, ())) for track in tracks)
    alerted = sum(1 for track in tracks if episodes.get(track.patient_id))
    return {
        "alerts": count,
        "stays": len(tracks),
        "stays_alerted": alerted,
        "patient_hours": hours,
        "alerts_per_patient_hour": _rate(count, hours),
        "alerts_per_patient_day": _rate(count * 24.0, hours),
    }


def crossing_hours(track: Track, signal: Signal, threshold: float) -> float | None:
    """Hours of the first score with ``signal >= threshold``, None if never."""
    values = track.signal(signal)
    hits = np.flatnonzero(values >= threshold)  # NaN compares False
    return None if hits.size == 0 else float(track.hours[hits[0]])


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """One threshold of a sweep.

    Attributes:
        threshold: Alert when the signal is at or above this.
        stays_alerted: Stays with a crossing.
        alerts_per_patient_hour: ``stays_alerted`` / patient-hours.
        sensitivity: Positive stays alerted at or before their outcome / positive stays.
        ppv: Positive stays alerted (any time) / stays alerted (NaN if none).
    """

    threshold: float
    stays_alerted: int
    alerts_per_patient_hour: float
    sensitivity: float
    ppv: float

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready form."""
        return asdict(self)


def _max_until(track: Track, signal: Signal, until: float | None) -> float:
    values = track.signal(signal)
    if until is not None:
        values = values[track.hours <= until]
    values = values[~np.isnan(values)]
    return float(values.max()) if values.size else float("nan")


def threshold_sweep(
    tracks: Sequence[Track], outcomes: Mapping[str, StayOutcome], signal: Signal
) -> list[OperatingPoint]:
    """Every threshold where the alerted or detected stays change, descending.

    Args:
        tracks: The stays evaluated (each must have an outcome).
        outcomes: Outcome per patient id.
        signal: ``risk`` or ``news2``.
    """
    hours = patient_hours(tracks)
    labels = np.asarray([outcomes[t.patient_id].label for t in tracks], dtype=bool)
    peak = np.asarray([_max_until(t, signal, None) for t in tracks])
    in_time = np.asarray(
        [
            _max_until(t, signal, outcomes[t.patient_id].outcome_hours) if label else np.nan
            for t, label in zip(tracks, labels, strict=True)
        ]
    )
    candidates = np.concatenate([peak, in_time])
    thresholds = np.unique(candidates[~np.isnan(candidates)])[::-1]
    n_pos = int(labels.sum())

    def at_least(values: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        ordered = np.sort(values[~np.isnan(values)])
        counts: npt.NDArray[np.int64] = ordered.size - np.searchsorted(ordered, thresholds)
        return counts

    alerted = at_least(peak)
    alerted_pos = at_least(peak[labels])
    detected = at_least(in_time[labels])
    return [
        OperatingPoint(
            threshold=float(thr),
            stays_alerted=int(a),
            alerts_per_patient_hour=_rate(float(a), hours),
            sensitivity=d / n_pos if n_pos else float("nan"),
            ppv=ap / a if a else float("nan"),
        )
        for thr, a, ap, d in zip(thresholds, alerted, alerted_pos, detected, strict=True)
    ]


def sensitivity_at_burden(
    sweep: Sequence[OperatingPoint], max_per_patient_hour: float
) -> OperatingPoint | None:
    """The lowest threshold of ``sweep`` whose burden is at most the limit (None if none)."""
    allowed = [p for p in sweep if p.alerts_per_patient_hour <= max_per_patient_hour]
    return min(allowed, key=lambda p: p.threshold) if allowed else None


def lead_time_summary(
    alert_hours: Mapping[str, float | None], outcomes: Mapping[str, StayOutcome]
) -> dict[str, float | int | None]:
    """Lead time of the first alert before the outcome, over the positive stays.

    Args:
        alert_hours: First alert time per stay (hours after admission; None = no alert).
            Stays missing here count as not alerted.
        outcomes: Outcome per stay, limited to the stays evaluated.

    Returns:
        Counts (positive stays, alerted, alerted before the outcome, alerted after it,
        outcome time unknown) and the median, quartiles, minimum and maximum lead time
        in hours over the alerts at or before the outcome (None when there is none).
    """
    leads: list[float] = []
    late = unknown = alerted = positives = 0
    for patient_id, outcome in outcomes.items():
        if not outcome.label:
            continue
        positives += 1
        at = alert_hours.get(patient_id)
        if at is None:
            continue
        alerted += 1
        if outcome.outcome_hours is None:
            unknown += 1
        elif outcome.outcome_hours - at >= 0:
            leads.append(outcome.outcome_hours - at)
        else:
            late += 1
    summary: dict[str, float | int | None] = {
        "positive_stays": positives,
        "alerted": alerted,
        "alerted_before_outcome": len(leads),
        "alerted_after_outcome": late,
        "outcome_time_unknown": unknown,
    }
    q = np.percentile(leads, [0, 25, 50, 75, 100]) if leads else [None] * 5
    for name, value in zip(("min", "q25", "median", "q75", "max"), q, strict=True):
        summary[f"lead_hours_{name}"] = None if value is None else float(value)
    return summary
