"""Alert policy: every transition of one episode, refractory, degraded mode, ids."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streams.core.alerting import POLICY_VERSION, AlertDecision, AlertPolicy, evaluate
from streams.core.events import make_alert_id
from streams.core.news2 import Acvpu, News2Band, News2Inputs, News2Result, score_news2

PID = "stay-132539"
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
# No persistence, so each test below is about one mechanism (persistence: test_alerting_v2).
POLICY = AlertPolicy(
    arm_risk=0.5,
    disarm_risk=0.35,
    arm_scores=1,
    arm_duration=timedelta(0),
    disarm_scores=1,
    disarm_duration=timedelta(0),
    refractory=timedelta(hours=6),
    realert_margin=0.15,
    news2_threshold=7,
)

# NEWS2 results from real chart inputs (points in comments).
NEWS2_0 = score_news2(
    News2Inputs(
        resp_rate_per_min=16,
        spo2_percent=97,
        on_oxygen=False,
        sbp_mmhg=120,
        hr_bpm=75,
        consciousness=Acvpu.ALERT,
        temp_c=37.0,
    )
)
NEWS2_5 = score_news2(News2Inputs(resp_rate_per_min=22, hr_bpm=115, temp_c=38.5))  # 2+2+1
NEWS2_6 = score_news2(News2Inputs(resp_rate_per_min=22, hr_bpm=115, temp_c=39.5))  # 2+2+2
NEWS2_7 = score_news2(News2Inputs(resp_rate_per_min=25, hr_bpm=115, temp_c=39.5))  # 3+2+2
NEWS2_9 = score_news2(News2Inputs(resp_rate_per_min=25, spo2_percent=91, hr_bpm=135))  # 3+3+3


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


class Episode:
    """Feeds scores through :func:`evaluate`, keeping the alert state like the worker."""

    def __init__(self, policy: AlertPolicy = POLICY) -> None:
        self.policy = policy
        self.state: dict[str, Any] = {}

    def score(
        self, minutes: float, risk: float | None, news2: News2Result | None = NEWS2_0
    ) -> list[AlertDecision]:
        self.state, decisions = evaluate(
            self.state, patient_id=PID, at=at(minutes), risk=risk, news2=news2, policy=self.policy
        )
        return decisions

    @property
    def active(self) -> dict[str, Any] | None:
        return self.state.get("active")


def test_news2_fixtures_have_the_intended_totals():
    assert [r.total for r in (NEWS2_0, NEWS2_5, NEWS2_6, NEWS2_7, NEWS2_9)] == [0, 5, 6, 7, 9]
    assert NEWS2_0.band is News2Band.LOW
    assert NEWS2_5.band is NEWS2_6.band is News2Band.MEDIUM
    assert NEWS2_7.band is NEWS2_9.band is News2Band.HIGH


def test_no_alert_below_arm():
    episode = Episode()
    for minute, risk in enumerate([0.0, 0.2, 0.49, 0.499]):
        assert episode.score(minute, risk) == []
    assert episode.active is None


def test_opens_at_exactly_arm():
    episode = Episode()
    [decision] = episode.score(0, 0.5)
    assert decision == AlertDecision(
        alert_id=make_alert_id(PID, "deterioration", at(0), policy_version=POLICY_VERSION),
        kind="deterioration",
        state="open",
        severity="low",
        reason="risk_above_threshold",
        degraded=False,
    )
    assert episode.active is not None
    assert episode.active["id"] == decision.alert_id


def test_stays_open_between_disarm_and_arm():
    episode = Episode()
    [opened] = episode.score(0, 0.6)
    for minute, risk in [(30, 0.49), (60, 0.4), (90, 0.36), (120, 0.55), (150, 0.351)]:
        assert episode.score(minute, risk) == [], risk
        assert episode.active is not None
        assert episode.active["id"] == opened.alert_id


def test_resolves_at_disarm_with_the_episode_id():
    episode = Episode()
    [opened] = episode.score(0, 0.6)
    [resolved] = episode.score(30, 0.35)
    assert resolved.state == "resolved"
    assert resolved.alert_id == opened.alert_id
    assert resolved.reason == "below_disarm_threshold"
    assert resolved.severity == opened.severity
    assert episode.active is None


def test_resolves_below_disarm():
    episode = Episode()
    episode.score(0, 0.6)
    [resolved] = episode.score(30, 0.05)
    assert resolved.state == "resolved"


def test_hysteresis_stops_flapping_around_arm():
    episode = Episode()
    decisions = [
        d for m, r in enumerate([0.51, 0.49, 0.52, 0.48, 0.5]) for d in episode.score(m, r)
    ]
    assert [d.state for d in decisions] == ["open"]


def test_escalates_when_severity_rises_not_when_it_falls():
    episode = Episode()
    [opened] = episode.score(0, 0.55)
    assert opened.severity == "low"
    [medium] = episode.score(30, 0.7)
    assert (medium.state, medium.severity, medium.reason) == (
        "escalated",
        "medium",
        "severity_rose",
    )
    [high] = episode.score(60, 0.85)
    assert (high.state, high.severity) == ("escalated", "high")
    assert opened.alert_id == medium.alert_id == high.alert_id
    # Falling back does not de-escalate or publish anything; the episode keeps its peak.
    assert episode.score(90, 0.7) == []
    assert episode.score(120, 0.55) == []
    assert episode.active is not None
    assert episode.active["severity"] == "high"
    assert episode.active["peak"] == 0.85
    [resolved] = episode.score(150, 0.3)
    assert (resolved.state, resolved.severity) == ("resolved", "high")


def test_no_escalation_at_the_same_severity():
    episode = Episode()
    episode.score(0, 0.66)
    assert episode.score(30, 0.79) == []


def test_news2_band_raises_severity_with_the_model_on():
    episode = Episode()
    [opened] = episode.score(0, 0.55, NEWS2_0)
    assert opened.severity == "low"
    [medium] = episode.score(30, 0.55, NEWS2_5)
    assert (medium.state, medium.severity) == ("escalated", "medium")
    [high] = episode.score(60, 0.55, NEWS2_9)
    assert (high.state, high.severity) == ("escalated", "high")


def test_refractory_suppresses_reopen_unless_risk_exceeds_peak_plus_margin():
    episode = Episode()
    [first] = episode.score(0, 0.6)
    episode.score(30, 0.75)  # peak 0.75
    [resolved] = episode.score(60, 0.3)
    assert resolved.state == "resolved"
    # Within the 6 h refractory period, below 0.75 + 0.15: nothing.
    assert episode.score(90, 0.6) == []
    assert episode.score(120, 0.89) == []
    assert episode.active is None
    # Above the last peak plus the margin: a new episode with a new id.
    [reopened] = episode.score(150, 0.91)
    assert reopened.state == "open"
    assert reopened.alert_id == make_alert_id(
        PID, "deterioration", at(150), policy_version=POLICY_VERSION
    )
    assert reopened.alert_id != first.alert_id


def test_refractory_expiry_allows_reopen():
    episode = Episode()
    episode.score(0, 0.7)
    episode.score(60, 0.2)  # resolved at minute 60
    refractory_min = POLICY.refractory / timedelta(minutes=1)
    assert episode.score(60 + refractory_min - 1, 0.6) == []
    [reopened] = episode.score(60 + refractory_min, 0.6)
    assert reopened.state == "open"


def test_refractory_zero_allows_immediate_reopen():
    episode = Episode(replace(POLICY, refractory=timedelta(0)))
    episode.score(0, 0.9)
    episode.score(30, 0.2)
    [reopened] = episode.score(30, 0.5)
    assert reopened.state == "open"


def test_degraded_mode_uses_news2_thresholds():
    episode = Episode()
    assert episode.score(0, None, NEWS2_6) == []
    [opened] = episode.score(30, None, NEWS2_7)
    assert opened == AlertDecision(
        alert_id=make_alert_id(PID, "news2", at(30), policy_version=POLICY_VERSION),
        kind="news2",
        state="open",
        severity="high",
        reason="news2_above_threshold",
        degraded=True,
    )
    # Hysteresis: 6 stays open, 5 (threshold - 2) resolves.
    assert episode.score(60, None, NEWS2_6) == []
    [resolved] = episode.score(90, None, NEWS2_5)
    assert (resolved.state, resolved.alert_id, resolved.degraded) == (
        "resolved",
        opened.alert_id,
        True,
    )


def test_degraded_threshold_comes_from_the_policy():
    episode = Episode(replace(POLICY, news2_threshold=5))
    [opened] = episode.score(0, None, NEWS2_5)
    assert (opened.kind, opened.severity) == ("news2", "medium")
    [escalated] = episode.score(30, None, NEWS2_9)
    assert (escalated.state, escalated.severity) == ("escalated", "high")


def test_degraded_without_news2_changes_nothing():
    episode = Episode()
    episode.score(0, 0.7)
    before = copy.deepcopy(episode.state)
    assert episode.score(30, None, None) == []
    assert episode.state == before


def test_degraded_refractory_needs_two_more_news2_points():
    episode = Episode()
    episode.score(0, None, NEWS2_7)  # peak 7
    episode.score(30, None, NEWS2_0)  # resolved
    assert episode.score(60, None, NEWS2_7) == []
    [reopened] = episode.score(90, None, NEWS2_9)  # 9 >= 7 + 2
    assert (reopened.state, reopened.kind) == ("open", "news2")


def test_model_episode_is_kept_while_degraded_and_judged_when_the_model_returns():
    episode = Episode()
    [opened] = episode.score(0, 0.7)
    # Triton down: the model's episode can be neither resolved nor duplicated by NEWS2.
    assert episode.score(30, None, NEWS2_0) == []
    assert episode.score(60, None, NEWS2_9) == []
    assert episode.active is not None
    assert episode.active["id"] == opened.alert_id
    [resolved] = episode.score(90, 0.2)
    assert (resolved.state, resolved.alert_id, resolved.kind) == (
        "resolved",
        opened.alert_id,
        "deterioration",
    )


def test_news2_episode_is_judged_by_news2_when_the_model_returns():
    # NEWS2 is computed with the model on too, so an episode opened while degraded must
    # still resolve (and not block model alerts for ever) once Triton is back.
    episode = Episode()
    [opened] = episode.score(0, None, NEWS2_9)
    assert episode.score(30, 0.2, NEWS2_7) == []
    [resolved] = episode.score(60, 0.2, NEWS2_0)
    assert (resolved.state, resolved.alert_id, resolved.kind) == (
        "resolved",
        opened.alert_id,
        "news2",
    )
    assert resolved.degraded  # the episode was raised without the model
    assert episode.active is None


def test_news2_refractory_does_not_suppress_a_model_alert():
    # The last peak of a NEWS2 episode is in points (9), a model risk is 0-1: comparing
    # them would mute every model alert for the refractory period.
    episode = Episode()
    episode.score(0, None, NEWS2_9)
    episode.score(30, None, NEWS2_0)  # resolved, peak 9
    [opened] = episode.score(60, 0.7)
    assert (opened.state, opened.kind) == ("open", "deterioration")


def test_same_inputs_give_the_same_ids_and_state():
    runs = []
    for _ in range(2):
        episode = Episode()
        decisions = [*episode.score(0, 0.6), *episode.score(30, 0.9), *episode.score(60, 0.1)]
        runs.append((decisions, episode.state))
    assert runs[0] == runs[1]
    assert len({d.alert_id for d in runs[0][0]}) == 1


def test_ids_differ_by_episode_start_patient_and_kind():
    def opened_id(patient_id: str, minutes: float, risk: float | None) -> str:
        _, [decision] = evaluate(
            {}, patient_id=patient_id, at=at(minutes), risk=risk, news2=NEWS2_9, policy=POLICY
        )
        return decision.alert_id

    base = opened_id(PID, 0, 0.6)
    assert len(base) == 32
    assert int(base, 16) >= 0
    assert PID not in base
    assert opened_id(PID, 0, 0.9) == base  # the id does not depend on the value
    assert opened_id(PID, 1, 0.6) != base
    assert opened_id("stay-132540", 0, 0.6) != base
    assert opened_id(PID, 0, None) != base  # news2 kind


def test_evaluate_does_not_mutate_the_given_state():
    episode = Episode()
    episode.score(0, 0.6)
    frozen = copy.deepcopy(episode.state)
    for risk in (0.9, 0.1):
        evaluate(episode.state, patient_id=PID, at=at(30), risk=risk, news2=NEWS2_0, policy=POLICY)
        assert episode.state == frozen


def test_alert_state_survives_a_json_round_trip():
    episode = Episode()
    episode.score(0, 0.6)
    episode.score(30, 0.8)
    episode.state = json.loads(json.dumps(episode.state))
    [resolved] = episode.score(60, 0.2)
    assert resolved.alert_id == make_alert_id(
        PID, "deterioration", at(0), policy_version=POLICY_VERSION
    )
    episode.state = json.loads(json.dumps(episode.state))
    assert episode.score(90, 0.9) == []  # still refractory: 0.9 < 0.8 + 0.15


@pytest.mark.parametrize(
    "changes",
    [
        {"arm_risk": 0.3, "disarm_risk": 0.35},
        {"arm_risk": 0.5, "disarm_risk": 0.5},
        {"disarm_risk": 0.0},
        {"arm_risk": 1.0},
        {"refractory": timedelta(hours=-1)},
        {"realert_margin": -0.1},
        {"news2_threshold": 1},
        {"news2_threshold": 21},
        {"arm_scores": 0},
        {"disarm_scores": 0},
        {"arm_duration": timedelta(minutes=-1)},
        {"disarm_duration": timedelta(minutes=-1)},
        {"medium_risk": 0.9, "high_risk": 0.8},
        {"max_snooze": timedelta(0)},
    ],
)
def test_invalid_policy_is_rejected(changes):
    with pytest.raises(ValueError, match="need"):
        AlertPolicy(**changes)


def test_valid_policy_edges_are_accepted():
    AlertPolicy(arm_risk=0.02, disarm_risk=0.01, news2_threshold=2, refractory=timedelta(0))
    AlertPolicy(news2_threshold=20, realert_margin=0.0)
