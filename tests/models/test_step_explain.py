"""``deterioration_step_explain``: alert explanations of the step model.

On real stays its unoccluded risk equals the step model's own (full-sequence) risk at the
same scoring time; a contribution is exactly the calibrated log-odds lost by hiding that
parameter; the committed TorchScript equals the eager module; and its contract is the
window explain model's, so the worker asks either the same way."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.deterioration.export import EXPLAIN_MODEL_NAME
from models.deterioration.step_explain import STEP_EXPLAIN_MODEL_NAME, StepExplainModule
from models.deterioration.step_train import load_step_checkpoint
from models.ood.step_train import prepare_minutes
from streams.core.features import SERIES_CODES, features_at
from streams.datasets.physionet2012 import load_stays

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ROOT / "models" / "weights" / "deterioration_step.pt"
REPO = ROOT / "triton_repo"
DEMO_DIR = ROOT / "data" / "physionet2012-demo"
MINUTES = (6 * 60, 24 * 60 + 20, 47 * 60 + 30)
WINDOW_NAMES = ("values", "mask", "delta_hours", "statics", "static_mask")

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    torch.set_num_threads(1)
    net, _ = load_step_checkpoint(CHECKPOINT)
    stays, _ = load_stays(DEMO_DIR)
    return {"net": net, "arrays": [s.arrays() for s in stays[:8]]}


def _windows(arrays: list[Any], minute: int) -> list[torch.Tensor]:
    rows = [features_at(a, a.admit_time + timedelta(minutes=minute)) for a in arrays]
    b = len(rows)
    window = [torch.from_numpy(np.stack([getattr(r, n) for r in rows])) for n in WINDOW_NAMES]
    return [*window, torch.zeros(b, 4, 64), torch.zeros(b, 4), torch.zeros(b, 4)]


def test_the_unoccluded_risk_is_the_step_models_risk_on_real_stays(setup):
    net, arrays = setup["net"], setup["arrays"]
    module = StepExplainModule(net).eval()
    for minute in MINUTES:
        with torch.no_grad():
            risk, _, contributions = module(*_windows(arrays, minute))
            want, _, _ = net.score_hours(prepare_minutes(arrays, net, [minute]))
        assert float((risk[:, 0] - want[:, 0]).abs().max()) <= 1e-5, minute
        assert contributions.shape == (len(arrays), len(SERIES_CODES))
        assert float(contributions.abs().max()) > 0.0


def test_a_contribution_is_the_log_odds_lost_by_hiding_the_parameter(setup):
    net, arrays = setup["net"], setup["arrays"]
    module = StepExplainModule(net).eval()
    inputs = _windows(arrays, 24 * 60)
    with torch.no_grad():
        risk, _, contributions = module(*inputs)
    mask = inputs[1]
    never = mask.sum(1) == 0  # [B,P] parameters absent from the window
    assert bool(never.any())
    # Hiding an absent parameter changes nothing (up to float rounding across batch rows).
    assert float(contributions[never].abs().max()) <= 1e-5
    p = SERIES_CODES.index("HR")
    hidden = [t.clone() for t in inputs]
    hidden[0][:, :, p], hidden[1][:, :, p], hidden[2][:, :, p] = 0.0, 0.0, net.delta_cap
    with torch.no_grad():
        risk_hidden, _, _ = module(*hidden)
    lost = torch.logit(risk[:, 0].double()) - torch.logit(risk_hidden[:, 0].double())
    assert float((lost.float() - contributions[:, p]).abs().max()) <= 1e-4


def test_the_committed_artifact_equals_the_eager_module(setup):
    net, arrays = setup["net"], setup["arrays"]
    path = REPO / STEP_EXPLAIN_MODEL_NAME / "1" / "model.pt"
    served = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
    served.eval()
    module = StepExplainModule(net).eval()
    inputs = _windows(arrays, 30 * 60)
    with torch.no_grad():
        for a, b in zip(module(*inputs), served(*inputs), strict=True):
            assert float((a - b).abs().max()) <= 1e-5


def test_its_contract_is_the_window_explain_models():
    def body(name: str) -> str:
        text = (REPO / name / "config.pbtxt").read_text()
        return text.split("input [", 1)[1].split("instance_group", 1)[0]

    assert body(STEP_EXPLAIN_MODEL_NAME) == body(EXPLAIN_MODEL_NAME)
