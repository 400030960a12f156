"""Every committed served model (``triton_repo/*/1/model.pt``) holds no subnormal float32
number: this CPU multiplies them several times slower. The step model's OOD input
whitening once held 2,837 and its products took 3.7x as long (BENCHMARKS.md, "Step model:
subnormal numbers and fewer operators"); fitted buffers are now built by
:func:`models.common.torchscript.normal_float32`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.common.torchscript import normal_float32

REPO = Path(__file__).resolve().parents[2] / "triton_repo"
SERVED = sorted(REPO.glob("*/1/model.pt"))

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")


def test_every_model_of_the_repository_is_checked():
    assert {path.parts[-3] for path in SERVED} >= {
        "deterioration",
        "deterioration_step",
        "ood",
        "imaging",
        "ct_denoise",
    }


@pytest.mark.parametrize("path", SERVED, ids=lambda path: path.parts[-3])
def test_the_served_module_holds_no_subnormal_numbers(path: Path):
    module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    tensors = [*module.named_buffers(), *module.named_parameters()]
    assert tensors
    tiny = torch.finfo(torch.float32).tiny
    for name, tensor in tensors:
        if tensor.dtype == torch.float32:
            subnormal = (tensor != 0) & (tensor.abs() < tiny)
            assert not bool(subnormal.any()), (name, int(subnormal.sum()))


def test_normal_float32_flushes_only_subnormal_entries():
    values = np.array([1e-40, -1e-42, 1e-37, -2.5, 0.0, 3e-39], dtype=np.float64)
    flushed = normal_float32(values)
    assert flushed.dtype == torch.float32
    assert flushed.tolist() == pytest.approx([0.0, 0.0, 1e-37, -2.5, 0.0, 0.0], rel=1e-6)
