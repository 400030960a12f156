"""Alert policy v2: hysteresis, persistence, refractory, escalation, OOD deferral (pure).

One alert episode per patient at a time, as a state machine over scores in event time
(``docs/alerting.md`` draws it):

* **arming**: in-distribution scores at or above ``arm_risk`` (NEWS2 at or above
  ``news2_threshold`` in degraded mode) form a run; the episode **opens** once the run has
  ``arm_scores`` scores *and* lasts ``arm_duration`` (set either to its trivial value,
  1 or 0, to use the other alone). A score below the arm threshold ends the run. Within
  ``refractory`` after a resolved episode of the same kind, the arm threshold is raised
  to the last peak plus ``realert_margin`` (2 points for NEWS2).
* **escalated** when the severity rises: model risk at ``medium_risk`` / ``high_risk``,
  or the NEWS2 response band (RCP 2017: 7+ is high; 5-6, or a single parameter scoring
  3, is medium), whichever is higher.
* **resolved** once scores at or below ``disarm_risk`` (NEWS2 ``news2_threshold - 2``)
  persist for ``disarm_scores`` scores and ``disarm_duration``; a score above it ends the
  run. Hysteresis (``disarm < arm``) and persistence stop an alert flapping.
* **deferred_for_review** when the OOD detector flags the input: the risk is not
  trusted, so it neither opens, escalates nor resolves anything. Without an episode a
  deferred one opens (whatever the risk) once the flag persists (``defer_scores``
  consecutive flagged scores over ``defer_duration``), saying why (score, threshold,
  channel); an open episode turns deferred at once. Back in distribution, an episode that
  was open before turns ``open`` again (``back_in_distribution``); one that was only
  deferred either confirms (the risk arms, with persistence) or resolves.
* **snoozed** (by an action, :mod:`streams.core.acks`): no open, escalated or deferred
  output until the snooze ends in event time (on the worker's event-time clock, or at the
  first score after it, whichever comes first), which re-arms it
  (``snooze_expired``, with the current severity). A resolution is always published.

An episode NEWS2 opened (degraded mode) is judged by NEWS2 until it resolves; an episode
the model opened waits for the model. Alert ids are deterministic (patient, kind, policy
version, episode start = first score of the arming run). State is a JSON-ready dict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from streams.core.events import AlertState, Severity, make_alert_id
from streams.core.news2 import News2Band, News2Result

__all__ = [
    "POLICY_VERSION",
    "AlertDecision",
    "AlertPolicy",
    "OodVerdict",
    "UnitPolicies",
    "evaluate",
    "expire_snooze",
    "raise_severity",
]

POLICY_VERSION = "hysteresis-persistence-2"

Kind = Literal["deterioration", "news2"]
_RANK: dict[str, int] = {"low": 0, "medium": 1, "high": 2}
_NEWS2_MARGIN = 2.0
_Emit = Callable[..., None]


@dataclass(frozen=True)
class AlertPolicy:
    """Thresholds of one unit (see ``WorkerSettings``); defaults fitted on validation
    data (``docs/alerting.md``).

    Attributes:
        arm_risk: Model risk that arms an episode (0-1).
        disarm_risk: Model risk at or below which an episode resolves (< ``arm_risk``).
        arm_scores: Consecutive scores at or above arm needed to open (>= 1).
        arm_duration: Event time the arming run must last to open (>= 0).
        disarm_scores: Consecutive scores at or below disarm needed to resolve (>= 1).
        disarm_duration: Event time the disarm run must last to resolve (>= 0).
        refractory: After a resolution, how long a new episode needs the last peak plus
            ``realert_margin``.
        realert_margin: Risk rise over the last peak that re-alerts within refractory.
        medium_risk: Risk from which severity is at least medium.
        high_risk: Risk from which severity is high.
        news2_threshold: NEWS2 that arms in degraded mode (resolves at 2 below).
        max_snooze: Longest snooze an action may ask for.
        defer_scores: Consecutive out-of-distribution scores needed to open a
            ``deferred_for_review`` alert when no episode is active (>= 1).
        defer_duration: Event time that run must last (>= 0). A single flagged window is
            common on real, unshifted stays (docs/ood.md), so a lone flag opens nothing.
    """

    # Operating point on the validation split (docs/alerting.md): 0.0081 alerts per
    # patient-hour, 81 % of the stays that died alerted within 48 h.
    arm_risk: float = 0.2
    disarm_risk: float = 0.1
    arm_scores: int = 2
    arm_duration: timedelta = timedelta(hours=1)
    disarm_scores: int = 2
    disarm_duration: timedelta = timedelta(hours=1)
    refractory: timedelta = timedelta(hours=6)
    realert_margin: float = 0.15
    medium_risk: float = 0.65
    high_risk: float = 0.8
    news2_threshold: int = 7
    max_snooze: timedelta = timedelta(hours=4)
    defer_scores: int = 2
    defer_duration: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if not 0 < self.disarm_risk < self.arm_risk < 1:
            raise ValueError("need 0 < disarm_risk < arm_risk < 1")
        if self.refractory < timedelta(0) or self.realert_margin < 0:
            raise ValueError("need refractory >= 0 and realert_margin >= 0")
        # NEWS2 is 0-20 and resolves at news2_threshold - 2: below 2 it could never resolve.
        if not 2 <= self.news2_threshold <= 20:
            raise ValueError("need 2 <= news2_threshold <= 20")
        if self.arm_scores < 1 or self.disarm_scores < 1:
            raise ValueError("need arm_scores >= 1 and disarm_scores >= 1")
        if self.arm_duration < timedelta(0) or self.disarm_duration < timedelta(0):
            raise ValueError("need arm_duration >= 0 and disarm_duration >= 0")
        if not 0 < self.medium_risk <= self.high_risk <= 1:
            raise ValueError("need 0 < medium_risk <= high_risk <= 1")
        if self.max_snooze <= timedelta(0):
            raise ValueError("need max_snooze > 0")
        if self.defer_scores < 1 or self.defer_duration < timedelta(0):
            raise ValueError("need defer_scores >= 1 and defer_duration >= 0")


@dataclass(frozen=True)
class UnitPolicies:
    """Policies per unit (an ICU type such as ``medical``, or a care unit), with a default.

    Attributes:
        default: Policy of any unit not listed.
        units: Policy by unit key.
    """

    default: AlertPolicy = field(default_factory=AlertPolicy)
    units: Mapping[str, AlertPolicy] = field(default_factory=dict)

    def for_unit(self, *keys: str | None) -> AlertPolicy:
        """The policy of the first key listed (most specific first), else the default."""
        for key in keys:
            if key is not None and key in self.units:
                return self.units[key]
        return self.default


@dataclass(frozen=True)
class OodVerdict:
    """The OOD detector's answer for the scored window (Triton model ``ood``).

    Attributes:
        distance: The detector's score: for the shipped two-channel model, the larger of
            each channel's Mahalanobis distance divided by its threshold (docs/ood.md).
        threshold: The score above which it flags (1.0 for the shipped model).
        flagged: True when the input is out of distribution (``distance > threshold``).
        channels: Which channels fired (``representation``: the ensemble's fused features;
            ``input``: window statistics), when the model says.
    """

    distance: float
    threshold: float
    flagged: bool
    channels: tuple[str, ...] = ()


@dataclass(frozen=True)
class AlertDecision:
    """One alert state change to publish (and audit)."""

    alert_id: str
    kind: Kind
    state: AlertState
    severity: Severity
    reason: str
    degraded: bool
    detail: str = ""


def raise_severity(severity: str, by: int = 1) -> Severity:
    """The severity ``by`` levels up, capped at high."""
    levels: tuple[Severity, ...] = ("low", "medium", "high")
    return levels[min(_RANK[severity] + by, 2)]


def _severity(risk: float | None, news2: News2Result | None, policy: AlertPolicy) -> Severity:
    rank = 0
    if risk is not None:
        rank = 2 if risk >= policy.high_risk else 1 if risk >= policy.medium_risk else 0
    if news2 is not None:
        band = news2.band
        from_news = (
            2
            if band is News2Band.HIGH
            else 1
            if band in (News2Band.MEDIUM, News2Band.LOW_MEDIUM)
            else 0
        )
        rank = max(rank, from_news)
    return raise_severity("low", rank)


def _snoozed(active: Mapping[str, Any], at_s: float) -> bool:
    until = active.get("snoozed_until_s")
    return until is not None and at_s < float(until)


def _resolve(new: dict[str, Any], active: dict[str, Any], at_s: float, confirmed: bool) -> None:
    new["active"] = None
    new["up"] = None
    new["resolved_ids"] = [*new.get("resolved_ids", []), active["id"]][-16:]
    if confirmed:  # a deferral alone sets no refractory peak
        new["last_resolved_s"] = at_s
        new["last_peak"] = active.get("peak")
        new["last_kind"] = active["kind"]


def evaluate(
    state: Mapping[str, Any],
    *,
    patient_id: str,
    at: datetime,
    risk: float | None,
    news2: News2Result | None,
    policy: AlertPolicy,
    ood: OodVerdict | None = None,
) -> tuple[dict[str, Any], list[AlertDecision]]:
    """Apply one score to the alert state.

    Args:
        state: The patient's alert state (``{}`` initially); not mutated.
        patient_id: Used only inside the hashed alert id.
        at: Event time of the score.
        risk: Model risk 0-1, or None in degraded mode.
        news2: NEWS2 of the same state, if computable.
        policy: Thresholds of the patient's unit.
        ood: The OOD detector's verdict on the same window, if any.

    Returns:
        The new alert state and the decisions to publish (possibly none).
    """
    new = dict(state)
    at_s = at.timestamp()
    active: dict[str, Any] | None = None if new.get("active") is None else dict(new["active"])
    out: list[AlertDecision] = []
    rearm = False
    if (
        active is not None
        and active.get("snoozed_until_s") is not None
        and not _snoozed(active, at_s)
    ):
        active["snoozed_until_s"] = None
        rearm = True
    degraded = risk is None or (active is not None and active["kind"] == "news2")
    kind: Kind = "news2" if degraded else "deterioration"
    if degraded:
        value = None if news2 is None else float(news2.total)
        arm, disarm = float(policy.news2_threshold), float(policy.news2_threshold - 2)
    else:
        value = risk
        arm, disarm = policy.arm_risk, policy.disarm_risk
    flagged = kind == "deterioration" and ood is not None and ood.flagged
    if not flagged:
        new["ood_up"] = None  # a deferral needs an unbroken run of flagged scores

    def emit(
        episode: Mapping[str, Any],
        state_: AlertState,
        severity: Severity,
        reason: str,
        detail: str = "",
    ) -> None:
        if state_ == "resolved" or not _snoozed(episode, at_s):
            out.append(
                AlertDecision(episode["id"], kind, state_, severity, reason, degraded, detail)
            )

    new["active"] = active
    if value is None or (active is not None and active["kind"] != kind):
        # No signal, or the episode waits for its own signal (model <-> degraded).
        pass
    elif ood is not None and flagged:
        fired = f" ({' and '.join(ood.channels)} channel)" if ood.channels else ""
        why = (
            f"out-of-distribution score {ood.distance:.2f} > threshold {ood.threshold:.2f}"
            f"{fired}; the model risk is not trusted"
        )
        new["up"] = None
        if active is None:
            run = new.get("ood_up") or [0, at_s]
            run = [run[0] + 1, run[1]]
            new["ood_up"] = run
            if (
                run[0] >= policy.defer_scores
                and at_s - run[1] >= policy.defer_duration.total_seconds()
            ):
                new["ood_up"] = None
                start = at if run[1] == at_s else datetime.fromtimestamp(run[1], tz=at.tzinfo)
                active = {
                    "id": make_alert_id(patient_id, kind, start, policy_version=POLICY_VERSION),
                    "kind": kind,
                    "severity": _severity(None, news2, policy),
                    "opened_s": at_s,
                    "peak": None,
                    "status": "deferred_for_review",
                    "confirmed": False,
                }
                new["active"] = active
                emit(
                    active,
                    "deferred_for_review",
                    active["severity"],
                    "input_out_of_distribution",
                    why,
                )
        else:
            active["down"] = None
            if active.get("status", "open") == "open":
                active["status"] = "deferred_for_review"
                emit(
                    active,
                    "deferred_for_review",
                    active["severity"],
                    "input_out_of_distribution",
                    why,
                )
    elif active is not None:
        active = _judge(active, new, emit, value, arm, disarm, at_s, risk, news2, policy)
    else:
        _arm(new, out, value, arm, at, kind, degraded, risk, news2, policy, patient_id)
    if rearm and active is not None and new["active"] is active and not out:
        status = active.get("status", "open")
        emit(
            active,
            "open" if status == "open" else "deferred_for_review",
            active["severity"],
            "snooze_expired",
        )
    for key in ("active", "up", "ood_up"):  # keep a quiet patient's state small
        if new.get(key) is None:
            new.pop(key, None)
    return new, out


def expire_snooze(
    state: Mapping[str, Any], *, at: datetime
) -> tuple[dict[str, Any], list[AlertDecision]]:
    """End a snooze whose time has come, without waiting for the patient's next score.

    The worker calls this on its event-time clock (the slowest input stream's), so a
    snooze ends on time even for a patient whose data has stopped. The episode goes back
    to what it was before the snooze (``open`` or ``deferred_for_review``, current
    severity) with reason ``snooze_expired``; the next score then judges it as usual.

    Args:
        state: The patient's alert state; not mutated.
        at: Event time now.

    Returns:
        The new alert state and the decision to publish (none when nothing expired).
    """
    active = state.get("active")
    if active is None or active.get("snoozed_until_s") is None or _snoozed(active, at.timestamp()):
        return dict(state), []
    episode = {**active, "snoozed_until_s": None}
    status = episode.get("status", "open")
    decision = AlertDecision(
        episode["id"],
        episode["kind"],
        "open" if status == "open" else "deferred_for_review",
        episode["severity"],
        "snooze_expired",
        episode["kind"] == "news2",
    )
    return {**state, "active": episode}, [decision]


def _judge(
    active: dict[str, Any],
    new: dict[str, Any],
    emit: _Emit,
    value: float,
    arm: float,
    disarm: float,
    at_s: float,
    risk: float | None,
    news2: News2Result | None,
    policy: AlertPolicy,
) -> dict[str, Any]:
    """An in-distribution score for an episode judged by this signal."""
    if active.get("status", "open") == "deferred_for_review":
        if active.get("confirmed", True):
            active["status"] = "open"
            emit(active, "open", active["severity"], "back_in_distribution")
        elif value >= arm:
            up = new.get("up") or [0, at_s, active["kind"], value]
            up = [up[0] + 1, up[1], up[2], max(float(up[3]), value)]
            new["up"] = up
            if up[0] >= policy.arm_scores and at_s - up[1] >= policy.arm_duration.total_seconds():
                new["up"] = None
                active.update(status="open", confirmed=True, peak=value)
                active["severity"] = max(
                    active["severity"], _severity(risk, news2, policy), key=_RANK.__getitem__
                )
                emit(active, "open", active["severity"], "risk_above_threshold")
            return active
        else:
            emit(active, "resolved", active["severity"], "back_in_distribution")
            _resolve(new, active, at_s, confirmed=False)
            return active
    if value <= disarm:
        down = active.get("down") or [0, at_s]
        down = [down[0] + 1, down[1]]
        active["down"] = down
        if (
            down[0] >= policy.disarm_scores
            and at_s - down[1] >= policy.disarm_duration.total_seconds()
        ):
            emit(active, "resolved", active["severity"], "below_disarm_threshold")
            _resolve(new, active, at_s, confirmed=True)
        return active
    active["down"] = None
    peak = active.get("peak")
    active["peak"] = value if peak is None else max(float(peak), value)
    severity = _severity(risk, news2, policy)
    if _RANK[severity] > _RANK[active["severity"]]:
        active["severity"] = severity
        emit(active, "escalated", severity, "severity_rose")
    return active


def _arm(
    new: dict[str, Any],
    out: list[AlertDecision],
    value: float,
    arm: float,
    at: datetime,
    kind: Kind,
    degraded: bool,
    risk: float | None,
    news2: News2Result | None,
    policy: AlertPolicy,
    patient_id: str,
) -> None:
    """An in-distribution score without an episode: extend or end the arming run."""
    at_s = at.timestamp()
    last = new.get("last_resolved_s")
    if (
        last is not None
        and new.get("last_kind", kind) == kind
        and new.get("last_peak") is not None
        and at_s - float(last) < policy.refractory.total_seconds()
    ):
        # The last peak is in the resolved episode's own unit (risk 0-1 or NEWS2 points).
        margin = _NEWS2_MARGIN if degraded else policy.realert_margin
        arm = max(arm, float(new["last_peak"]) + margin)
    up = new.get("up")
    if value < arm:
        new["up"] = None
        return
    if up is None or up[2] != kind:
        up = [0, at_s, kind, value]
    up = [up[0] + 1, up[1], kind, max(float(up[3]), value)]
    new["up"] = up
    if up[0] < policy.arm_scores or at_s - up[1] < policy.arm_duration.total_seconds():
        return
    start = at if up[1] == at_s else datetime.fromtimestamp(up[1], tz=at.tzinfo)
    alert_id = make_alert_id(patient_id, kind, start, policy_version=POLICY_VERSION)
    severity = _severity(risk, news2, policy)
    new["up"] = None
    new["active"] = {
        "id": alert_id,
        "kind": kind,
        "severity": severity,
        "opened_s": up[1],
        "peak": up[3],
        "status": "open",
        "confirmed": True,
    }
    reason = "news2_above_threshold" if degraded else "risk_above_threshold"
    out.append(AlertDecision(alert_id, kind, "open", severity, reason, degraded))
