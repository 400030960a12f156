"""The patient page's chart: risk and NEWS2 over time with alert events (pure: no I/O).

Coordinates are for an SVG ``viewBox`` of ``WIDTH`` x ``HEIGHT``; risk (0-1) and NEWS2
(0-20) share the vertical axis as fractions of their ranges.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from streams.console.ward import PatientView

__all__ = ["HEIGHT", "WIDTH", "Chart", "Marker", "patient_chart"]

WIDTH: Final = 720
HEIGHT: Final = 200
_PAD: Final = 8


@dataclass(frozen=True)
class Marker:
    """An alert change on the chart: x position, label (text, never colour alone)."""

    x: float
    label: str
    severity: str
    state: str


@dataclass(frozen=True)
class Chart:
    """Polyline points of risk and NEWS2, alert markers, and the time span shown."""

    risk: str
    news2: str
    markers: tuple[Marker, ...]
    start: datetime | None
    end: datetime | None


def _y(fraction: float) -> float:
    return _PAD + (1.0 - fraction) * (HEIGHT - 2 * _PAD)


def patient_chart(view: PatientView, span: timedelta) -> Chart:
    """The chart of ``view``'s trend over ``span`` ending at its latest score."""
    end = view.last_time
    if end is None:
        return Chart("", "", (), None, None)
    start = end - span
    seconds = span.total_seconds() or 1.0

    def x(at: datetime) -> float:
        return (at - start).total_seconds() / seconds * WIDTH

    risk, news2 = [], []
    for point in view.trend:
        if point.at < start:
            continue
        if point.risk is not None:
            risk.append(f"{x(point.at):.1f},{_y(point.risk):.1f}")
        if point.news2 is not None:
            news2.append(f"{x(point.at):.1f},{_y(point.news2 / 20):.1f}")
    markers = tuple(
        Marker(
            x(a.event_time),
            f"{a.state.replace('_', ' ')} ({a.severity}) at {a.event_time:%Y-%m-%d %H:%M}Z",
            a.severity,
            a.state,
        )
        for a in view.alert_events
        if start <= a.event_time <= end
    )
    return Chart(" ".join(risk), " ".join(news2), markers, start, end)
