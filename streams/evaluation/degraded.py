"""How much of a run was scored in degraded mode, NEWS2 only (pure: records in, counts out).

A degraded score (``degraded: true``, ``risk: null``, ``degraded_reason``) is the worker's
answer to a Triton outage. It is never a model score, so model metrics leave it out, and
every report states its share: ``vigil demo``'s live view and summary, ``vigil evaluate``'s
``report.html`` and ``metrics.json``. Whatever shows these numbers calls them
:data:`DEGRADED_LABEL`. Counts only: no patient identifier leaves this module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.core.events import AlertRecord, ScoreRecord
from streams.evaluation.stays import Track

__all__ = [
    "DEGRADED_LABEL",
    "DegradedShare",
    "degraded_share",
    "model_risk_from_earlier_score",
    "stays_without_model_score",
]

DEGRADED_LABEL = "degraded (NEWS2 only)"
_UNSPECIFIED = "unspecified"


def _percent(part: int, whole: int) -> str:
    """``part`` of ``whole`` as a percentage that never rounds a non-zero share to 0."""
    if whole == 0:
        return "n/a"
    share = part / whole
    if 0 < share < 0.001:
        return "<0.1%"
    return f"{100 * share:.1f}%"


@dataclass(slots=True)
class DegradedShare:
    """Scores (and alert state changes) counted as degraded or not.

    Attributes:
        scores: Score records counted.
        degraded: Of those, degraded (NEWS2 only).
        reasons: Degraded scores by ``degraded_reason`` (``unspecified`` when absent).
        alerts: Alert state changes counted; None when no alerts were given.
        degraded_alerts: Of those, raised or changed without the model.
    """

    scores: int = 0
    degraded: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    alerts: int | None = None
    degraded_alerts: int = 0

    def add(self, degraded: bool, reason: str | None = None) -> None:
        """Count one score."""
        self.scores += 1
        if degraded:
            self.degraded += 1
            self.reasons[reason or _UNSPECIFIED] += 1

    def add_alert(self, degraded: bool) -> None:
        """Count one alert state change."""
        self.alerts = (self.alerts or 0) + 1
        self.degraded_alerts += int(degraded)

    @property
    def model_scores(self) -> int:
        """Scores the model produced."""
        return self.scores - self.degraded

    @property
    def share(self) -> float | None:
        """Degraded scores / scores, 0-1; None before the first score."""
        return self.degraded / self.scores if self.scores else None

    def reasons_text(self) -> str:
        """``circuit_open 12, inference_error 3``, most frequent first (ties by name)."""
        ranked = sorted(self.reasons.items(), key=lambda item: (-item[1], item[0]))
        return ", ".join(f"{reason} {count}" for reason, count in ranked)

    def headline(self) -> str:
        """One line, for example
        ``degraded (NEWS2 only): 19739 of 26810 scores (73.6%): circuit_open 19739``."""
        if not self.scores:
            return f"{DEGRADED_LABEL}: no scores yet"
        text = (
            f"{DEGRADED_LABEL}: {self.degraded} of {self.scores} scores "
            f"({_percent(self.degraded, self.scores)})"
        )
        return f"{text}: {self.reasons_text()}" if self.degraded else text

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counts (for ``metrics.json`` and the demo's ``summary.json``)."""
        return {
            "label": DEGRADED_LABEL,
            "headline": self.headline(),
            "scores": self.scores,
            "degraded": self.degraded,
            "model_scores": self.model_scores,
            "share": None if self.share is None else round(self.share, 6),
            "reasons": dict(sorted(self.reasons.items(), key=lambda i: (-i[1], i[0]))),
            "alert_changes": self.alerts,
            "degraded_alert_changes": None if self.alerts is None else self.degraded_alerts,
        }


def degraded_share(
    scores: Iterable[ScoreRecord], alerts: Iterable[AlertRecord] | None = None
) -> DegradedShare:
    """Count degraded scores (every record read, before duplicates are merged).

    Args:
        scores: Score records.
        alerts: Alert records, or None when no alerts were given.
    """
    out = DegradedShare()
    for score in scores:
        out.add(score.degraded, score.degraded_reason)
    if alerts is not None:
        out.alerts = 0
        for alert in alerts:
            out.add_alert(alert.degraded)
    return out


def model_risk_from_earlier_score(track: Track, hours: npt.ArrayLike) -> int:
    """How many of ``hours`` take their model risk from an earlier score than NEWS2 does.

    That happens when the last score at or before the time is degraded (no model risk)
    and an earlier score has one: the model's prediction is then older than the stay's
    latest state.

    Args:
        track: One stay.
        hours: ``[M]`` query times, hours after admission.
    """
    query = np.asarray(hours, dtype=np.float64).ravel()
    last = np.searchsorted(track.hours, query, side="right") - 1
    scored = last >= 0
    latest_degraded = np.zeros(query.shape, dtype=bool)
    latest_degraded[scored] = np.isnan(track.risk[last[scored]])
    has_model = np.zeros(query.shape, dtype=bool)
    model_at = np.flatnonzero(~np.isnan(track.risk))
    if model_at.size:
        has_model[scored] = model_at[0] <= last[scored]
    return int(np.count_nonzero(latest_degraded & has_model))


def stays_without_model_score(tracks: Iterable[Track]) -> int:
    """Stays whose every score is degraded (the model never scored them)."""
    return sum(1 for track in tracks if bool(np.isnan(track.risk).all()))
