"""OOD detector: Gaussian fit, distances, threshold, shifts, export parity, contract."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from models.cli import export_app, train_app
from models.deterioration.export import example_inputs, load_checkpoint, tensor_specs
from models.deterioration.network import NetConfig
from models.deterioration.train import TrainResult
from models.ood.detector import (
    OUTPUT_NAMES,
    OODDetector,
    fit_gaussians,
    min_distance,
    percentile_threshold,
)
from models.ood.export import (
    OOD_MODEL_NAME,
    PARITY_TOLERANCE,
    build_detector,
    export_ood,
    ood_tensor_specs,
    render_config,
)
from models.ood.inputs import InputChannel, bucket_arrays, fit_buckets
from models.ood.rebind import rebind_ood
from models.ood.settings import OODSettings
from models.ood.shifts import MONITOR_CODES, SHIFTS, apply_shift
from models.ood.windows import ChannelScorer, window_features
from streams.core.features import SERIES_CODES
from streams.datasets.physionet2012 import Stay, read_stay
from tests.models.conftest import DEMO_DIR
from tests.models.test_export import parse_pbtxt
from vigil.errors import ModelError

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "triton_repo" / OOD_MODEL_NAME
INDEX = {code: i for i, code in enumerate(SERIES_CODES)}


# --- Gaussian fit, distance, threshold ---


def _two_gaussians(
    n: int, seed: int = 0
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0, 0.0], [3.0, -2.0, 1.0]])
    a = np.array([[1.0, 0.0, 0.0], [0.8, 0.5, 0.0], [-0.3, 0.2, 2.0]])
    covariance = a @ a.T
    labels = rng.integers(0, 2, size=n)
    x = means[labels] + rng.standard_normal((n, 3)) @ a.T
    return x, labels, means, covariance


def test_fit_recovers_means_and_tied_covariance():
    x, labels, means, covariance = _two_gaussians(40_000)
    fit = fit_gaussians(x, labels)
    assert fit.classes == (0, 1)
    assert sum(fit.counts) == x.shape[0]
    np.testing.assert_allclose(fit.means, means, atol=0.05)
    np.testing.assert_allclose(fit.covariance, covariance, atol=0.06)
    # The whitening matrix really whitens the fitted covariance.
    np.testing.assert_allclose(
        fit.whitening @ fit.covariance @ fit.whitening.T, np.eye(3), atol=1e-9
    )


def test_distance_is_min_over_classes_of_mahalanobis():
    x, labels, _, _ = _two_gaussians(2_000, seed=1)
    fit = fit_gaussians(x, labels)
    points = np.array([[0.0, 0.0, 0.0], [3.0, -2.0, 1.0], [10.0, 10.0, -10.0]])
    precision = np.linalg.inv(fit.covariance)
    expected = np.min(
        [
            np.sqrt(np.einsum("nd,de,ne->n", points - mu, precision, points - mu))
            for mu in fit.means
        ],
        axis=0,
    )
    np.testing.assert_allclose(min_distance(fit, points), expected, rtol=1e-9)
    assert min_distance(fit, fit.means).max() < 1e-9  # each class centre is at distance 0


def test_distance_grows_with_shift():
    x, labels, _, _ = _two_gaussians(5_000, seed=2)
    fit = fit_gaussians(x, labels)
    inside = min_distance(fit, x[:500])
    for step in (2.0, 5.0, 10.0):
        shifted = min_distance(fit, x[:500] + np.array([step, step, -step]))
        assert np.median(shifted) > np.median(inside)
    far = min_distance(fit, x[:500] + 10.0)
    assert (far > inside.max()).mean() > 0.95


def test_fit_rejects_bad_shapes():
    with pytest.raises(ValueError, match="features"):
        fit_gaussians(np.zeros((4, 2)), np.zeros(3))


def test_percentile_threshold_flags_the_tail():
    distances = np.arange(1, 1001, dtype=np.float64)
    threshold = percentile_threshold(distances, 99.0)
    assert threshold == pytest.approx(990.01)
    assert int((distances > threshold).sum()) == 10  # strictly above: 1 %
    for bad in (0.0, 100.0, 120.0):
        with pytest.raises(ValueError, match="percentile"):
            percentile_threshold(distances, bad)
    with pytest.raises(ValueError, match="finite"):
        percentile_threshold(np.array([1.0, np.nan]), 50.0)


# --- The served module ---


def _detector(tiny_run: TrainResult) -> tuple[OODDetector, ChannelScorer, NetConfig]:
    """A detector fitted on demo windows of the tiny run, and its numpy reference."""
    net, meta = load_checkpoint(tiny_run.checkpoint)
    config = NetConfig(**meta["net_config"])
    stays = [read_stay(p) for p in sorted((DEMO_DIR / "set-a").glob("*.txt"))[:60]]
    minutes = [30, 60, 120, 360, 720, 1440, 2880]
    train = window_features(net, config, stays[:40], minutes)
    val = window_features(net, config, stays[40:], minutes)
    assert train.representation is not None
    assert val.representation is not None
    labels = np.arange(train.representation.shape[0]) % 2
    fit = fit_gaussians(train.representation, labels, ridge_fraction=1e-2)
    threshold = float(np.median(min_distance(fit, val.representation)))
    buckets = fit_buckets(
        train.inputs, train.hours, val.inputs, val.hours, edges=(2, 12, 48), percentile=90.0
    )
    log_scaled = net.members[0].log_scaled
    assert isinstance(log_scaled, torch.Tensor)
    detector = OODDetector(net, fit, threshold, InputChannel(bucket_arrays(buckets), log_scaled))
    return detector.eval(), ChannelScorer(fit, threshold, buckets), config


def _demo_inputs(config: NetConfig, minute: int, n: int = 12) -> tuple[torch.Tensor, ...]:
    stays = [read_stay(p) for p in sorted((DEMO_DIR / "set-a").glob("*.txt"))[100 : 100 + n]]
    from models.deterioration.train import make_windows

    batch = make_windows([s.arrays() for s in stays], [minute // 60] * n)
    return batch.tensors(config.max_images, config.image_dim)


def test_detector_matches_numpy_reference(tiny_run: TrainResult):
    detector, scorer, config = _detector(tiny_run)
    stays = [read_stay(p) for p in sorted((DEMO_DIR / "set-a").glob("*.txt"))[100:110]]
    net = detector.net
    for hour in (1, 3, 24, 48):
        windows = window_features(net, config, stays, [60 * hour])
        inputs = _demo_inputs(config, 60 * hour, n=10)
        with torch.no_grad():
            out = dict(zip(OUTPUT_NAMES, detector(*inputs), strict=True))
        assert all(v.shape == (10, 1) for v in out.values())
        assert out["ood"].dtype == torch.bool
        expected = scorer.scores(windows)
        np.testing.assert_allclose(
            out["representation_distance"][:, 0].numpy() / scorer.representation_threshold,
            expected["representation"],
            rtol=1e-3,
        )
        np.testing.assert_allclose(
            out["input_distance"][:, 0].numpy() / out["input_threshold"][:, 0].numpy(),
            expected["input"],
            rtol=1e-3,
        )
        np.testing.assert_allclose(out["distance"][:, 0].numpy(), expected["combined"], rtol=1e-3)
        # The flag is either channel's, and the combined distance is above 1 exactly then.
        assert torch.equal(out["ood"], out["representation_ood"] | out["input_ood"])
        assert torch.equal(out["input_ood"], out["input_distance"] > out["input_threshold"])
        assert torch.equal(out["ood"], out["distance"] > 1.0)


def test_input_channel_flags_a_window_missing_a_parameter(tiny_run: TrainResult):
    detector, _, config = _detector(tiny_run)
    values, mask, delta, *rest = _demo_inputs(config, 48 * 60, n=12)
    hr = INDEX["HR"]
    with torch.no_grad():
        before = detector(values, mask, delta, *rest)[3][:, 0]
        mask = mask.clone()
        values = values.clone()
        delta = delta.clone()
        mask[:, 24:, hr] = 0.0  # the monitor stops half-way
        values[:, 24:, hr] = 0.0
        delta[:, 24:, hr] = torch.arange(1, 25, dtype=torch.float32)
        after = detector(values, mask, delta, *rest)[3][:, 0]
    assert float(after.median()) > float(before.median())


def test_torchscript_detector_matches_eager(tiny_run: TrainResult, tmp_path: Path):
    detector, _, config = _detector(tiny_run)
    path = tmp_path / "ood.pt"
    torch.jit.save(torch.jit.script(detector), str(path))
    module = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
    for images in (False, True):
        inputs = example_inputs(config, batch=5, images=images, seed=7)
        with torch.no_grad():
            eager, served = detector(*inputs), module(*inputs)
        for a, b in zip(eager, served, strict=True):
            if a.dtype == torch.bool:
                assert torch.equal(a, b)
            else:
                assert float((a - b).abs().max()) <= PARITY_TOLERANCE


# --- Shifts ---


@pytest.fixture(scope="module")
def demo_stay() -> Stay:
    stays = sorted((DEMO_DIR / "set-a").glob("*.txt"))
    for path in stays:
        stay = read_stay(path)
        codes = set(stay.code_index.tolist())
        if {INDEX["Temp"], INDEX["FiO2"], INDEX["HR"]} <= codes:
            return stay
    raise AssertionError("no demo stay with Temp, FiO2 and HR")


def _of(stay: Stay, code: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    sel = stay.code_index == INDEX[code]
    return stay.minutes[sel], stay.values[sel]


def test_unit_errors_are_artifacts_unless_unfiltered(demo_stay: Stay):
    for shift, code in (("temperature_fahrenheit", "Temp"), ("fio2_percent", "FiO2")):
        filtered = apply_shift(demo_stay, shift)
        assert _of(filtered, code)[1].size == 0  # the stream's range check drops them
        raw = apply_shift(demo_stay, shift, filter_artifacts=False)
        _, before = _of(demo_stay, code)
        factor, offset = (9 / 5, 32.0) if code == "Temp" else (100.0, 0.0)
        np.testing.assert_allclose(_of(raw, code)[1], before * factor + offset)
    assert _of(demo_stay, "Temp")[1].size > 0  # the input is not modified


def test_stuck_hr_repeats_the_last_reading(demo_stay: Stay):
    stuck = apply_shift(demo_stay, "stuck_hr", onset_hours=12)
    minutes, values = _of(stuck, "HR")
    before_m, before_v = _of(demo_stay, "HR")
    last = before_v[before_m <= 720][np.argmax(before_m[before_m <= 720])]
    after = minutes > 720
    assert after.sum() >= 36
    assert np.all(values[after] == last)
    np.testing.assert_array_equal(np.diff(minutes[after]), 60)


def test_dropout_stops_the_monitor_only(demo_stay: Stay):
    dropped = apply_shift(demo_stay, "vitals_dropout", onset_hours=10)
    monitor = np.isin(dropped.code_index, [INDEX[c] for c in MONITOR_CODES])
    assert not (monitor & (dropped.minutes > 600)).any()
    others = ~np.isin(demo_stay.code_index, [INDEX[c] for c in MONITOR_CODES])
    assert (~monitor).sum() == others.sum()


def test_population_drift_and_unknown_shift(demo_stay: Stay):
    drifted = apply_shift(demo_stay, "population_drift")
    age = demo_stay.descriptors["Age"]
    assert age is not None
    assert drifted.descriptors["Age"] == pytest.approx(age + 20.0)
    assert set(SHIFTS) >= {"stuck_hr", "vitals_dropout"}
    with pytest.raises(ValueError, match="unknown shift"):
        apply_shift(demo_stay, "solar_flare")


# --- Fit, export and the Python-backend wrapper on the tiny run ---


@pytest.fixture(scope="module")
def ood_run(tiny_run: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.ood.train import fit_ood

    out = tmp_path_factory.mktemp("ood") / "ood.pt"
    fit_ood(OODSettings(data_dir=DEMO_DIR, checkpoint=tiny_run.checkpoint, output=out))
    return out


@pytest.fixture(scope="module")
def ood_repo(
    tiny_run: TrainResult, ood_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    repo = tmp_path_factory.mktemp("ood_repo")
    export_ood(tiny_run.checkpoint, ood_run, repo)
    return repo


def test_fit_uses_the_training_split_and_records_it(tiny_run: TrainResult, ood_run: Path):
    payload = torch.load(ood_run, weights_only=True)
    meta = payload["meta"]
    _, det_meta = load_checkpoint(tiny_run.checkpoint)
    assert meta["split"] == det_meta["split"]
    assert sum(meta["counts"]) == len(det_meta["split"]["train"]) * len(meta["fit_hours"])
    assert meta["threshold"] == 1.0  # of the combined score
    assert meta["representation_threshold"] > 0
    edges, thresholds = meta["input_hour_bucket_edges"], meta["input_thresholds"]
    assert len(edges) == len(thresholds) >= 1
    assert edges[-1] == 48
    assert all(t > 0 for t in thresholds)
    assert payload["input_whitening"].shape[0] == len(edges)
    rates = meta["metrics"]["validation"]["combined"]["flagged_fraction_by_hour"]
    assert set(rates) >= {"0.5h", "1h", "6h", "48h"}
    timeline = meta["metrics"]["timeline"]
    assert len(timeline["scoring_hours"]) == 96
    assert len(timeline["unshifted"]["flag_rate"]["combined"]) == 96


def test_export_contract_and_card(tiny_run: TrainResult, ood_run: Path, ood_repo: Path):
    _, det_meta = load_checkpoint(tiny_run.checkpoint)
    config = NetConfig(**det_meta["net_config"])
    text = (ood_repo / OOD_MODEL_NAME / "config.pbtxt").read_text()
    parsed = parse_pbtxt(text)
    assert re.search(rf'^name: "{OOD_MODEL_NAME}"$', text, re.M)
    deterioration_inputs = [(s.name, s.data_type, s.dims) for s in tensor_specs(config)[0]]
    assert parsed["input"] == deterioration_inputs  # the worker sends the same request
    assert parsed["output"][:2] == [("distance", "TYPE_FP32", (1,)), ("ood", "TYPE_BOOL", (1,))]
    assert [name for name, _, _ in parsed["output"]] == list(OUTPUT_NAMES)
    card = json.loads((ood_repo / OOD_MODEL_NAME / "model_card.json").read_text())

    def parameter(key: str) -> str:
        found = re.search(rf'key: "{key}"\s+value: {{ string_value: "([^"]+)"', text)
        assert found is not None
        return found.group(1)

    assert float(parameter("threshold")) == card["threshold"] == 1.0
    assert float(parameter("representation_threshold")) == card["representation_threshold"]
    edges = [float(e) for e in parameter("input_hour_bucket_edges").split(",")]
    thresholds = [float(t) for t in parameter("input_thresholds").split(",")]
    assert edges == card["input_hour_bucket_edges"]
    assert thresholds == card["input_thresholds"]
    blob = (ood_repo / OOD_MODEL_NAME / "1" / "model.pt").read_bytes()
    assert hashlib.sha256(blob).hexdigest() == card["model_pt_sha256"]
    assert text == render_config(
        config,
        representation_threshold=card["representation_threshold"],
        input_edges=edges,
        input_thresholds=thresholds,
        percentile=card["percentile"],
    )


def _fake_pb_utils() -> types.ModuleType:
    from tests.models.test_export import _Error, _Response, _Tensor

    module = types.ModuleType("triton_python_backend_utils")
    dtypes = {"TYPE_FP32": np.float32, "TYPE_BOOL": np.bool_}
    module.triton_string_to_numpy = dtypes.__getitem__  # type: ignore[attr-defined]
    module.get_input_tensor_by_name = lambda request, name: request.get(name)  # type: ignore[attr-defined]
    module.Tensor = _Tensor  # type: ignore[attr-defined]
    module.InferenceResponse = _Response  # type: ignore[attr-defined]
    module.TritonError = _Error  # type: ignore[attr-defined]
    return module


def test_python_backend_model_matches_eager(
    tiny_run: TrainResult, ood_run: Path, ood_repo: Path, monkeypatch: pytest.MonkeyPatch
):
    from tests.models.test_export import _config_json, _Error, _Tensor

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    model_dir = ood_repo / OOD_MODEL_NAME
    spec = importlib.util.spec_from_file_location("served_ood", model_dir / "1" / "model.py")
    assert spec is not None
    assert spec.loader is not None
    served = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(served)
    model = served.TritonPythonModel()
    model.initialize(
        {
            "model_config": _config_json((model_dir / "config.pbtxt").read_text()),
            "model_repository": str(model_dir),
            "model_version": "1",
            "model_instance_kind": "CPU",
        }
    )
    detector, _ = build_detector(tiny_run.checkpoint, ood_run)
    _, det_meta = load_checkpoint(tiny_run.checkpoint)
    config = NetConfig(**det_meta["net_config"])
    names = [s.name for s in ood_tensor_specs(config)[0]]
    good = dict(zip(names, (t.numpy() for t in example_inputs(config, batch=3)), strict=True))
    bad = {**good, "mask": good["mask"][:, :5]}
    responses = model.execute([{k: _Tensor(k, v) for k, v in r.items()} for r in (good, bad)])
    assert isinstance(responses[1].error, _Error)
    assert responses[0].error is None
    with torch.no_grad():
        eager = detector(*(torch.from_numpy(good[n]) for n in names))
    for name, tensor in zip(OUTPUT_NAMES, eager, strict=True):
        served_output = responses[0].outputs[name]
        if tensor.dtype == torch.bool:
            assert served_output.dtype == np.bool_
            np.testing.assert_array_equal(served_output, tensor.numpy())
        else:
            assert served_output.dtype == np.float32
            np.testing.assert_allclose(served_output, tensor.numpy(), rtol=1e-5)


def test_export_refuses_a_foreign_or_broken_fit(
    tiny_run: TrainResult, ood_run: Path, tmp_path: Path
):
    payload = torch.load(ood_run, weights_only=True)
    payload["meta"]["deterioration_checkpoint_sha256"] = "0" * 64
    torch.save(payload, tmp_path / "foreign.pt")
    with pytest.raises(ModelError, match="another checkpoint"):
        build_detector(tiny_run.checkpoint, tmp_path / "foreign.pt")
    torch.save({"means": torch.zeros(1)}, tmp_path / "broken.pt")
    with pytest.raises(ModelError, match="cannot load OOD checkpoint"):
        build_detector(tiny_run.checkpoint, tmp_path / "broken.pt")


def test_shipped_ood_model_matches_the_exporter():
    card = json.loads((SHIPPED / "model_card.json").read_text())
    det_card = json.loads((REPO / "triton_repo" / "deterioration" / "model_card.json").read_text())
    config = NetConfig(**det_card["net_config"])
    expected = render_config(
        config,
        representation_threshold=card["representation_threshold"],
        input_edges=card["input_hour_bucket_edges"],
        input_thresholds=card["input_thresholds"],
        percentile=card["percentile"],
        max_batch_size=card["max_batch_size"],
    )
    assert (SHIPPED / "config.pbtxt").read_text() == expected
    assert (SHIPPED / "1" / "model.py").read_text() == (
        REPO / "models" / "common" / "triton_model.py"
    ).read_text()
    model_pt = SHIPPED / "1" / "model.pt"
    assert hashlib.sha256(model_pt.read_bytes()).hexdigest() == card["model_pt_sha256"]
    assert card["split"] == det_card["split"]  # fitted on the deterioration model's split
    detector, _ = build_detector(
        REPO / "models" / "weights" / "deterioration.pt", REPO / "models" / "weights" / "ood.pt"
    )
    module = torch.jit.load(str(model_pt))  # type: ignore[no-untyped-call]
    inputs = example_inputs(config, batch=3)
    with torch.no_grad():
        eager, served = detector(*inputs), module(*inputs)
    for a, b in zip(eager, served, strict=True):
        if a.dtype == torch.bool:
            assert torch.equal(a, b)
        else:
            assert float((a - b).abs().max()) <= PARITY_TOLERANCE


# --- CLI ---


def test_train_ood_rejects_bad_percentile():
    result = CliRunner().invoke(train_app, ["ood", "--percentile", "100"])
    assert result.exit_code == 2
    assert "percentile" in result.output


def test_export_ood_missing_checkpoint_fails_cleanly(tmp_path: Path):
    result = CliRunner().invoke(
        export_app,
        ["ood", "--checkpoint", str(tmp_path / "none.pt"), "--repo-dir", str(tmp_path)],
    )
    assert result.exit_code == 1
    assert "cannot load" in result.output


def test_rebind_accepts_a_branch_only_change_and_refuses_any_other(
    tiny_run: TrainResult, ood_run: Path, tmp_path: Path
):
    ood = tmp_path / "ood.pt"
    ood.write_bytes(ood_run.read_bytes())
    payload = torch.load(tiny_run.checkpoint, weights_only=True)
    payload["state_dict"]["members.0.image_out.weight"] += 1.0  # the image branch only
    branch_only = tmp_path / "branch.pt"
    torch.save(payload, branch_only)
    with pytest.raises(ModelError, match="another checkpoint"):
        build_detector(branch_only, ood)
    assert (
        rebind_ood(tiny_run.checkpoint, branch_only, ood)
        == hashlib.sha256(branch_only.read_bytes()).hexdigest()
    )
    build_detector(branch_only, ood)
    key = next(k for k in payload["state_dict"] if k.endswith("head.weight"))
    payload["state_dict"][key] += 1.0  # an image-free parameter
    other = tmp_path / "other.pt"
    torch.save(payload, other)
    with pytest.raises(ModelError, match="image-free networks differ"):
        rebind_ood(branch_only, other, ood)
    with pytest.raises(ModelError, match="not fitted on"):
        rebind_ood(tiny_run.checkpoint, other, ood)
