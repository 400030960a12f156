"""Stepping real stays bin by bin through the exported ``deterioration_step`` gives the
risk of the full-sequence forward at every hour (issue 16: max abs difference <= 1e-5).

50 demo stays (test split), every hour 0..48 after admission. Each hour the worker's path
is taken: the bin closed since the last call and the open bin are built from the stay's
observations with :func:`streams.core.step_features.bin_inputs`, packed with
:func:`pack_bins` and run through the served wrapper (:class:`models.common.triton_model.Runner`,
in the model's served block size :data:`models.deterioration.step_export.BLOCK_ROWS`) on the
committed TorchScript, carrying ``state_out`` forward. The reference
is the eager ensemble's full-sequence path (:meth:`StepEnsemble.score_hours`) on the
committed checkpoint.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from models.common.triton_model import Runner
from models.deterioration.step_export import BLOCK_ROWS, MODEL_NAME, tensor_specs
from models.deterioration.step_train import load_step_checkpoint, prepare
from streams.core.step_features import BINS_PER_REQUEST, StepBin, bin_inputs, pack_bins
from streams.datasets.physionet2012 import Stay, load_stays

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ROOT / "models" / "weights" / "deterioration_step.pt"
MODEL_PT = ROOT / "triton_repo" / MODEL_NAME / "1" / "model.pt"
DEMO_DIR = ROOT / "data" / "physionet2012-demo"
ADMIT = datetime(2012, 1, 1, tzinfo=UTC)
HOURS = 48
N_STAYS = 50
TOLERANCE = 1e-5

# torch 2.x marks torch.jit deprecated; TorchScript is still what the Triton model loads.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    stays, _ = load_stays(DEMO_DIR)
    stays = stays[:N_STAYS]
    net, _ = load_step_checkpoint(CHECKPOINT)
    arrays = [s.arrays(ADMIT) for s in stays]
    with torch.no_grad():
        expected, _, _ = net.score_hours(prepare(arrays, net, HOURS))
    module = torch.jit.load(str(MODEL_PT))  # type: ignore[no-untyped-call]
    module.eval()
    inputs, outputs = tensor_specs(net.config, net.layout.width)
    runner = Runner(
        module,
        [(s.name, np.float32, s.dims) for s in inputs],
        [(s.name, np.float32) for s in outputs],
        block_rows=BLOCK_ROWS,
    )
    return {
        "stays": stays,
        "arrays": arrays,
        "expected": expected.numpy(),
        "runner": runner,
        "width": net.layout.width,
        "config": net.config,
    }


def _closed(stay: Stay, first: int, stop: int) -> list[StepBin]:
    """Steps of the closed bins ``first..stop-1`` (empty hours are no step)."""
    observations = stay.observations(ADMIT)
    out = []
    for index in range(first, stop):
        item = bin_inputs(observations, admit_time=ADMIT, index=index)
        if item is not None:
            out.append(item)
    return out


def _call(
    setup: dict[str, Any],
    state: npt.NDArray[np.float32],
    requests: list[tuple[list[StepBin], int]],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    packed = [pack_bins(bins) for bins, _ in requests]
    config = setup["config"]
    n = len(requests)
    arrays = {
        "state": state,
        "bins_values": np.stack([p[0] for p in packed]),
        "bins_mask": np.stack([p[1] for p in packed]),
        "bins_delta_hours": np.stack([p[2] for p in packed]),
        "bins_valid": np.stack([p[3] for p in packed]),
        "commit_bins": np.array([[float(c)] for _, c in requests], dtype=np.float32),
        "statics": np.stack([a.statics for a in setup["arrays"]]),
        "static_mask": np.stack([a.static_mask for a in setup["arrays"]]),
        "image_embeddings": np.zeros((n, config.max_images, config.image_dim), np.float32),
        "image_age_hours": np.zeros((n, config.max_images), np.float32),
        "image_mask": np.zeros((n, config.max_images), np.float32),
        # Read by the OOD head only (risk and state do not depend on it).
        "hours_since_seen": np.full((n, config.n_series), 48.0, np.float32),
    }
    runner: Runner = setup["runner"]
    assert runner.check(arrays) == n
    out = runner.run(arrays)
    return out["risk"][:, 0], out["state_out"]


def test_stepping_hour_by_hour_matches_the_full_sequence(setup):
    stays = setup["stays"]
    state = np.zeros((len(stays), setup["width"]), dtype=np.float32)
    worst = 0.0
    steps = 0
    for hour in range(HOURS + 1):
        end = ADMIT + timedelta(hours=hour)
        requests = []
        for stay in stays:
            closed = _closed(stay, hour - 1, hour) if hour > 0 else []
            open_bin = bin_inputs(
                stay.observations(ADMIT), admit_time=ADMIT, index=hour, end_time=end
            )
            requests.append((closed + ([open_bin] if open_bin is not None else []), len(closed)))
            steps += len(closed)
        risk, state = _call(setup, state, requests)
        worst = max(worst, float(np.abs(risk - setup["expected"][:, hour]).max()))
    assert steps > 20 * N_STAYS  # real stays: most hours hold an observation
    assert worst <= TOLERANCE, f"max |step - full sequence| = {worst:.3g}"


def test_committing_several_bins_per_call_gives_the_same_risk_and_state(setup):
    """Bins committed 6 at a time (one call per 6 hours) instead of one per hour."""
    stays = setup["stays"]
    n = len(stays)
    hourly = np.zeros((n, setup["width"]), dtype=np.float32)
    for hour in range(1, HOURS + 1):
        hourly = _call(setup, hourly, [(_closed(s, hour - 1, hour), 99) for s in stays])[1]
    chunked = np.zeros_like(hourly)
    worst = 0.0
    for hour in range(6, HOURS + 1, 6):
        requests = []
        for stay in stays:
            closed = _closed(stay, hour - 6, hour)
            assert len(closed) < BINS_PER_REQUEST
            end = ADMIT + timedelta(hours=hour)
            open_bin = bin_inputs(
                stay.observations(ADMIT), admit_time=ADMIT, index=hour, end_time=end
            )
            requests.append((closed + ([open_bin] if open_bin is not None else []), len(closed)))
        risk, chunked = _call(setup, chunked, requests)
        worst = max(worst, float(np.abs(risk - setup["expected"][:, hour]).max()))
    assert worst <= TOLERANCE
    np.testing.assert_allclose(chunked, hourly, rtol=0, atol=1e-5)


def test_a_call_without_bins_scores_the_stored_state_and_keeps_it(setup):
    stays = setup["stays"]
    state = np.zeros((len(stays), setup["width"]), dtype=np.float32)
    state = _call(setup, state, [(_closed(s, 0, 7), 7) for s in stays])[1]
    risk_a, same = _call(setup, state, [([], 0) for _ in stays])
    np.testing.assert_array_equal(same, state)
    risk_b, _ = _call(setup, state, [([], 0) for _ in stays])
    np.testing.assert_array_equal(risk_a, risk_b)
