"""Export of both served models (``deterioration`` and ``deterioration_explain``):
TorchScript parity, config.pbtxt contracts, the Python-backend wrapper, images."""

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

from models.common.provenance import code_version
from models.common.torchscript import PARITY_TOLERANCE
from models.deterioration.baselines import summary_statistics
from models.deterioration.export import (
    EXPLAIN_MODEL_NAME,
    EXPORT_SOURCES,
    MODEL_NAME,
    example_inputs,
    export,
    load_checkpoint,
    render_config,
    script_model,
    tensor_specs,
)
from models.deterioration.network import (
    DeteriorationNet,
    NetConfig,
    NetInputs,
    RiskModel,
    window_statistics,
)
from models.deterioration.train import TrainResult

# torch 2.x marks torch.jit deprecated; TorchScript is still what the Triton model loads.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "triton_repo"
MODELS = [(MODEL_NAME, False), (EXPLAIN_MODEL_NAME, True)]
OUTPUT_NAMES = {
    MODEL_NAME: ("risk", "fused"),
    EXPLAIN_MODEL_NAME: ("risk", "fused", "contributions"),
}


def parse_pbtxt(text: str) -> dict[str, Any]:
    """Names, dtypes and dims of inputs/outputs, plus scalar fields of a config.pbtxt."""
    out: dict[str, Any] = {}
    for kind in ("input", "output"):
        body = re.search(rf"^{kind} \[\n(.*?)^\]", text, re.S | re.M)
        assert body is not None, kind
        out[kind] = [
            (name, dtype, tuple(int(d) for d in dims.split(",")))
            for name, dtype, dims in re.findall(
                r'name: "(\w+)"\s+data_type: (\w+)\s+dims: \[ ([\d, ]+) \]', body.group(1)
            )
        ]
    out["max_batch_size"] = int(re.search(r"max_batch_size: (\d+)", text).group(1))  # type: ignore[union-attr]
    out["backend"] = re.search(r'backend: "(\w+)"', text).group(1)  # type: ignore[union-attr]
    out["kind"] = re.search(r"kind: (KIND_\w+)", text).group(1)  # type: ignore[union-attr]
    out["dynamic_batching"] = "dynamic_batching {" in text
    return out


@pytest.fixture(scope="module")
def exported(tiny_run: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Triton repository holding both models of the tiny run."""
    repo = tmp_path_factory.mktemp("repo")
    export(tiny_run.checkpoint, repo, version=1)
    return repo


def _max_gap(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _eager(net: RiskModel, explain: bool, inputs: NetInputs) -> Any:
    with torch.no_grad():
        return net.explain(inputs) if explain else net(*inputs)


def _load(path: Path) -> torch.jit.ScriptModule:
    return torch.jit.load(str(path))  # type: ignore[no-untyped-call, no-any-return]


@pytest.mark.parametrize("images", [False, True])
@pytest.mark.parametrize(("name", "explain"), MODELS)
def test_reloaded_torchscript_matches_eager(
    tiny_run: TrainResult, exported: Path, name: str, explain: bool, images: bool
):
    net, meta = load_checkpoint(tiny_run.checkpoint)
    module = _load(exported / name / "1" / "model.pt")
    inputs = example_inputs(NetConfig(**meta["net_config"]), batch=5, images=images, seed=3)
    with torch.no_grad():
        assert _max_gap(_eager(net, explain, inputs), module(*inputs)) <= PARITY_TOLERANCE


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("images", [False, True])
@pytest.mark.parametrize("explain", [False, True])
def test_parity_with_trained_image_and_wide_branches(
    explain: bool, images: bool, wide: bool, tmp_path: Path
):
    torch.manual_seed(0)
    config = NetConfig(
        hidden=8, static_hidden=4, fused=16, image_dim=8, summary_hidden=4, wide=wide
    )
    net = DeteriorationNet(config).eval()
    torch.nn.init.normal_(net.image_out.weight)  # as if the imaging work had trained it
    torch.nn.init.normal_(net.wide_weight, std=0.1)
    path = tmp_path / "m.pt"
    torch.jit.save(script_model(net, explain=explain), str(path))
    module = _load(path)
    inputs = example_inputs(config, batch=4, images=images)
    eager = _eager(net, explain, inputs)
    with torch.no_grad():
        served = module(*inputs)
    assert _max_gap(eager, served) <= PARITY_TOLERANCE
    for tensor in served:
        assert torch.isfinite(tensor).all()
    # A patient without images scores as if the image inputs were absent.
    no_images = inputs._replace(image_mask=torch.zeros_like(inputs.image_mask))
    baseline = _eager(net, explain, no_images)
    assert torch.equal(eager[0][0], baseline[0][0])
    if images:
        assert not torch.allclose(eager[1][1:], baseline[1][1:])


def test_fast_and_explain_paths_agree(tiny_run: TrainResult):
    net, meta = load_checkpoint(tiny_run.checkpoint)
    config = NetConfig(**meta["net_config"])
    inputs = example_inputs(config, batch=2)
    risk, fused = _eager(net, False, inputs)
    risk_x, fused_x, contributions = _eager(net, True, inputs)
    assert risk.shape == risk_x.shape == (2, 1)
    assert ((risk > 0) & (risk < 1)).all()
    assert fused.shape == fused_x.shape == (2, config.fused)
    assert contributions.shape == (2, config.n_series)
    assert _max_gap((risk, fused), (risk_x, fused_x)) <= PARITY_TOLERANCE


def test_window_statistics_equal_the_baselines_features():
    config = NetConfig()
    values, mask, _, statics, static_mask, *_ = example_inputs(config, batch=6, images=False)
    mask[0] = 0.0  # a window with nothing observed
    log_scaled = np.zeros(config.n_series, dtype=bool)
    log_scaled[[3, 10]] = True
    expected = summary_statistics(
        values.numpy(), mask.numpy(), statics.numpy(), static_mask.numpy(), log_scaled
    )
    got = window_statistics(
        values, mask, statics, static_mask, torch.from_numpy(log_scaled.astype(np.float32))
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("name", "explain"), MODELS)
def test_config_pbtxt_is_the_exporters_contract(
    tiny_run: TrainResult, exported: Path, name: str, explain: bool
):
    _, meta = load_checkpoint(tiny_run.checkpoint)
    config = NetConfig(**meta["net_config"])
    parsed = parse_pbtxt((exported / name / "config.pbtxt").read_text())
    inputs, outputs = tensor_specs(config, explain=explain)
    assert re.search(rf'^name: "{name}"$', (exported / name / "config.pbtxt").read_text(), re.M)
    assert parsed["input"] == [(s.name, s.data_type, s.dims) for s in inputs]
    assert parsed["output"] == [(s.name, s.data_type, s.dims) for s in outputs]
    assert [n for n, _, _ in parsed["output"]] == list(OUTPUT_NAMES[name])
    assert parsed["backend"] == "python"
    assert parsed["max_batch_size"] > 0
    assert parsed["dynamic_batching"]
    assert parsed["kind"] == "KIND_CPU"
    # The module's real outputs have the declared shapes and dtype.
    module = _load(exported / name / "1" / "model.pt")
    with torch.no_grad():
        results = module(*example_inputs(config, batch=2))
    assert len(results) == len(parsed["output"])
    for (output, dtype, dims), result in zip(parsed["output"], results, strict=True):
        assert dtype == "TYPE_FP32", output
        assert result.dtype == torch.float32, output
        assert tuple(result.shape[1:]) == dims, output


def test_both_models_share_inputs(tiny_run: TrainResult, exported: Path):
    fast = parse_pbtxt((exported / MODEL_NAME / "config.pbtxt").read_text())
    slow = parse_pbtxt((exported / EXPLAIN_MODEL_NAME / "config.pbtxt").read_text())
    assert fast["input"] == slow["input"]
    assert fast["output"] == slow["output"][:2]


def test_model_card_hashes_the_sources_at_export(exported: Path):
    card = json.loads((exported / MODEL_NAME / "model_card.json").read_text())
    assert card["code_version"]["source_files"] == list(EXPORT_SOURCES)
    assert card["code_version"]["source_sha256"] == code_version(EXPORT_SOURCES)["source_sha256"]
    assert "source_sha256" in card["training_code_version"]
    assert sorted(card["served_models"]) == sorted(n for n, _ in MODELS)
    assert not (exported / EXPLAIN_MODEL_NAME / "model_card.json").exists()  # one card


def test_shipped_artifacts_match_the_exporter():
    card = json.loads((SHIPPED / MODEL_NAME / "model_card.json").read_text())
    config = NetConfig(**card["net_config"])
    for key in ("data_sha256", "split", "settings", "code_version", "packages", "metrics"):
        assert key in card
    net, _ = load_checkpoint(REPO / "models" / "weights" / "deterioration.pt")
    source = (REPO / "models" / "common" / "triton_model.py").read_text()
    inputs = example_inputs(config, batch=3)
    for name, explain in MODELS:
        entry = card["served_models"][name]
        expected_config = render_config(
            config, explain=explain, max_batch_size=entry["max_batch_size"]
        )
        assert (SHIPPED / name / "config.pbtxt").read_text() == expected_config
        assert (SHIPPED / name / "1" / "model.py").read_text() == source
        model_pt = SHIPPED / name / "1" / "model.pt"
        assert hashlib.sha256(model_pt.read_bytes()).hexdigest() == entry["model_pt_sha256"]
        with torch.no_grad():
            assert _max_gap(_eager(net, explain, inputs), _load(model_pt)(*inputs)) <= (
                PARITY_TOLERANCE
            )


# --- The Python-backend wrapper, with a stand-in for triton_python_backend_utils ---


class _Error(Exception):
    INVALID_ARG = "INVALID_ARG"

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code


class _Tensor:
    def __init__(self, name: str, array: np.ndarray[Any, Any]) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray[Any, Any]:
        return self.array


class _Response:
    def __init__(self, output_tensors: list[_Tensor], error: _Error | None = None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


def _fake_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    dtypes = {"TYPE_FP32": np.float32}
    module.triton_string_to_numpy = dtypes.__getitem__  # type: ignore[attr-defined]
    module.get_input_tensor_by_name = lambda request, name: request.get(name)  # type: ignore[attr-defined]
    module.Tensor = _Tensor  # type: ignore[attr-defined]
    module.InferenceResponse = _Response  # type: ignore[attr-defined]
    module.TritonError = _Error  # type: ignore[attr-defined]
    return module


def _config_json(pbtxt: str) -> str:
    parsed = parse_pbtxt(pbtxt)
    return json.dumps(
        {
            kind: [
                {"name": n, "data_type": t, "dims": [str(d) for d in dims]}
                for n, t, dims in parsed[kind]
            ]
            for kind in ("input", "output")
        }
    )


@pytest.mark.parametrize(("name", "explain"), MODELS)
def test_python_backend_model_agrees_and_isolates_bad_requests(
    tiny_run: TrainResult,
    exported: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    explain: bool,
):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    model_dir = exported / name
    spec = importlib.util.spec_from_file_location(f"served_{name}", model_dir / "1" / "model.py")
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
    net, meta = load_checkpoint(tiny_run.checkpoint)
    config = NetConfig(**meta["net_config"])
    names = [s.name for s in tensor_specs(config)[0]]
    good_a = dict(zip(names, (t.numpy() for t in example_inputs(config, batch=2)), strict=True))
    good_b = dict(
        zip(names, (t.numpy() for t in example_inputs(config, batch=1, seed=5)), strict=True)
    )
    wrong_dtype = {**good_b, "values": good_b["values"].astype(np.float64)}
    wrong_shape = {**good_b, "mask": good_b["mask"][:, :10]}
    missing = {k: v for k, v in good_b.items() if k != "statics"}
    nan = {**good_b, "statics": np.full_like(good_b["statics"], np.nan)}
    requests = [
        {k: _Tensor(k, v) for k, v in r.items()}
        for r in (good_a, wrong_dtype, good_b, wrong_shape, missing, nan)
    ]
    responses = model.execute(requests)
    assert len(responses) == len(requests)
    for bad in responses[1:2] + responses[3:]:
        assert isinstance(bad.error, _Error)
        assert bad.error.code == "INVALID_ARG"
    for response, inputs in ((responses[0], good_a), (responses[2], good_b)):
        assert response.error is None
        assert sorted(response.outputs) == sorted(OUTPUT_NAMES[name])
        eager = _eager(net, explain, NetInputs(*(torch.from_numpy(inputs[n]) for n in names)))
        for output, tensor in zip(OUTPUT_NAMES[name], eager, strict=True):
            np.testing.assert_allclose(response.outputs[output], tensor.numpy(), atol=1e-5)
            assert response.outputs[output].dtype == np.float32
