"""Score records grouped per stay, and the stay's prediction at a time (pure).

Admission, hour 0 of a stay, is its first score's event time (minus a known offset of
that first score, for PhysioNet 2019 the first row's ``ICULOS``), unless one admission
time is given for every stay (``vigil replay`` admits every stay at one anchor). Times inside a
stay are hours after admission. A prediction "at h hours" is the last score whose
event time is at or before admission + h; a degraded score (NEWS2 only: its risk, if
any, is ignored) is skipped for the model risk, and a score without NEWS2 for NEWS2, so
the last value that exists is used. NEWS2 is read from every score, degraded or not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import numpy as np
import numpy.typing as npt

from streams.core.events import AlertRecord, ScoreRecord

__all__ = ["Signal", "Track", "alert_episodes", "build_tracks", "value_at", "values_at"]

Signal = Literal["risk", "news2"]


@dataclass(frozen=True, slots=True, eq=False)
class Track:
    """The scores of one stay, in event-time order.

    Attributes:
        patient_id: Stay identifier.
        admission: Hour 0 of the stay (UTC).
        hours: ``[N]`` event time of each score, hours after admission, ascending.
        risk: ``[N]`` model risk, NaN where every score of that time was degraded.
        news2: ``[N]`` NEWS2 total, NaN where absent.
    """

    patient_id: str
    admission: datetime
    hours: npt.NDArray[np.float64]
    risk: npt.NDArray[np.float64]
    news2: npt.NDArray[np.float64]

    @property
    def span_hours(self) -> float:
        """Patient time: hours from the first to the last scored event time."""
        return float(self.hours[-1] - self.hours[0])

    def signal(self, name: Signal) -> npt.NDArray[np.float64]:
        """The ``[N]`` values of ``risk`` or ``news2``."""
        return self.risk if name == "risk" else self.news2


def build_tracks(
    scores: Iterable[ScoreRecord],
    admitted_at: datetime | None = None,
    first_score_hours: Mapping[str, float] | None = None,
) -> tuple[dict[str, Track], int]:
    """Group scores per patient; for a repeated (patient, event time) the last read wins,
    signal by signal: a later degraded record (no risk) keeps the earlier record's risk.

    Args:
        scores: Score records in any order.
        admitted_at: Admission time of every stay; None = from each stay's first score.
        first_score_hours: With ``admitted_at`` None: hours after admission of a stay's
            first score (missing stays: 0, the first score is the admission).

    Returns:
        Tracks keyed by patient id, and how many scores a later one of the same
        patient and event time replaced (the worker re-scores a state time when more
        events of that time arrive; the last read has seen the most, but when Triton
        was unavailable for it, the earlier model risk is still the model's value).
    """
    # Per patient and event time: (risk, NEWS2 total), each the last one read that exists.
    per_patient: dict[str, dict[datetime, tuple[float, float]]] = {}
    superseded = 0
    for score in scores:
        seen = per_patient.setdefault(score.patient_id, {})
        # A degraded record is never a model score, even if it carried a risk value.
        risk = np.nan if score.degraded or score.risk is None else score.risk
        news2 = np.nan if score.news2 is None else float(score.news2.total)
        earlier = seen.get(score.event_time)
        if earlier is not None:
            superseded += 1
            # A degraded re-score of the same state time has no risk: keep the one before.
            risk = earlier[0] if np.isnan(risk) else risk
            news2 = earlier[1] if np.isnan(news2) else news2
        seen[score.event_time] = (risk, news2)
    tracks: dict[str, Track] = {}
    for patient_id, by_time in per_patient.items():
        times = sorted(by_time)
        offset = 0.0 if first_score_hours is None else first_score_hours.get(patient_id, 0.0)
        admission = times[0] - timedelta(hours=offset) if admitted_at is None else admitted_at
        tracks[patient_id] = Track(
            patient_id=patient_id,
            admission=admission,
            hours=np.asarray([(t - admission).total_seconds() / 3600.0 for t in times]),
            risk=np.asarray([by_time[t][0] for t in times], dtype=np.float64),
            news2=np.asarray([by_time[t][1] for t in times], dtype=np.float64),
        )
    return tracks, superseded


def values_at(track: Track, name: Signal, hours: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The last non-missing value of ``name`` at or before each of ``hours`` (NaN if none).

    Args:
        track: One stay.
        name: ``risk`` or ``news2``.
        hours: ``[M]`` query times, hours after admission.

    Returns:
        ``[M]`` values.
    """
    values = track.signal(name)
    keep = ~np.isnan(values)
    known_hours, known = track.hours[keep], values[keep]
    query = np.asarray(hours, dtype=np.float64).ravel()
    index = np.searchsorted(known_hours, query, side="right") - 1
    out = np.full(query.shape, np.nan)
    found = index >= 0
    out[found] = known[index[found]]
    return out


def value_at(track: Track, name: Signal, hours: float) -> float:
    """:func:`values_at` for one time."""
    return float(values_at(track, name, [hours])[0])


def alert_episodes(
    alerts: Iterable[AlertRecord], tracks: Mapping[str, Track]
) -> dict[str, list[float]]:
    """Start of each alert episode per stay, hours after admission, ascending.

    An episode is one ``alert_id`` (every state change of an alert shares it); it starts
    at the earliest event time seen for that id. Alerts of stays without a track are
    ignored.
    """
    opened: dict[str, dict[str, datetime]] = {}
    for alert in alerts:
        if alert.patient_id not in tracks:
            continue
        episodes = opened.setdefault(alert.patient_id, {})
        earlier = episodes.get(alert.alert_id)
        if earlier is None or alert.event_time < earlier:
            episodes[alert.alert_id] = alert.event_time
    return {
        patient_id: sorted(
            (t - tracks[patient_id].admission).total_seconds() / 3600.0 for t in episodes.values()
        )
        for patient_id, episodes in opened.items()
    }
