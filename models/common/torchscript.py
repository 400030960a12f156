"""TorchScript for Triton: script a module, serialise it, reload it, and measure how far the
reloaded module is from the eager one before anything is written."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from vigil.errors import ModelError

__all__ = ["PARITY_TOLERANCE", "max_abs_gap", "normal_float32", "script", "scripted_bytes"]

PARITY_TOLERANCE: Final[float] = 1e-5
"""Largest accepted ``|eager - TorchScript|`` of a served output."""


def normal_float32(value: npt.ArrayLike) -> torch.Tensor:
    """``value`` as a float32 tensor, entries too small for a normal float32 set to 0.

    For a served module's fitted buffers: a subnormal entry changes no result that matters,
    but the CPU computes products with subnormal numbers several times slower (the step
    model's input whitening held 2,837 of them and its products took 3.7x as long;
    BENCHMARKS.md, "Step model: subnormal numbers and fewer operators").
    """
    tensor = torch.tensor(np.asarray(value), dtype=torch.float32)
    return torch.where(tensor.abs() < torch.finfo(torch.float32).tiny, 0.0, tensor)


def script(module: nn.Module) -> torch.jit.ScriptModule:
    """TorchScript of ``module`` (which the caller has put in eval mode)."""
    with warnings.catch_warnings():
        # torch 2.x flags torch.jit as deprecated; TorchScript is what Triton loads here.
        warnings.simplefilter("ignore", FutureWarning)
        scripted: torch.jit.ScriptModule = torch.jit.script(module)
    return scripted


def max_abs_gap(expected: Sequence[torch.Tensor], served: Sequence[torch.Tensor]) -> float:
    """Largest absolute difference over paired outputs (same count required)."""
    return max(
        (float((a - b).abs().max().item()) for a, b in zip(expected, served, strict=True)),
        default=0.0,
    )


def scripted_bytes(
    name: str,
    scripted: torch.jit.ScriptModule,
    parity: Callable[[torch.jit.ScriptModule], float],
    *,
    tolerance: float = PARITY_TOLERANCE,
) -> tuple[bytes, float]:
    """Serialises ``scripted``, reloads it and returns the bytes with ``parity(reloaded)``.

    Args:
        name: The served model's name, for the error.
        scripted: The module to serialise.
        parity: The gap of a reloaded module against the eager model (it may raise
            :class:`ModelError` itself, for outputs a number cannot judge).
        tolerance: Largest accepted gap.

    Raises:
        ModelError: The gap exceeds ``tolerance``.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
        torch.jit.save(scripted, buffer)
        buffer.seek(0)
        reloaded = torch.jit.load(buffer)  # type: ignore[no-untyped-call]
    gap = parity(reloaded)
    if gap > tolerance:
        raise ModelError(f"export parity failed for {name}: max |eager - TorchScript| = {gap:.3g}")
    return buffer.getvalue(), gap
