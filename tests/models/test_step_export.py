"""``deterioration_step``: the config contract, export parity of the committed artifact,
the state budget, and a tiny deterministic training run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.common.torchscript import PARITY_TOLERANCE
from models.deterioration.step_explain import STEP_EXPLAIN_MODEL_NAME
from models.deterioration.step_export import (
    BLOCK_ROWS,
    MODEL_NAME,
    OOD_FIT,
    example_step_inputs,
    export_step,
    render_config,
    tensor_specs,
)
from models.deterioration.step_settings import StepTrainSettings
from models.deterioration.step_train import load_step_checkpoint, train_step
from models.ood.step_train import load_fit
from streams.core.step_features import BINS_PER_REQUEST
from vigil.errors import ModelError

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ROOT / "models" / "weights" / "deterioration_step.pt"
REPO = ROOT / "triton_repo"
MODEL_DIR = ROOT / "triton_repo" / MODEL_NAME
DEMO_DIR = ROOT / "data" / "physionet2012-demo"

# torch 2.x marks torch.jit deprecated; TorchScript is still what the Triton model loads.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def shipped():
    return load_step_checkpoint(CHECKPOINT)


def _load(path: Path) -> torch.jit.ScriptModule:
    return torch.jit.load(str(path))  # type: ignore[no-untyped-call, no-any-return]


def test_config_is_what_the_exporter_renders(shipped):
    net, meta = shipped
    card = json.loads((MODEL_DIR / "model_card.json").read_text())
    served = card["served_model"]
    arrays, fit_meta = load_fit(ROOT / OOD_FIT)
    text = render_config(
        net.config,
        net.layout.width,
        arrays,
        fit_meta["percentile"],
        max_batch_size=served["max_batch_size"],
    )
    assert (MODEL_DIR / "config.pbtxt").read_text() == text
    assert served["max_batch_size"] >= 256
    assert "timeout_action: REJECT" in text
    assert "max_queue_delay_microseconds" in text
    assert f'key: "block_rows"\n  value: {{ string_value: "{BLOCK_ROWS}" }}' in text
    assert card["state_layout"] == meta["state_layout"]
    assert served["bins_per_request"] == BINS_PER_REQUEST


def test_a_bad_block_rows_is_not_rendered(shipped):
    net, _ = shipped
    arrays, fit_meta = load_fit(ROOT / OOD_FIT)
    with pytest.raises(ModelError, match="block_rows must be positive"):
        render_config(net.config, net.layout.width, arrays, fit_meta["percentile"], block_rows=0)


def test_wrapper_is_the_shared_one():
    source = (ROOT / "models" / "common" / "triton_model.py").read_bytes()
    assert (MODEL_DIR / "1" / "model.py").read_bytes() == source


def test_state_fits_the_budget(shipped):
    net, _ = shipped
    width = net.layout.width
    assert width <= 512  # <= 2 KB per patient as float32
    assert width == 5 * net.config.n_series + net.layout.members * net.config.hidden


def test_reloaded_artifact_matches_eager_and_declared_dims(shipped):
    net, _ = shipped
    module = _load(MODEL_DIR / "1" / "model.pt")
    _, outputs = tensor_specs(net.config, net.layout.width)
    for images in (False, True):
        inputs = example_step_inputs(net, images=images, seed=3)
        with torch.no_grad():
            expected = net(*inputs[:-1])  # all but hours_since_seen (the OOD head's)
            served = module(*inputs)
        assert len(served) == len(outputs)
        for spec, b in zip(outputs, served, strict=True):
            assert tuple(b.shape[1:]) == spec.dims, spec.name
            assert (b.dtype == torch.bool) == (spec.data_type == "TYPE_BOOL"), spec.name
        # risk, state_out, fused against the eager ensemble; the OOD outputs that follow
        # are checked in test_step_ood.py.
        for spec, a, b in zip(outputs[:3], expected, served[:3], strict=True):
            assert float((a - b).abs().max()) <= PARITY_TOLERANCE, spec.name
        # The untrained image branch leaves the risk unchanged (image_out weight zero).
    without = example_step_inputs(net, images=False, seed=3)
    with_images = example_step_inputs(net, images=True, seed=3)
    with torch.no_grad():
        assert torch.equal(module(*without)[0], module(*with_images)[0])


def test_commit_selects_the_stored_state(shipped):
    net, _ = shipped
    inputs = list(example_step_inputs(net, images=False, seed=5))[:-1]
    valid = torch.zeros_like(inputs[4])
    valid[:, :3] = 1.0
    inputs[4] = valid
    states = []
    for commit in range(4):
        inputs[5] = torch.full_like(inputs[5], float(commit))
        with torch.no_grad():
            risk, state, _ = net(*inputs)
        states.append(state)
        if commit == 0:
            assert torch.equal(state, inputs[0])  # nothing committed: state unchanged
            first_risk = risk
        assert torch.equal(risk, first_risk)  # the risk is after every valid bin
    assert all(not torch.equal(states[i], states[i + 1]) for i in range(3))


def test_export_writes_the_same_contract(tmp_path, shipped):
    result = export_step(CHECKPOINT, tmp_path)
    assert result.max_abs_diff <= PARITY_TOLERANCE
    for name in (MODEL_NAME, STEP_EXPLAIN_MODEL_NAME):
        committed = (REPO / name / "config.pbtxt").read_text()
        assert result.configs[name].read_text() == committed, name
        assert (tmp_path / name / "1" / "model.py").exists()


def test_tiny_training_is_deterministic(tmp_path):
    def run(name: str) -> dict[str, torch.Tensor]:
        settings = StepTrainSettings(
            data_dir=DEMO_DIR,
            checkpoint=tmp_path / name,
            shipped_checkpoint=None,
            hidden=8,
            epochs=2,
            patience=2,
            members=2,
            max_stays=60,
            baselines=False,
            bootstrap_resamples=0,
        )
        train_step(settings)
        payload = torch.load(settings.checkpoint, weights_only=True)
        return payload["state_dict"]  # type: ignore[no-any-return]

    first, second = run("a.pt"), run("b.pt")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
