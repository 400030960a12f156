"""The image branch fine-tuned on a synthetic TEST-FIXTURE linkage of X-rays to stays:
the rule, what is frozen, determinism, and the shipped models with and without a study.

PhysioNet stays have no images; every pairing of an X-ray with a stay here is a fixture.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from models.cli import train_app
from models.deterioration.export import (
    EXPLAIN_MODEL_NAME,
    MODEL_NAME,
    example_inputs,
    load_checkpoint,
)
from models.deterioration.image_branch import (
    BRANCH_PARAMETERS,
    draw_linkage,
    finetune_image_branch,
    frozen_state_sha256,
    image_inputs,
)
from models.deterioration.image_branch_settings import ImageBranchSettings
from models.deterioration.network import NetConfig, NetInputs, RiskModel
from models.deterioration.train import TrainResult, make_windows
from models.imaging.data import load_xray
from streams.datasets.physionet2012 import load_stays
from tests.models.conftest import DEMO_DIR

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "triton_repo"
WEIGHTS = REPO / "models" / "weights"
XRAY_SAMPLE = REPO / "data" / "pneumoniamnist-sample" / "pneumoniamnist_sample.npz"
STUDY_AGE_HOURS = 6.0


@pytest.fixture(autouse=True)
def _no_developer_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("VIGIL_IMAGE_BRANCH_"):
            monkeypatch.delenv(name)


def _load(path: Path) -> torch.jit.ScriptModule:
    return torch.jit.load(str(path))  # type: ignore[no-untyped-call, no-any-return]


def _is_branch(name: str) -> bool:
    return any(name.endswith("." + p) for p in BRANCH_PARAMETERS)


# --- The fixture rule ---


def test_linkage_follows_the_fixture_rule():
    labels = np.array([1] * 20_000 + [0] * 80_000, dtype=np.float32)
    link = draw_linkage(
        labels,
        p=0.8,
        n_abnormal=7,
        n_normal=3,
        max_study_hour=48.0,
        rng=np.random.default_rng(0),
    )
    died = labels > 0.5
    assert link.abnormal[died].mean() == pytest.approx(0.8, abs=0.01)
    assert link.abnormal[~died].mean() == pytest.approx(0.2, abs=0.01)
    assert (link.study_hours >= 0).all()
    assert (link.study_hours < 48.0).all()
    assert link.image_index[link.abnormal].max() == 6
    assert link.image_index[~link.abnormal].max() == 2
    assert link.image_index.min() == 0


# --- Fine-tuning a tiny model: only the branch moves, image-free outputs do not ---


def _finetune(checkpoint: Path, output: Path) -> Path:
    settings = ImageBranchSettings(
        data_dir=DEMO_DIR,
        checkpoint=checkpoint,
        output=output,
        imaging_checkpoint=WEIGHTS / "imaging.pt",
        xray_path=XRAY_SAMPLE,
        epochs=2,
        hours_per_stay=2,
        batch_size=16,
    )
    return finetune_image_branch(settings).checkpoint


@pytest.fixture(scope="module")
def tuned(tiny_run: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("branch")
    return _finetune(tiny_run.checkpoint, folder / "a.pt"), _finetune(
        tiny_run.checkpoint, folder / "b.pt"
    )


def test_finetune_is_deterministic(tuned: tuple[Path, Path]):
    a = torch.load(tuned[0], weights_only=True)["state_dict"]
    b = torch.load(tuned[1], weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_finetune_moves_only_the_branch(tiny_run: TrainResult, tuned: tuple[Path, Path]):
    before = torch.load(tiny_run.checkpoint, weights_only=True)["state_dict"]
    payload = torch.load(tuned[0], weights_only=True)
    after = payload["state_dict"]
    moved = {key for key in before if not torch.equal(before[key], after[key])}
    assert moved
    assert all(_is_branch(key) for key in moved), moved
    for i in range(2):
        assert after[f"members.{i}.image_out.weight"].abs().sum() > 0
        # image_out.bias acts without images too: it must not move.
        assert torch.equal(
            after[f"members.{i}.image_out.bias"], before[f"members.{i}.image_out.bias"]
        )
    branch = payload["meta"]["image_branch"]
    assert branch["fixture"] is True
    assert "synthetic" in branch["clinical_evidence"]
    assert branch["frozen_state_sha256"] == frozen_state_sha256(before)
    assert branch["frozen_state_sha256"] == frozen_state_sha256(after)
    imaging = (WEIGHTS / "imaging.pt").read_bytes()
    assert branch["imaging_checkpoint_sha256"] == hashlib.sha256(imaging).hexdigest()
    # The base model's metadata (split, calibration, metrics) is carried over unchanged.
    base_meta = torch.load(tiny_run.checkpoint, weights_only=True)["meta"]
    assert {k: v for k, v in payload["meta"].items() if k != "image_branch"} == base_meta


@pytest.mark.parametrize("explain", [False, True])
def test_finetuned_outputs_without_images_are_bit_identical(
    tiny_run: TrainResult, tuned: tuple[Path, Path], explain: bool
):
    base, meta = load_checkpoint(tiny_run.checkpoint)
    net, _ = load_checkpoint(tuned[0])
    config = NetConfig(**meta["net_config"])
    no_images = example_inputs(config, batch=4, images=False, seed=1)
    mixed = example_inputs(config, batch=4, images=True, seed=1)  # row 0 has no image

    def run(model: RiskModel, inputs: NetInputs) -> tuple[torch.Tensor, ...]:
        return model.explain(inputs) if explain else model(*inputs)

    with torch.no_grad():
        for a, b in zip(run(base, no_images), run(net, no_images), strict=True):
            assert torch.equal(a, b)
        for a, b in zip(run(base, mixed), run(net, mixed), strict=True):
            assert torch.equal(a[0], b[0])
        assert not torch.equal(run(base, mixed)[0][1:], run(net, mixed)[0][1:])


# --- The shipped models ---


@pytest.fixture(scope="module")
def demo_windows() -> tuple[torch.Tensor, ...]:
    """Real windows of 32 test-split stays at 48 h (the demo stays are the test split)."""
    stays, _ = load_stays(DEMO_DIR)
    batch = make_windows([s.arrays() for s in stays[:32]], [48] * 32)
    return tuple(
        torch.from_numpy(a)
        for a in (batch.values, batch.mask, batch.delta_hours, batch.statics, batch.static_mask)
    )


@pytest.fixture(scope="module")
def study_embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings from the shipped imaging model of 16 pneumonia and 16 normal X-rays of
    PneumoniaMNIST's official validation split (never trained on)."""
    xray = load_xray(XRAY_SAMPLE, seed=2024)
    imaging = _load(SHIPPED / "imaging" / "1" / "model.pt")
    with torch.no_grad():
        embedding = imaging(torch.from_numpy(xray.val_images))[2]
    positive = torch.from_numpy(xray.val_labels > 0.5)
    return embedding[positive], embedding[~positive]


def _without_images(n: int, config: NetConfig) -> tuple[torch.Tensor, ...]:
    k, e = config.max_images, config.image_dim
    return torch.zeros(n, k, e), torch.zeros(n, k), torch.zeros(n, k)


def _shipped_config() -> NetConfig:
    card = json.loads((SHIPPED / MODEL_NAME / "model_card.json").read_text())
    return NetConfig(**card["net_config"])


def test_shipped_checkpoint_and_card_say_fixture():
    payload = torch.load(WEIGHTS / "deterioration.pt", weights_only=True)
    branch = payload["meta"]["image_branch"]
    assert branch["fixture"] is True
    assert branch["frozen_state_sha256"] == frozen_state_sha256(payload["state_dict"])
    imaging = hashlib.sha256((WEIGHTS / "imaging.pt").read_bytes()).hexdigest()
    assert branch["imaging_checkpoint_sha256"] == imaging
    card = json.loads((SHIPPED / MODEL_NAME / "model_card.json").read_text())
    assert card["image_branch"] == branch
    card_md = (SHIPPED / MODEL_NAME / "model_card.md").read_text()
    assert "synthetic test-fixture linkage" in card_md
    assert "no clinical evidence" in card_md
    assert imaging in card_md


@pytest.mark.parametrize(("name", "rows"), [(MODEL_NAME, 32), (EXPLAIN_MODEL_NAME, 4)])
def test_shipped_outputs_without_images_equal_the_pre_finetune_model(
    demo_windows: tuple[torch.Tensor, ...], name: str, rows: int
):
    """The shipped module against itself with ``image_out.weight`` zeroed, which is the
    model before the fine-tune: every other entry is frozen (checked above by hash), and
    with ``W_o = 0`` the other branch parameters cannot reach any output."""
    served = _load(SHIPPED / name / "1" / "model.pt")
    before = _load(SHIPPED / name / "1" / "model.pt")
    with torch.no_grad():
        zeroed = 0
        for key, parameter in before.named_parameters():
            if key.endswith("image_out.weight"):
                parameter.zero_()
                zeroed += 1
        assert zeroed == 5
        inputs = (*(t[:rows] for t in demo_windows), *_without_images(rows, _shipped_config()))
        for a, b in zip(served(*inputs), before(*inputs), strict=True):
            assert torch.equal(a, b)


def test_a_study_changes_the_shipped_risk(
    demo_windows: tuple[torch.Tensor, ...], study_embeddings: tuple[torch.Tensor, torch.Tensor]
):
    """Every window with every study (fixture pairing): pneumonia raises the risk, a
    normal study lowers it and moves it less; image-free rows in the batch do not move."""
    config = _shipped_config()
    served = _load(SHIPPED / MODEL_NAME / "1" / "model.pt")
    n = demo_windows[0].shape[0]
    with torch.no_grad():
        baseline = served(*demo_windows, *_without_images(n, config))[0][:, 0]
        change: dict[str, torch.Tensor] = {}
        for kind, pool in zip(("abnormal", "normal"), study_embeddings, strict=True):
            m = pool.shape[0]
            windows = tuple(t.repeat_interleave(m, dim=0) for t in demo_windows)
            images = image_inputs(pool.repeat(n, 1), torch.full((n * m,), STUDY_AGE_HOURS), 4)
            images[2][::7] = 0.0  # some rows without their study
            risk = served(*windows, *images)[0][:, 0]
            before = baseline.repeat_interleave(m)
            absent = images[2][:, 0] == 0.0
            assert torch.equal(risk[absent], before[absent])
            change[kind] = (risk - before)[~absent]
    assert change["abnormal"].mean() > 0.02
    assert (change["abnormal"] > 0).float().mean() > 0.8
    assert change["normal"].mean() < 0
    assert change["normal"].abs().mean() < change["abnormal"].abs().mean()


def test_cli_rejects_a_bad_fixture_probability():
    result = CliRunner().invoke(train_app, ["image-branch", "--abnormal-probability", "1.5"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "abnormal-probability" in lines[0]
