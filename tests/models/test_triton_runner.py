"""The Python-backend wrapper runs fixed-shape blocks: a row's outputs do not depend on
the batch Triton or the worker put it in (docs/replay.md, "Determinism")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from models.export import MODEL_NAME, example_inputs
from models.network import NetConfig
from models.triton_model import BLOCK_ROWS, RequestError, Runner

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
