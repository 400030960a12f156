"""Imaging model: a tiny seeded training on synthetic data, its determinism, the export
(TorchScript parity, config.pbtxt contract, the Python-backend wrapper), the shipped
artifacts and the CLI."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from models.cli import export_app, train_app
from models.common.provenance import code_version
from models.common.torchscript import PARITY_TOLERANCE
from models.imaging.export import (
    IMAGING_EXPORT_SOURCES,
    IMAGING_MODEL_NAME,
    class_threshold_of,
    example_images,
    export_imaging,
    imaging_tensor_specs,
    load_imaging_checkpoint,
    render_config,
)
from models.imaging.network import ImagingConfig
from models.imaging.settings import ImagingSettings
from models.imaging.train import ImagingTrainResult, train_imaging
from tests.models.test_export import _config_json, _Error, _fake_pb_utils, _Tensor, parse_pbtxt
from vigil.errors import ModelError

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "triton_repo" / IMAGING_MODEL_NAME
OUTPUTS = ("mask_probability", "class_probability", "embedding", "cam")


@pytest.fixture(autouse=True)
def _no_developer_imaging_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("VIGIL_IMAGING_"):
            monkeypatch.delenv(name)


def _synthetic_data(folder: Path) -> tuple[Path, Path]:
    """Five 'patients' of ten 48x48 patches with bright discs as lesions; 60 X-rays."""
    rng = np.random.default_rng(0)
    n = 50
    yy, xx = np.mgrid[:48, :48]
    images = rng.random((n, 1, 48, 48)).astype(np.float32) * 0.3
    masks = np.zeros((n, 1, 48, 48), dtype=np.uint8)
    for i in range(n):
        if i % 5:
            cy, cx, r = rng.integers(10, 38), rng.integers(10, 38), rng.integers(3, 7)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
            masks[i, 0] = disc
            images[i, 0][disc] += 0.6
    ct = folder / "ct.npz"
    np.savez(ct, images=images, masks=masks)
    labels = (np.arange(60) % 2).astype(np.uint8)[:, None]
    xrays = rng.integers(0, 120, (60, 28, 28)).astype(np.uint8) + labels[:, :, None] * 100
    xray = folder / "xray.npz"
    np.savez(
        xray,
        train_images=xrays[:40],
        train_labels=labels[:40],
        val_images=xrays[40:],
        val_labels=labels[40:],
    )
    return ct, xray


def _tiny_settings(folder: Path, name: str) -> ImagingSettings:
    ct, xray = _synthetic_data(folder)
    return ImagingSettings(
        ct_path=ct,
        xray_path=xray,
        checkpoint=folder / name,
        base_channels=2,
        test_patients=1,
        validation_patients=1,
        pretrain_epochs=1,
        epochs=2,
        ct_repeats=1,
        xray_per_epoch=8,
        batch_size=8,
    )


@pytest.fixture(scope="module")
def tiny_imaging(tmp_path_factory: pytest.TempPathFactory) -> ImagingTrainResult:
    return train_imaging(_tiny_settings(tmp_path_factory.mktemp("imaging"), "tiny.pt"))


@pytest.fixture(scope="module")
def exported_imaging(
    tiny_imaging: ImagingTrainResult, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    repo = tmp_path_factory.mktemp("imaging_repo")
    export_imaging(tiny_imaging.checkpoint, repo)
    return repo / IMAGING_MODEL_NAME


def _load(path: Path) -> torch.jit.ScriptModule:
    return torch.jit.load(str(path))  # type: ignore[no-untyped-call, no-any-return]


def test_training_is_deterministic(tiny_imaging: ImagingTrainResult, tmp_path: Path):
    again = train_imaging(_tiny_settings(tmp_path, "again.pt"))
    first = torch.load(tiny_imaging.checkpoint, weights_only=True)["state_dict"]
    second = torch.load(again.checkpoint, weights_only=True)["state_dict"]
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert again.metrics == tiny_imaging.metrics
    assert again.threshold == tiny_imaging.threshold


def test_training_reports_the_metrics(tiny_imaging: ImagingTrainResult):
    _, meta = load_imaging_checkpoint(tiny_imaging.checkpoint)
    split = meta["split"]
    assert not set(split["test"]) & set(split["train"])
    assert not set(split["validation"]) & set(split["train"])
    for part in ("validation", "test"):
        for point in ("operating_point", "at_0.5"):
            entry = tiny_imaging.metrics[part][point]
            assert {"dice", "iou", "lesion_recall", "false_positives_per_patch"} <= set(entry)
    assert tiny_imaging.metrics["test"]["operating_point"]["threshold"] == tiny_imaging.threshold
    assert 0.0 <= tiny_imaging.metrics["pneumonia"]["official_val_auroc"] <= 1.0
    assert meta["pretrain_history"]
    assert meta["history"]


def test_reloaded_torchscript_matches_eager(
    tiny_imaging: ImagingTrainResult, exported_imaging: Path
):
    net, meta = load_imaging_checkpoint(tiny_imaging.checkpoint)
    images = example_images(ImagingConfig(**meta["config"]), batch=5, seed=3)
    with torch.no_grad():
        eager, served = net(images), _load(exported_imaging / "1" / "model.pt")(images)
    for a, b in zip(eager, served, strict=True):
        assert float((a - b).abs().max()) <= PARITY_TOLERANCE


def test_config_pbtxt_is_the_exporters_contract(
    tiny_imaging: ImagingTrainResult, exported_imaging: Path
):
    _, meta = load_imaging_checkpoint(tiny_imaging.checkpoint)
    config = ImagingConfig(**meta["config"])
    text = (exported_imaging / "config.pbtxt").read_text()
    parsed = parse_pbtxt(text)
    inputs, outputs = imaging_tensor_specs(config)
    assert parsed["input"] == [("image", "TYPE_FP32", (1, 64, 64))]
    assert parsed["input"] == [(s.name, s.data_type, s.dims) for s in inputs]
    assert parsed["output"] == [(s.name, s.data_type, s.dims) for s in outputs]
    assert [n for n, _, _ in parsed["output"]] == list(OUTPUTS)
    assert dict((n, d) for n, _, d in parsed["output"])["embedding"] == (64,)
    assert parsed["backend"] == "python"
    assert parsed["dynamic_batching"]
    threshold = re.search(r'key: "mask_threshold"\s+value: \{ string_value: "([\d.e-]+)" \}', text)
    assert threshold is not None
    assert float(threshold.group(1)) == tiny_imaging.threshold
    with torch.no_grad():
        results = _load(exported_imaging / "1" / "model.pt")(example_images(config, batch=2))
    for (name, _, dims), result in zip(parsed["output"], results, strict=True):
        assert result.dtype == torch.float32, name
        assert tuple(result.shape[1:]) == dims, name


def test_python_backend_model_agrees_and_isolates_bad_requests(
    tiny_imaging: ImagingTrainResult, exported_imaging: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    spec = importlib.util.spec_from_file_location(
        "served_imaging", exported_imaging / "1" / "model.py"
    )
    assert spec is not None
    assert spec.loader is not None
    served = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(served)
    model = served.TritonPythonModel()
    model.initialize(
        {
            "model_config": _config_json((exported_imaging / "config.pbtxt").read_text()),
            "model_repository": str(exported_imaging),
            "model_version": "1",
            "model_instance_kind": "CPU",
        }
    )
    net, meta = load_imaging_checkpoint(tiny_imaging.checkpoint)
    images = example_images(ImagingConfig(**meta["config"]), batch=3).numpy()
    good_a, good_b = {"image": images[:2]}, {"image": images[2:]}
    bad: list[dict[str, Any]] = [
        {"image": images[:1].astype(np.float64)},
        {"image": images[:1, :, :32]},
        {},
        {"image": np.full_like(images[:1], np.nan)},
    ]
    requests = [
        {k: _Tensor(k, v) for k, v in r.items()} for r in (good_a, bad[0], good_b, *bad[1:])
    ]
    responses = model.execute(requests)
    for response in [responses[1], *responses[3:]]:
        assert isinstance(response.error, _Error)
        assert response.error.code == "INVALID_ARG"
    for response, request in ((responses[0], good_a), (responses[2], good_b)):
        assert response.error is None
        with torch.no_grad():
            eager = net(torch.from_numpy(request["image"]))
        for name, tensor in zip(OUTPUTS, eager, strict=True):
            np.testing.assert_allclose(response.outputs[name], tensor.numpy(), atol=1e-5)
            assert response.outputs[name].dtype == np.float32


def test_model_card_records_the_run(exported_imaging: Path):
    card = json.loads((exported_imaging / "model_card.json").read_text())
    assert card["code_version"]["source_files"] == list(IMAGING_EXPORT_SOURCES)
    assert (
        card["code_version"]["source_sha256"]
        == code_version(IMAGING_EXPORT_SOURCES)["source_sha256"]
    )
    for key in ("data_sha256", "split", "split_method", "settings", "metrics", "threshold"):
        assert key in card
    blob = (exported_imaging / "1" / "model.pt").read_bytes()
    assert card["model_pt_sha256"] == hashlib.sha256(blob).hexdigest()
    assert "Lesion recall" in (exported_imaging / "model_card.md").read_text()


def test_shipped_artifacts_match_the_exporter():
    card = json.loads((SHIPPED / "model_card.json").read_text())
    net, meta = load_imaging_checkpoint(REPO / "models" / "weights" / "imaging.pt")
    config = ImagingConfig(**meta["config"])
    expected = render_config(
        config,
        mask_threshold=float(meta["threshold"]),
        class_threshold=class_threshold_of(meta),
        lesion_peak_threshold=float(meta["lesion_peak_threshold"]),
        max_batch_size=card["max_batch_size"],
    )
    assert (SHIPPED / "config.pbtxt").read_text() == expected
    source = (REPO / "models" / "common" / "triton_model.py").read_text()
    assert (SHIPPED / "1" / "model.py").read_text() == source
    model_pt = SHIPPED / "1" / "model.pt"
    assert hashlib.sha256(model_pt.read_bytes()).hexdigest() == card["model_pt_sha256"]
    assert card["metrics"] == meta["metrics"]
    images = example_images(config, batch=4, seed=9)
    with torch.no_grad():
        for a, b in zip(net(images), _load(model_pt)(images), strict=True):
            assert float((a - b).abs().max()) <= PARITY_TOLERANCE


def test_cli_rejects_bad_arguments(tmp_path: Path):
    result = CliRunner().invoke(train_app, ["imaging", "--epochs", "0"])
    assert result.exit_code == 2
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
    missing = CliRunner().invoke(
        export_app,
        ["imaging", "--checkpoint", str(tmp_path / "none.pt"), "--repo-dir", str(tmp_path)],
    )
    assert missing.exit_code == 1
    assert "cannot load imaging checkpoint" in missing.output
    kind = CliRunner().invoke(export_app, ["imaging", "--instance-kind", "KIND_TPU"])
    assert kind.exit_code == 2


def test_cross_validation_report_counts_and_intervals(
    tiny_imaging: ImagingTrainResult, tmp_path: Path
):
    from models.imaging.evaluate import evaluate_imaging
    from models.imaging.settings import ImagingEvalSettings

    meta = torch.load(tiny_imaging.checkpoint, weights_only=True)["meta"]
    (tmp_path / "imaging_fold0.pt").write_bytes(tiny_imaging.checkpoint.read_bytes())
    settings = ImagingEvalSettings(
        cv_dir=tmp_path,
        folds=1,
        ct_path=Path(meta["settings"]["ct_path"]),
        xray_path=Path(meta["settings"]["xray_path"]),
        report=tmp_path / "report.json",
        resamples=50,
    )
    report = evaluate_imaging(settings)
    assert json.loads(settings.report.read_text()) == report
    op = report["ct"]["operating_point"]
    test = meta["metrics"]["test"]["operating_point"]
    # Pooled counts over the fold's test patients equal the training run's own report.
    assert op["lesions"] == test["lesions"]
    assert op["found"] == test["lesions_found"]
    assert op["false_positives"] == test["false_positive_components"]
    assert op["dice"] == pytest.approx(test["dice"], abs=1e-4)
    low, high = op["dice_ci95"]
    assert low <= high
    assert report["folds"][0]["official_val"]["n"] == meta["metrics"]["pneumonia"]["official_val_n"]
    with pytest.raises(ModelError, match="missing cross-validation"):
        evaluate_imaging(settings.model_copy(update={"folds": 2}))
