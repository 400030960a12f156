"""What the ward console shows, kept from Vigil's output records (pure: no I/O).

:class:`Ward` takes decoded records of the ``scores``, ``alerts``, ``explanations``,
``findings``, ``adt`` and ``imaging`` topics (and the Redis seed) and keeps, per patient, the
latest score, the risk and NEWS2 of the last ``history`` of event time, every alert's
latest state, the explanations and the imaging findings. :meth:`Ward.rows` gives the board:
filtered by unit and severity, sorted.

Records arrive at least once and, after a seed from Redis, partly out of order: a score
older than the one held does not replace it (it still joins the trend), and an alert change
replaces the one held only when it was produced later (``processing_time``).

The ward's clock is the latest event time seen (in a replay, replayed time): "time since
the last observation" is measured on it, so a replayed ward reads as a live one.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from streams.core.events import (
    AdtEvent,
    AlertRecord,
    ExplanationRecord,
    FindingRecord,
    ImagingEvent,
    ScoreRecord,
)

__all__ = [
    "ACTIVE_STATES",
    "SEVERITY_FILTERS",
    "SORTS",
    "PatientView",
    "Row",
    "TrendPoint",
    "Ward",
]

ACTIVE_STATES: Final = frozenset(
    {"open", "escalated", "deferred_for_review", "acknowledged", "snoozed"}
)
SORTS: Final = ("severity", "risk", "news2", "since", "patient", "unit")
SEVERITY_FILTERS: Final = ("all", "high", "medium", "low", "review", "alerting")
_SEVERITY_RANK: Final = {"low": 1, "medium": 2, "high": 3}
_MAX_TREND: Final = 600
_MAX_EVENTS: Final = 200
_MAX_FINDINGS: Final = 16


@dataclass(frozen=True)
class TrendPoint:
    """One score on the trend: event time, risk (None when degraded), NEWS2 total."""

    at: datetime
    risk: float | None
    news2: int | None


@dataclass
class PatientView:
    """Everything the console holds about one patient."""

    patient_id: str
    unit: str | None = None
    latest: ScoreRecord | None = None
    trend: list[TrendPoint] = field(default_factory=list)
    alerts: dict[str, AlertRecord] = field(default_factory=dict)
    alert_events: deque[AlertRecord] = field(default_factory=lambda: deque(maxlen=_MAX_EVENTS))
    explanations: dict[str, ExplanationRecord] = field(default_factory=dict)
    findings: deque[FindingRecord] = field(default_factory=lambda: deque(maxlen=_MAX_FINDINGS))
    images: dict[str, str] = field(default_factory=dict)
    spark: str | None = None

    @property
    def active(self) -> list[AlertRecord]:
        """Alerts not resolved, most severe first."""
        live = [a for a in self.alerts.values() if a.state in ACTIVE_STATES]
        return sorted(live, key=lambda a: (-_SEVERITY_RANK[a.severity], a.alert_id))

    @property
    def last_time(self) -> datetime | None:
        """Event time of the latest scored state (the latest observation the worker used)."""
        return None if self.latest is None else self.latest.event_time


@dataclass(frozen=True)
class Row:
    """One line of the board.

    Attributes:
        severity: Worst active alert's severity, or None.
        status: ``needs review`` (OOD deferral), ``escalated``, ``open``, ``snoozed``,
            ``acknowledged`` or ``""``.
        since_seconds: Ward clock minus the patient's latest scored time.
        sparkline: The risk over the trend window as block characters (see
            :func:`sparkline`).
    """

    patient_id: str
    unit: str
    risk: float | None
    degraded: bool
    news2_total: int | None
    news2_band: str | None
    severity: str | None
    status: str
    alert_count: int
    since_seconds: float | None
    sparkline: str

    @property
    def severity_rank(self) -> int:
        """0 none, 1 low, 2 medium, 3 high."""
        return 0 if self.severity is None else _SEVERITY_RANK[self.severity]


def _status(alerts: list[AlertRecord]) -> str:
    states = {a.state for a in alerts}
    for state, label in (
        ("deferred_for_review", "needs review"),
        ("escalated", "escalated"),
        ("open", "open"),
        ("snoozed", "snoozed"),
        ("acknowledged", "acknowledged"),
    ):
        if state in states:
            return label
    return ""


_BLOCKS: Final = "▁▂▃▄▅▆▇█"


def sparkline(
    points: list[TrendPoint], end: datetime | None, span: timedelta, buckets: int = 24
) -> str:
    """The risk over ``span`` ending at ``end`` as text: one block character per bucket
    (``▁`` 0-12.5% … ``█`` 87.5-100%, the highest risk in the bucket), ``·`` for a bucket
    without a model risk. Text, not a picture: a thousand rows stay light to render.
    """
    if end is None:
        return ""
    start = end - span
    seconds = span.total_seconds() or 1.0
    highest: list[float | None] = [None] * buckets
    for point in points:
        if point.risk is None or point.at < start:
            continue
        index = min(int((point.at - start).total_seconds() / seconds * buckets), buckets - 1)
        held = highest[index]
        highest[index] = point.risk if held is None else max(held, point.risk)
    return "".join(
        "·" if r is None else _BLOCKS[min(int(r * len(_BLOCKS)), len(_BLOCKS) - 1)] for r in highest
    )


class Ward:
    """The console's picture of the ward.

    Args:
        history: Trend window (event time) kept per patient.
        max_patients: Patients kept; beyond it the one silent longest is dropped.
    """

    def __init__(self, history: timedelta = timedelta(hours=24), max_patients: int = 5000) -> None:
        self.history = history
        self.max_patients = max_patients
        self.patients: dict[str, PatientView] = {}
        self.clock: datetime | None = None

    def _patient(self, patient_id: str) -> PatientView:
        view = self.patients.get(patient_id)
        if view is None:
            if len(self.patients) >= self.max_patients:
                oldest = min(
                    self.patients.values(),
                    key=lambda v: v.last_time.timestamp() if v.last_time else float("-inf"),
                )
                del self.patients[oldest.patient_id]
            view = self.patients[patient_id] = PatientView(patient_id)
        return view

    def _tick(self, at: datetime) -> None:
        if self.clock is None or at > self.clock:
            self.clock = at

    def add_score(self, record: ScoreRecord) -> PatientView:
        """Add a score: the trend always, the latest only if newer in event time."""
        view = self._patient(record.patient_id)
        self._tick(record.event_time)
        if view.latest is None or record.event_time >= view.latest.event_time:
            view.latest = record
        point = TrendPoint(
            record.event_time, record.risk, None if record.news2 is None else record.news2.total
        )
        times = [p.at for p in view.trend]
        at = bisect.bisect_right(times, point.at)
        if at and view.trend[at - 1] == point:
            return view  # a redelivered score
        view.trend.insert(at, point)
        view.spark = None
        cutoff = max(view.latest.event_time, record.event_time) - self.history
        while view.trend and (view.trend[0].at < cutoff or len(view.trend) > _MAX_TREND):
            view.trend.pop(0)
        return view

    def add_alert(self, record: AlertRecord) -> PatientView:
        """Add an alert change; it replaces the held one when produced later."""
        view = self._patient(record.patient_id)
        self._tick(record.event_time)
        held = view.alerts.get(record.alert_id)
        if held is None or record.processing_time >= held.processing_time:
            view.alerts[record.alert_id] = record
        if record not in view.alert_events:
            view.alert_events.append(record)
        resolved = [a for a in view.alerts.values() if a.state == "resolved"]
        for old in sorted(resolved, key=lambda a: a.processing_time)[:-8]:
            del view.alerts[old.alert_id]
        return view

    def add_explanation(self, record: ExplanationRecord) -> PatientView:
        """Add the model's explanation of an alert."""
        view = self._patient(record.patient_id)
        view.explanations[record.alert_id] = record
        if len(view.explanations) > 32:
            del view.explanations[next(iter(view.explanations))]
        return view

    def add_finding(self, record: FindingRecord) -> PatientView:
        """Add an imaging finding."""
        view = self._patient(record.patient_id)
        if all(f.finding_id != record.finding_id for f in view.findings):
            view.findings.append(record)
        return view

    def add_adt(self, record: AdtEvent) -> PatientView:
        """Take the patient's care unit (or ICU type) from an admission or transfer."""
        view = self._patient(record.patient_id)
        if record.care_unit is not None:
            view.unit = record.care_unit
        elif record.icu_type is not None and view.unit is None:
            view.unit = record.icu_type.value.replace("_", " ")
        return view

    def add_imaging(self, record: ImagingEvent) -> PatientView:
        """Remember where a study's pixels are (for the heatmap overlay)."""
        view = self._patient(record.patient_id)
        if record.image_uri is not None:
            view.images[record.study_id] = record.image_uri
            if len(view.images) > _MAX_FINDINGS:
                del view.images[next(iter(view.images))]
        return view

    def row(self, view: PatientView) -> Row:
        """The board line of one patient."""
        active = view.active
        latest = view.latest
        news2 = None if latest is None else latest.news2
        since = None
        if self.clock is not None and view.last_time is not None:
            since = (self.clock - view.last_time).total_seconds()
        return Row(
            patient_id=view.patient_id,
            unit=view.unit or "",
            risk=None if latest is None else latest.risk,
            degraded=latest is not None and latest.degraded,
            news2_total=None if news2 is None else news2.total,
            news2_band=None if news2 is None else news2.band,
            severity=active[0].severity if active else None,
            status=_status(active),
            alert_count=len(active),
            since_seconds=since,
            sparkline=self._spark(view),
        )

    def _spark(self, view: PatientView) -> str:
        if view.spark is None:
            view.spark = sparkline(view.trend, view.last_time, self.history)
        return view.spark

    def units(self) -> list[str]:
        """The units on the board, sorted."""
        return sorted({v.unit for v in self.patients.values() if v.unit})

    def rows(
        self,
        *,
        sort: str = "severity",
        unit: str = "",
        severity: str = "all",
    ) -> list[Row]:
        """The board: patients filtered by unit and severity, sorted.

        Args:
            sort: One of :data:`SORTS` (severity and scores high first, ``since`` most
                recent first, names ascending).
            unit: Only this unit (``""``: every unit).
            severity: One of :data:`SEVERITY_FILTERS`.

        Raises:
            ValueError: Unknown sort or severity filter.
        """
        if sort not in SORTS:
            raise ValueError(f"unknown sort {sort!r}: use one of {', '.join(SORTS)}")
        if severity not in SEVERITY_FILTERS:
            raise ValueError(
                f"unknown severity {severity!r}: use one of {', '.join(SEVERITY_FILTERS)}"
            )
        rows = [self.row(v) for v in self.patients.values() if not unit or v.unit == unit]
        rows = [r for r in rows if _keep(r, severity)]
        rows.sort(key=_SORT_KEYS[sort])
        return rows


def _keep(row: Row, severity: str) -> bool:
    if severity == "all":
        return True
    if severity == "alerting":
        return row.alert_count > 0
    if severity == "review":
        return row.status == "needs review"
    return row.severity == severity


_Key = tuple[float | str, ...]


def _by_severity(r: Row) -> _Key:
    return (-r.severity_rank, -(r.risk if r.risk is not None else -1.0), r.patient_id)


_SORT_KEYS: Final = {
    "severity": _by_severity,
    "risk": lambda r: (-(r.risk if r.risk is not None else -1.0), r.patient_id),
    "news2": lambda r: (-(r.news2_total if r.news2_total is not None else -1), r.patient_id),
    "since": lambda r: (r.since_seconds if r.since_seconds is not None else 1e18, r.patient_id),
    "patient": lambda r: (r.patient_id,),
    "unit": lambda r: (r.unit, r.patient_id),
}
