"""The Python-backend wrapper runs fixed-shape blocks: a row's outputs do not depend on
the batch Triton or the worker put it in (docs/replay.md, "Determinism")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from models.common.triton_model import (
    BLOCK_ROWS,
    RequestError,
    Runner,
    block_rows_parameter,
    prepare_module,
    set_torch_threads,
)
from models.deterioration.export import MODEL_NAME, example_inputs
from models.deterioration.network import NetConfig

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "triton_repo" / MODEL_NAME
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")
NAMES = (
    "values",
    "mask",
    "delta_hours",
    "statics",
    "static_mask",
    "image_embeddings",
    "image_age_hours",
    "image_mask",
)


@pytest.fixture(scope="module")
def runner() -> Runner:
    module = torch.jit.load(str(SHIPPED / "1" / "model.pt"))  # type: ignore[no-untyped-call]
    module.eval()
    card = json.loads((SHIPPED / "model_card.json").read_text())
    tensors = example_inputs(NetConfig(**card["net_config"]), batch=1)
    inputs = [(n, np.float32, tuple(t.shape[1:])) for n, t in zip(NAMES, tensors, strict=True)]
    return Runner(module, inputs, [("risk", np.float32), ("fused", np.float32)])


def _inputs(batch: int, seed: int) -> dict[str, npt.NDArray[np.float32]]:
    card = json.loads((SHIPPED / "model_card.json").read_text())
    tensors = example_inputs(NetConfig(**card["net_config"]), batch=batch, seed=seed)
    return {n: t.numpy() for n, t in zip(NAMES, tensors, strict=True)}


def _rows(
    arrays: dict[str, npt.NDArray[np.float32]], index: list[int]
) -> dict[str, npt.NDArray[np.float32]]:
    return {n: a[index] for n, a in arrays.items()}


def test_a_row_gives_the_same_bits_in_any_batch(runner: Runner) -> None:
    arrays = _inputs(2 * BLOCK_ROWS + 5, seed=11)
    whole = runner.run(arrays)
    rng = np.random.default_rng(0)
    for size in (1, 2, 3, 7, BLOCK_ROWS, BLOCK_ROWS + 1, 2 * BLOCK_ROWS + 5):
        index = [int(i) for i in rng.permutation(2 * BLOCK_ROWS + 5)[:size]]
        part = runner.run(_rows(arrays, index))
        for name in ("risk", "fused"):
            assert part[name].shape[0] == size
            np.testing.assert_array_equal(part[name], whole[name][index], err_msg=f"{size}")


@pytest.mark.parametrize("block_rows", [8, 40])
def test_a_row_gives_the_same_bits_in_any_batch_with_a_configured_block(
    runner: Runner, block_rows: int
) -> None:
    """A model's own ``block_rows`` (1 or a multiple of 8) is its one fixed shape: the
    guarantee above holds. (A block of 5 is refused: its fifth row came out 1 ulp apart.)"""
    sized = Runner(runner.module, runner.inputs, runner.outputs, block_rows=block_rows)
    total = 2 * block_rows + 5
    arrays = _inputs(total, seed=13)
    whole = sized.run(arrays)
    rng = np.random.default_rng(1)
    for size in (1, 2, 3, block_rows, block_rows + 1, total):
        index = [int(i) for i in rng.permutation(total)[:size]]
        part = sized.run(_rows(arrays, index))
        for name in ("risk", "fused"):
            assert part[name].shape[0] == size
            np.testing.assert_array_equal(part[name], whole[name][index], err_msg=f"{size}")


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({}, BLOCK_ROWS),
        ({"torch_num_threads": {"string_value": "1"}}, BLOCK_ROWS),
        ({"block_rows": {"string_value": ""}}, BLOCK_ROWS),
        ({"block_rows": {"string_value": "256"}}, 256),
        ({"block_rows": {"string_value": " 1 "}}, 1),
    ],
)
def test_block_rows_comes_from_the_config(
    parameters: dict[str, dict[str, str]], expected: int
) -> None:
    assert block_rows_parameter(parameters) == expected


@pytest.mark.parametrize("value", ["0", "-16", "16.5", "sixteen", "1e3"])
def test_a_bad_block_rows_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=f"block_rows must be a positive integer, got '{value}'"):
        block_rows_parameter({"block_rows": {"string_value": value}})


@pytest.mark.parametrize("value", ["5", "6", "12", "100"])
def test_a_block_that_kernels_may_not_tile_evenly_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=f"block_rows must be 1 or a multiple of 8.*got {value}"):
        block_rows_parameter({"block_rows": {"string_value": value}})


def test_a_runner_refuses_a_non_positive_block(runner: Runner) -> None:
    with pytest.raises(ValueError, match="block_rows must be positive"):
        Runner(runner.module, runner.inputs, runner.outputs, block_rows=0)


def test_outputs_keep_the_rows_and_dtypes(runner: Runner) -> None:
    out = runner.run(_inputs(3, seed=2))
    assert out["risk"].shape == (3, 1)
    assert out["risk"].dtype == np.float32
    assert np.all((out["risk"] > 0) & (out["risk"] < 1))


def test_bad_requests_are_still_refused(runner: Runner) -> None:
    arrays = _inputs(2, seed=1)
    arrays["values"] = arrays["values"][:1]
    with pytest.raises(RequestError, match="disagree"):
        runner.check(arrays)


# --- What the wrapper does at load: threads, freezing, warm-up (issue 16) ---

SERVED_WITH_WINDOW_INPUTS = (
    ("deterioration", ("risk", "fused")),
    ("deterioration_explain", ("risk", "fused", "contributions")),
    ("ood", None),
)


@pytest.mark.parametrize(("model", "outputs"), SERVED_WITH_WINDOW_INPUTS)
def test_the_frozen_module_gives_the_same_bits(model: str, outputs: tuple[str, ...] | None) -> None:
    path = REPO / "triton_repo" / model / "1" / "model.pt"
    plain = torch.jit.load(str(path)).eval()  # type: ignore[no-untyped-call]
    arrays = _inputs(2 * BLOCK_ROWS + 5, seed=7)
    inputs = [(n, np.float32, tuple(a.shape[1:])) for n, a in arrays.items()]
    with torch.no_grad():
        probe = plain(*(torch.from_numpy(a[:BLOCK_ROWS]) for a in arrays.values()))
    names = outputs or tuple(f"out{i}" for i in range(len(probe)))
    specs = [(n, t.numpy().dtype) for n, t in zip(names, probe, strict=True)]
    frozen = prepare_module(torch.jit.load(str(path)), inputs)  # type: ignore[no-untyped-call]
    assert frozen is not plain
    expected = Runner(plain, inputs, specs).run(arrays)
    got = Runner(frozen, inputs, specs).run(arrays)
    for name in names:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


_THREADS_SCRIPT = """
import json, sys, types
import numpy as np
sys.path.insert(0, {repo!r})
pb = types.ModuleType("triton_python_backend_utils")
pb.triton_string_to_numpy = {{"TYPE_FP32": np.float32}}.__getitem__
sys.modules["triton_python_backend_utils"] = pb
import torch
from models.common.triton_model import TritonPythonModel
config = json.loads({config!r})
threads = {threads!r}
if threads is not None:
    config["parameters"] = {{"torch_num_threads": {{"string_value": threads}}}}
block_rows = {block_rows!r}
if block_rows is not None:
    config.setdefault("parameters", {{}})["block_rows"] = {{"string_value": block_rows}}
model = TritonPythonModel()
model.initialize({{
    "model_config": json.dumps(config),
    "model_repository": {model_dir!r},
    "model_version": "1",
    "model_instance_kind": "CPU",
}})
print(torch.get_num_threads(), torch.get_num_interop_threads(), model.runner.block_rows)
"""


def _initialize(threads: str | None, block_rows: str | None) -> subprocess.CompletedProcess[str]:
    config = {
        "input": [
            {"name": n, "data_type": "TYPE_FP32", "dims": [str(d) for d in a.shape[1:]]}
            for n, a in _inputs(1, seed=0).items()
        ],
        "output": [
            {"name": "risk", "data_type": "TYPE_FP32", "dims": ["1"]},
            {"name": "fused", "data_type": "TYPE_FP32", "dims": ["64"]},
        ],
    }
    script = _THREADS_SCRIPT.format(
        repo=str(REPO),
        config=json.dumps(config),
        threads=threads,
        block_rows=block_rows,
        model_dir=str(SHIPPED),
    )
    return subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(("threads", "expected"), [(None, 1), ("1", 1), ("3", 3)])
def test_initialize_sets_the_configured_torch_threads(threads: str | None, expected: int) -> None:
    result = _initialize(threads, None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(expected), "1", str(BLOCK_ROWS)], result.stderr


def test_initialize_uses_the_configured_block_rows() -> None:
    result = _initialize("1", "40")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1", "40"], result.stderr


def test_initialize_refuses_a_bad_block_rows() -> None:
    """A bad value stops the model from loading (Triton reports the stub's exception)."""
    result = _initialize("1", "0")
    assert result.returncode != 0
    assert "block_rows must be a positive integer, got '0'" in result.stderr


def test_thread_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        set_torch_threads(0)
