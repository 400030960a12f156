"""The step model's input to the alert replay (models/deterioration/alert_step_scores.py) and the
choice rule of models/deterioration/alert_operating_point.py.

The hourly scores of ``--model step`` come from stepping the eager served module; here, on
real demo stays, they equal the committed TorchScript artifact that Triton serves
(``triton_repo/deterioration_step/1/model.pt``) stepped the same way, and the
full-sequence path of the parity test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from models.deterioration import alert_operating_point as aop
from models.deterioration import alert_step_scores as steps
from models.deterioration.alert_split import HOURS
from streams.datasets.physionet2012 import load_stays

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "models" / "weights"
MODEL_PT = ROOT / "triton_repo" / "deterioration_step" / "1" / "model.pt"
DEMO_DIR = ROOT / "data" / "physionet2012-demo"
N_STAYS = 4
N_HOURS = len(HOURS)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def served() -> dict[str, Any]:
    stays, _ = load_stays(DEMO_DIR)
    stays = stays[:N_STAYS]
    module, net, meta = steps.build_served_module(
        WEIGHTS / "deterioration_step.pt", WEIGHTS / "deterioration_step_ood.pt"
    )
    artifact = torch.jit.load(str(MODEL_PT))  # type: ignore[no-untyped-call]
    artifact.eval()

    def serve(m: Any) -> dict[str, npt.NDArray[Any]]:
        return steps.serve_hourly(
            m, stays, N_HOURS, config=net.config, state_width=net.layout.width
        )

    return {
        "eager": serve(module),
        "artifact": serve(artifact),
        "full_sequence": steps.full_sequence_risk(net, stays, N_HOURS),
        "meta": meta,
    }


def test_the_replayed_step_scores_are_the_served_artifacts(served):
    eager, artifact = served["eager"], served["artifact"]
    assert eager["risk"].shape == (N_STAYS, N_HOURS)
    np.testing.assert_allclose(eager["risk"], artifact["risk"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(eager["risk"], served["full_sequence"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(eager["distance"], artifact["distance"], rtol=1e-4, atol=1e-5)
    clear = np.abs(artifact["distance"] - 1.0) > 1e-3  # away from the threshold
    for name in ("ood", "representation_ood", "input_ood"):
        np.testing.assert_array_equal(eager[name][clear], artifact[name][clear])
    np.testing.assert_array_equal(eager["ood"], eager["distance"] > 1.0)
    assert float(eager["risk"].std()) > 0.01  # real, varying risks


def test_the_step_checkpoint_records_the_window_models_split(served):
    window = torch.load(WEIGHTS / "deterioration.pt", map_location="cpu", weights_only=True)
    assert served["meta"]["split"] == window["meta"]["split"]
    assert served["meta"]["settings"]["split_seed"] == 2012


def _point(arm: float, burden: float, sensitivity: float, persistence: int = 2) -> aop.CurvePoint:
    return aop.CurvePoint(arm, 0.1, persistence, burden, sensitivity, 0.3, 0.0, 5.0)


def test_choice_is_the_fewest_alerts_among_points_meeting_both_goals():
    grid = [
        _point(0.10, 0.030, 0.95),
        _point(0.20, 0.012, 0.85),
        _point(0.25, 0.009, 0.81),  # expected: both goals, fewest alerts
        _point(0.30, 0.006, 0.70),  # fewer alerts, not sensitive enough
        _point(0.05, 0.060, 0.99),  # over the burden
    ]
    assert aop.choose(grid, 0.05, 0.80) == grid[2]
    # A tie in burden goes to the higher arm, then to more persistence.
    tied = [*grid, _point(0.275, 0.009, 0.81), _point(0.275, 0.009, 0.82, persistence=3)]
    assert aop.choose(tied, 0.05, 0.80) == tied[-1]
    # Nobody sensitive enough: the most sensitive within the burden.
    assert aop.choose(grid, 0.05, 0.99) == grid[0]
    # Nobody within the burden: the least burdensome.
    assert aop.choose(grid, 0.001, 0.80) == grid[3]


def test_step_cache_is_its_own_and_recomputed_for_new_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    calls: list[str] = []
    flag = np.zeros((1, N_HOURS), dtype=bool)
    scores: dict[str, npt.NDArray[Any]] = {
        "record_ids": np.array([1]),
        "death": np.array([1]),
        "risk": np.full((1, N_HOURS), 0.3),
        "ood_distance": np.full((1, N_HOURS), 0.5),
        "ood_flag": flag,
        "ood_representation": flag,
        "ood_input": flag,
        "threshold": np.array(1.0),
        "full_sequence_max_abs_diff": np.array(1e-7),
    }

    def fake(*_: Any) -> dict[str, npt.NDArray[Any]]:
        calls.append("step")
        return dict(scores)

    monkeypatch.setattr(steps, "hourly_step_scores", fake)
    net, ood, cache = tmp_path / "step.pt", tmp_path / "step_ood.pt", tmp_path / "c.npz"
    net.write_bytes(b"net")
    ood.write_bytes(b"ood v1")

    def load() -> dict[str, bool]:
        data, reused = aop.load_or_compute(
            cache, tmp_path, net, ood, split_name="validation", model="step"
        )
        assert float(data["full_sequence_max_abs_diff"]) == 1e-7
        return reused

    assert load() == {"risk": False, "ood": False}
    assert load() == {"risk": True, "ood": True}
    assert calls == ["step"]
    ood.write_bytes(b"ood v2")  # one pass gives both parts: both recomputed
    assert load() == {"risk": False, "ood": False}
    assert calls == ["step", "step"]
    with pytest.raises(ValueError, match="model must be"):
        aop.load_or_compute(cache, tmp_path, net, ood, split_name="validation", model="other")
