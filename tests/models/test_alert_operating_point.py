"""The offline alert replay (models/deterioration/alert_operating_point.py) on synthetic hourly
scores."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from models.deterioration import alert_operating_point as aop
from models.deterioration.alert_split import HOURS
from streams.core.alerting import AlertPolicy

N_HOURS = len(HOURS)


def _data(risk: list[list[float]], flagged: list[set[int]]) -> dict[str, npt.NDArray[Any]]:
    """Stays with the given hourly risks (padded with 0.01) and flagged hours (1-based)."""
    n = len(risk)
    r = np.full((n, N_HOURS), 0.01)
    flag = np.zeros((n, N_HOURS), dtype=bool)
    for i, row in enumerate(risk):
        r[i, : len(row)] = row
        for hour in flagged[i]:
            flag[i, hour - 1] = True
    return {
        "record_ids": np.arange(n) + 1000,
        "death": np.array([1] + [0] * (n - 1)),
        "risk": r,
        "ood_distance": np.where(flag, 1.5, 0.5),
        "ood_flag": flag,
        "ood_representation": np.zeros_like(flag),
        "ood_input": flag,
        "threshold": np.array(1.0),
    }


def test_policy_is_the_served_default_but_for_the_grid():
    policy = aop.policy_for(0.3, 0.05, 3)
    default = AlertPolicy()
    assert (policy.arm_risk, policy.disarm_risk, policy.arm_scores) == (0.3, 0.25, 3)
    assert policy.arm_duration == timedelta(hours=2)
    for name in ("defer_scores", "defer_duration", "disarm_scores", "refractory"):
        assert getattr(policy, name) == getattr(default, name)
    chosen = aop.policy_for(0.2, 0.1, 2)
    assert chosen == default  # the shipped operating point


def test_a_lone_flag_defers_nothing_a_persistent_one_does():
    # Stay 0 dies, alerted at hours 1-2; stay 1: one flagged hour; stay 2: two in a row.
    data = _data([[0.5, 0.5, 0.05, 0.05], [0.01], [0.01]], [set(), {10}, {20, 21}])
    point = aop.replay(data, 0.2, 0.1, 2)
    assert point.death_sensitivity == 1.0
    assert point.deaths_alerted == 1
    assert point.alerts_per_patient_hour == round(1 / (3 * N_HOURS), 5)
    assert point.stays_deferred == 1
    assert point.deferred_per_patient_hour == round(1 / (3 * N_HOURS), 5)
    single = aop.replay(data, 0.2, 0.1, 2, defer_scores=1, defer_duration=timedelta(0))
    assert single.stays_deferred == 2


def test_a_flag_breaks_the_arming_run():
    # The risk is high for two hours but the second score is out of distribution.
    data = _data([[0.5, 0.5, 0.01], [0.01]], [{2}, set()])
    assert aop.replay(data, 0.2, 0.1, 2).deaths_alerted == 0
    assert aop.replay(data, 0.2, 0.1, 1).deaths_alerted == 1


def test_cache_reuses_risks_and_recomputes_ood_for_new_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    calls: list[str] = []
    stays = _data([[0.3]], [set()])

    def risks(*_: Any) -> dict[str, npt.NDArray[Any]]:
        calls.append("risk")
        return {k: stays[k] for k in aop.RISK_KEYS}

    def ood(*_: Any) -> dict[str, npt.NDArray[Any]]:
        calls.append("ood")
        return {k: stays[k] for k in aop.OOD_KEYS}

    monkeypatch.setattr(aop, "hourly_risks", risks)
    monkeypatch.setattr(aop, "hourly_ood", ood)
    det, ood_pt, cache = tmp_path / "det.pt", tmp_path / "ood.pt", tmp_path / "c.npz"
    det.write_bytes(b"net")
    ood_pt.write_bytes(b"ood v1")

    def load() -> dict[str, bool]:
        data, reused = aop.load_or_compute(cache, tmp_path, det, ood_pt, split_name="validation")
        assert np.array_equal(data["ood_flag"], stays["ood_flag"])
        return reused

    assert load() == {"risk": False, "ood": False}
    assert calls == ["risk", "ood"]
    assert load() == {"risk": True, "ood": True}
    assert calls == ["risk", "ood"]
    ood_pt.write_bytes(b"ood v2")
    assert load() == {"risk": True, "ood": False}
    assert calls == ["risk", "ood", "ood"]
    det.write_bytes(b"net v2")
    assert load() == {"risk": False, "ood": False}
    assert calls[-2:] == ["risk", "ood"]
