"""Alert policy v2: persistence both ways, NEWS2 band escalation, OOD deferral, snooze
expiry and re-arm, per-unit thresholds, and properties over random score streams."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.acks import apply_ack
from streams.core.alerting import (
    POLICY_VERSION,
    AlertDecision,
    AlertPolicy,
    OodVerdict,
    UnitPolicies,
    evaluate,
    expire_snooze,
)
from streams.core.events import AckEvent, make_alert_id
from streams.core.news2 import News2Band, News2Inputs, News2Result, score_news2

PID = "stay-140501"
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
NOW = datetime(2024, 5, 2, tzinfo=UTC)
POLICY = AlertPolicy(
    arm_risk=0.3,
    disarm_risk=0.2,
    arm_scores=2,
    arm_duration=timedelta(minutes=30),
    disarm_scores=2,
    disarm_duration=timedelta(minutes=30),
    refractory=timedelta(hours=6),
    realert_margin=0.15,
    max_snooze=timedelta(hours=2),
)
IN = OodVerdict(distance=10.0, threshold=31.363, flagged=False)
OUT = OodVerdict(distance=40.5, threshold=31.363, flagged=True)
NEWS2_0 = score_news2(News2Inputs(resp_rate_per_min=16, hr_bpm=75, temp_c=37.0))
NEWS2_RED = score_news2(News2Inputs(resp_rate_per_min=16, hr_bpm=75, temp_c=34.5))  # single 3
NEWS2_5 = score_news2(News2Inputs(resp_rate_per_min=22, hr_bpm=115, temp_c=38.5))
NEWS2_9 = score_news2(News2Inputs(resp_rate_per_min=25, spo2_percent=91, hr_bpm=135))


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def alert_id(minutes: float, kind: str = "deterioration") -> str:
    return make_alert_id(PID, kind, at(minutes), policy_version=POLICY_VERSION)


class Episode:
    def __init__(self, policy: AlertPolicy = POLICY) -> None:
        self.policy = policy
        self.state: dict[str, Any] = {}

    def score(
        self,
        minutes: float,
        risk: float | None,
        news2: News2Result | None = NEWS2_0,
        ood: OodVerdict | None = IN,
    ) -> list[AlertDecision]:
        self.state, decisions = evaluate(
            self.state,
            patient_id=PID,
            at=at(minutes),
            risk=risk,
            news2=news2,
            policy=self.policy,
            ood=ood,
        )
        return decisions

    def act(self, minutes: float, action: str, **extra: Any) -> Any:
        ack = AckEvent(
            ack_id=f"ack-{minutes}-{action}",
            patient_id=PID,
            alert_id=extra.pop("alert_id", self.state["active"]["id"]),
            event_time=at(minutes),
            action=action,
            user="rn-0412",
            reason="seen at the bedside",
            **extra,
        )
        result = apply_ack(self.state, ack, max_snooze_seconds=7200, now=NOW)
        self.state = result.state
        return result

    def states(self, *scores: tuple[float, float]) -> list[str]:
        return [d.state for m, r in scores for d in self.score(m, r)]


def test_fixture_bands():
    assert NEWS2_RED.band is News2Band.LOW_MEDIUM
    assert NEWS2_5.band is News2Band.MEDIUM
    assert NEWS2_9.band is News2Band.HIGH


# -- persistence -------------------------------------------------------------------------


def test_opens_only_after_n_scores_and_the_duration_with_the_run_start_as_id():
    episode = Episode()
    assert episode.score(0, 0.4) == []
    assert episode.score(10, 0.5) == []  # 2 scores but only 10 min
    [opened] = episode.score(30, 0.35)
    assert (opened.state, opened.reason) == ("open", "risk_above_threshold")
    assert opened.alert_id == alert_id(0)  # episode start = first score of the run
    assert episode.state["active"]["peak"] == 0.5


def test_a_score_below_arm_breaks_the_run():
    episode = Episode()
    assert episode.states((0, 0.4), (20, 0.29), (40, 0.4), (60, 0.4)) == []
    [opened] = episode.score(70, 0.4)
    assert opened.alert_id == alert_id(40)


def test_duration_alone_and_count_alone():
    by_time = Episode(
        AlertPolicy(arm_risk=0.3, disarm_risk=0.2, arm_scores=1, arm_duration=timedelta(hours=1))
    )
    assert by_time.states((0, 0.5), (59, 0.5)) == []
    assert by_time.states((60, 0.5)) == ["open"]
    by_count = Episode(
        AlertPolicy(arm_risk=0.3, disarm_risk=0.2, arm_scores=3, arm_duration=timedelta(0))
    )
    assert by_count.states((0, 0.5), (1, 0.5)) == []
    assert by_count.states((2, 0.5)) == ["open"]


def test_defaults_are_the_validated_operating_point():
    policy = AlertPolicy()
    assert (policy.arm_risk, policy.disarm_risk) == (0.2, 0.1)
    assert (policy.arm_scores, policy.arm_duration) == (2, timedelta(hours=1))
    assert (policy.disarm_scores, policy.disarm_duration) == (2, timedelta(hours=1))


def test_resolution_needs_persistence_on_the_way_down_too():
    episode = Episode()
    episode.states((0, 0.5), (30, 0.5))
    assert episode.states((60, 0.1), (70, 0.1)) == []  # 2 scores, only 10 min
    assert episode.states((80, 0.25)) == []  # back above disarm: the run ends
    assert episode.states((90, 0.1), (100, 0.15)) == []
    [resolved] = episode.score(120, 0.2)
    assert (resolved.state, resolved.reason) == ("resolved", "below_disarm_threshold")
    assert resolved.alert_id == alert_id(0)
    assert "active" not in episode.state


# -- escalation ----------------------------------------------------------------------------


def test_news2_bands_escalate_medium_for_a_single_three_and_high_for_seven():
    episode = Episode()
    [opened] = [d for m in (0, 30) for d in episode.score(m, 0.4, NEWS2_0)]
    assert opened.severity == "low"
    [medium] = episode.score(60, 0.4, NEWS2_RED)
    assert (medium.state, medium.severity) == ("escalated", "medium")
    assert episode.score(90, 0.4, NEWS2_5) == []  # still medium
    [high] = episode.score(120, 0.4, NEWS2_9)
    assert (high.state, high.severity, high.alert_id) == ("escalated", "high", opened.alert_id)


def test_model_risk_levels_escalate():
    episode = Episode()
    episode.states((0, 0.4), (30, 0.4))
    [medium] = episode.score(60, 0.66)
    [high] = episode.score(90, 0.81)
    assert (medium.severity, high.severity) == ("medium", "high")


def test_refractory_needs_the_margin_over_the_last_peak_even_with_persistence():
    episode = Episode()
    episode.states((0, 0.5), (30, 0.5), (60, 0.1), (90, 0.1))  # resolved at 90, peak 0.5
    assert episode.states((120, 0.6), (150, 0.6), (180, 0.6)) == []
    assert episode.states((210, 0.66)) == []  # run starts
    [reopened] = episode.score(240, 0.7)
    assert reopened.alert_id == alert_id(210)


# -- OOD deferral ---------------------------------------------------------------------------


def deferred_at_60(episode: Episode, risk: float = 0.9) -> AlertDecision:
    """Two flagged scores an hour apart: the persistence that opens a deferral."""
    assert episode.score(0, risk, ood=OUT) == []
    [deferred] = episode.score(60, risk, ood=OUT)
    return deferred


def test_ood_input_without_an_episode_defers_once_it_persists_and_says_why():
    episode = Episode()
    assert episode.score(0, 0.05, ood=OUT) == []  # whatever the risk, but not alone
    assert episode.score(30, 0.05, ood=OUT) == []  # 2 flags, only 30 min
    [deferred] = episode.score(60, 0.05, ood=OUT)
    assert deferred.state == "deferred_for_review"
    assert deferred.reason == "input_out_of_distribution"
    assert "40.50" in deferred.detail
    assert "31.36" in deferred.detail
    assert deferred.alert_id == alert_id(0)  # the run's start, like an arming run
    assert episode.score(90, 0.9, ood=OUT) == []  # no repeat, no confident alert


def test_an_interrupted_ood_run_opens_nothing():
    episode = Episode()
    assert episode.score(0, 0.05, ood=OUT) == []
    assert episode.score(40, 0.05) == []  # back in distribution: the run restarts
    assert episode.score(70, 0.05, ood=OUT) == []
    assert episode.score(100, 0.05, ood=OUT) == []  # 2 flags but 30 min
    assert "ood_up" in episode.state
    [deferred] = episode.score(130, 0.05, ood=OUT)
    assert deferred.alert_id == alert_id(70)
    assert "ood_up" not in episode.state


def test_ood_turns_an_open_alert_deferred_and_freezes_it():
    episode = Episode()
    [opened] = [d for m in (0, 30) for d in episode.score(m, 0.5)]
    [deferred] = episode.score(60, 0.95, NEWS2_0, OUT)
    assert (deferred.state, deferred.alert_id) == ("deferred_for_review", opened.alert_id)
    assert episode.score(90, 0.99, ood=OUT) == []  # no escalation on an untrusted risk
    assert episode.score(120, 0.01, ood=OUT) == []  # nor resolution
    [back] = episode.score(150, 0.5)
    assert (back.state, back.reason, back.alert_id) == (
        "open",
        "back_in_distribution",
        opened.alert_id,
    )


def test_a_deferral_alone_resolves_when_back_in_distribution_below_arm():
    episode = Episode()
    deferred = deferred_at_60(episode)
    [resolved] = episode.score(90, 0.25)
    assert (resolved.state, resolved.reason) == ("resolved", "back_in_distribution")
    assert resolved.alert_id == deferred.alert_id
    # A deferral sets no refractory peak: a real episode may open at the plain threshold.
    assert episode.states((120, 0.35), (150, 0.35)) == ["open"]


def test_a_deferral_confirms_with_persistence_once_back_in_distribution():
    episode = Episode()
    deferred = deferred_at_60(episode)
    assert episode.score(90, 0.5) == []
    [confirmed] = episode.score(120, 0.7)
    assert (confirmed.state, confirmed.alert_id) == ("open", deferred.alert_id)
    assert confirmed.severity == "medium"


def test_degraded_news2_episode_ignores_the_ood_flag():
    episode = Episode()
    [opened] = [d for m in (0, 30) for d in episode.score(m, None, NEWS2_9, None)]
    assert opened.kind == "news2"
    assert episode.score(60, 0.9, NEWS2_9, OUT) == []


# -- snooze ---------------------------------------------------------------------------------


def test_snooze_suppresses_escalation_then_rearms_with_the_current_severity():
    episode = Episode()
    episode.states((0, 0.4), (30, 0.4))
    snoozed = episode.act(40, "snooze", snooze_until=at(100))
    assert snoozed.decision.state == "snoozed"
    assert episode.score(60, 0.9) == []  # would escalate to high
    assert episode.score(90, 0.95, ood=OUT) == []  # would defer
    assert episode.score(95, 0.95) == []  # would say back in distribution
    [rearmed] = episode.score(100, 0.9)
    assert (rearmed.state, rearmed.reason, rearmed.severity) == (
        "open",
        "snooze_expired",
        "high",
    )
    assert episode.state["active"]["snoozed_until_s"] is None


def test_a_snoozed_alert_still_resolves_and_the_snooze_ends_with_it():
    episode = Episode()
    episode.states((0, 0.4), (30, 0.4))
    episode.act(40, "snooze", snooze_until=at(160))
    assert episode.states((60, 0.1)) == []
    [resolved] = episode.score(90, 0.1)
    assert resolved.state == "resolved"
    assert "active" not in episode.state


def test_a_snooze_ends_on_the_clock_without_a_score():
    episode = Episode()
    episode.states((0, 0.4), (30, 0.4))
    episode.act(40, "snooze", snooze_until=at(100))
    before = episode.state
    assert expire_snooze(before, at=at(99)) == (before, [])  # not yet
    state, [ended] = expire_snooze(before, at=at(100))
    assert (ended.state, ended.reason, ended.alert_id) == ("open", "snooze_expired", alert_id(0))
    assert state["active"]["snoozed_until_s"] is None
    assert before["active"]["snoozed_until_s"] is not None  # input not mutated
    episode.state = state
    assert expire_snooze(state, at=at(200)) == (state, [])  # ends once
    assert episode.score(110, 0.4) == []  # the next score does not re-announce it
    assert expire_snooze({}, at=at(0)) == ({}, [])


def test_a_deferred_alert_snoozed_returns_deferred():
    episode = Episode()
    deferred = deferred_at_60(episode)
    assert deferred.state == "deferred_for_review"
    episode.act(70, "snooze", snooze_until=at(120))
    _, [ended] = expire_snooze(episode.state, at=at(121))
    assert (ended.state, ended.reason) == ("deferred_for_review", "snooze_expired")


# -- units ----------------------------------------------------------------------------------


def test_unit_policies_pick_the_first_listed_key_else_the_default():
    surgical = AlertPolicy(arm_risk=0.6, disarm_risk=0.4)
    table = UnitPolicies(POLICY, {"surgical": surgical})
    assert table.for_unit("ward-7", "surgical") is surgical
    assert table.for_unit(None, "medical") is POLICY
    assert table.for_unit() is POLICY


# -- properties -----------------------------------------------------------------------------

scores = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=90),  # minutes since the previous score
        st.floats(min_value=0, max_value=1),
        st.booleans(),  # OOD
        st.sampled_from([None, NEWS2_0, NEWS2_RED, NEWS2_5, NEWS2_9]),
        st.booleans(),  # degraded (no model)
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(scores=scores, snooze_at=st.integers(min_value=0, max_value=39))
def test_policy_properties(scores, snooze_at):
    episode = Episode()
    minutes = 0
    opened: dict[str, int] = {}
    snoozed_until: float | None = None
    for i, (gap, risk, ood, news2, degraded) in enumerate(scores):
        minutes += gap
        active = episode.state.get("active")
        if i == snooze_at and active is not None:
            snoozed_until = minutes + 45
            episode.act(minutes, "snooze", snooze_until=at(snoozed_until))
            minutes += 1
        verdict = OUT if ood else IN
        decisions = episode.score(minutes, None if degraded else risk, news2, verdict)
        for d in decisions:
            if d.state == "open" and d.reason in ("risk_above_threshold", "news2_above_threshold"):
                opened[d.alert_id] = opened.get(d.alert_id, 0) + 1
            # Never a confident model alert on an OOD input.
            if ood and not degraded and d.kind == "deterioration":
                assert d.state in ("deferred_for_review", "resolved") or (
                    d.reason == "snooze_expired"
                )
                assert d.state != "open" or d.reason == "snooze_expired"
                assert d.state != "escalated"
            # Nothing but a resolution while snoozed.
            if snoozed_until is not None and minutes < snoozed_until:
                assert d.state == "resolved"
            if d.state == "resolved":
                snoozed_until = None  # the snooze ends with its episode
        # Exactly one opening per episode id.
        assert all(count == 1 for count in opened.values())
