"""Triton Python-backend model of ``deterioration`` and ``deterioration_explain``.

The exporter copies this file to each model's ``<version>/model.py``. A thin wrapper:
input and output names and dtypes come from ``config.pbtxt`` (through ``pb_utils``), the
TorchScript module ``model.pt`` beside this file does the work. The module's outputs are
matched to the config's outputs in order, so the same file serves the fast model
(``risk``, ``fused``) and the explaining one (``risk``, ``fused``, ``contributions``).
The requests of a dynamic batch are validated one by one; a bad request gets its own
``TritonError`` (``INVALID_ARG``) and the valid ones are run together, in forwards of
exactly :data:`BLOCK_ROWS` rows (see there). :class:`Runner` is the pure numpy/torch
path, importable without Triton.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["BLOCK_ROWS", "RequestError", "Runner", "TritonPythonModel"]

BLOCK_ROWS = 16
"""Rows per forward pass. Every forward runs at exactly this batch shape (the last block
padded with copies of its first row, whose outputs are dropped), so a row's outputs do not
depend on how Triton's dynamic batcher or the worker's micro-batches grouped it: on CPU
the same row gave outputs up to 1.2e-7 apart in batches of different sizes, and
bit-identical outputs at one fixed shape whatever the other rows and its position
(docs/replay.md, "Determinism"). Cost measured on the 2-core CI machine for the
deterioration model: one row 10 ms alone, 20 ms padded to 16; 64 rows 51 ms in one
forward, about 80 ms as four blocks."""


class RequestError(ValueError):
    """One request is invalid (wrong names, dtypes, shapes or non-finite values)."""


class Runner:
    """Validates requests against the config and runs the TorchScript module.

    Args:
        module: The loaded TorchScript module.
        inputs: ``(name, dtype, dims)`` per input in forward order; dims exclude batch.
        outputs: ``(name, dtype)`` per output in forward order.
        device: Torch device of the module.
    """

    def __init__(
        self,
        module: torch.jit.ScriptModule,
        inputs: Sequence[tuple[str, npt.DTypeLike, tuple[int, ...]]],
        outputs: Sequence[tuple[str, npt.DTypeLike]],
        device: str = "cpu",
    ) -> None:
        self.module = module
        self.inputs = [(name, np.dtype(dtype), dims) for name, dtype, dims in inputs]
        self.outputs = [(name, np.dtype(dtype)) for name, dtype in outputs]
        self.device = torch.device(device)

    def check(self, arrays: Mapping[str, npt.NDArray[Any] | None]) -> int:
        """Checks one request; returns its batch size.

        Raises:
            RequestError: A missing input, wrong dtype or shape, inconsistent batch
                sizes, or a non-finite value.
        """
        batch: int | None = None
        for name, dtype, dims in self.inputs:
            array = arrays.get(name)
            if array is None:
                raise RequestError(f"missing input {name!r}")
            if array.dtype != dtype:
                raise RequestError(f"input {name!r} must be {dtype}, got {array.dtype}")
            if array.ndim != len(dims) + 1 or tuple(array.shape[1:]) != dims:
                raise RequestError(f"input {name!r} must be [B, {dims}], got {array.shape}")
            if batch is None:
                batch = int(array.shape[0])
            elif array.shape[0] != batch:
                raise RequestError("inputs disagree on the batch size")
            if not np.isfinite(array).all():
                raise RequestError(f"input {name!r} has non-finite values")
        if batch is None or batch < 1:
            raise RequestError("empty request")
        return batch

    def run(self, arrays: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Runs a checked (possibly concatenated) batch; returns outputs by name."""
        rows = int(arrays[self.inputs[0][0]].shape[0])
        parts: list[list[npt.NDArray[Any]]] = [[] for _ in self.outputs]
        for start in range(0, rows, BLOCK_ROWS):
            stop = min(start + BLOCK_ROWS, rows)
            tensors = [
                torch.from_numpy(_block(arrays[name], start, stop)).to(self.device)
                for name, _, _ in self.inputs
            ]
            with torch.no_grad():
                results = self.module(*tensors)
            for part, result in zip(parts, results, strict=True):
                part.append(result.cpu().numpy()[: stop - start])
        return {
            name: np.concatenate(part).astype(dtype)
            for (name, dtype), part in zip(self.outputs, parts, strict=True)
        }


def _block(array: npt.NDArray[Any], start: int, stop: int) -> npt.NDArray[Any]:
    """Rows ``start:stop`` padded to :data:`BLOCK_ROWS` with copies of the first."""
    block = array[start:stop]
    missing = BLOCK_ROWS - (stop - start)
    if missing:
        block = np.concatenate([block, np.repeat(block[:1], missing, axis=0)])
    return np.ascontiguousarray(block)


class TritonPythonModel:
    """Triton's entry point."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb_utils = pb_utils
        config = json.loads(args["model_config"])
        inputs = [
            (
                spec["name"],
                pb_utils.triton_string_to_numpy(spec["data_type"]),
                tuple(int(d) for d in spec["dims"]),
            )
            for spec in config["input"]
        ]
        outputs = [
            (spec["name"], pb_utils.triton_string_to_numpy(spec["data_type"]))
            for spec in config["output"]
        ]
        gpu = args.get("model_instance_kind") == "GPU" and torch.cuda.is_available()
        device = f"cuda:{args.get('model_instance_device_id', '0')}" if gpu else "cpu"
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        module = torch.jit.load(path, map_location=device)  # type: ignore[no-untyped-call]
        module.eval()
        self.runner = Runner(module, inputs, outputs, device)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb_utils = self.pb_utils
        responses: list[Any] = [None] * len(requests)
        valid: list[tuple[int, dict[str, npt.NDArray[Any]], int]] = []
        for i, request in enumerate(requests):
            try:
                arrays: dict[str, npt.NDArray[Any] | None] = {}
                for name, _, _ in self.runner.inputs:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    arrays[name] = None if tensor is None else tensor.as_numpy()
                batch = self.runner.check(arrays)
                valid.append((i, {k: v for k, v in arrays.items() if v is not None}, batch))
            except RequestError as exc:
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[],
                    error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG),
                )
        if valid:
            merged = {
                name: np.concatenate([arrays[name] for _, arrays, _ in valid])
                for name, _, _ in self.runner.inputs
            }
            results = self.runner.run(merged)
            start = 0
            for i, _, batch in valid:
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(name, results[name][start : start + batch])
                        for name, _ in self.runner.outputs
                    ]
                )
                start += batch
        return responses

    def finalize(self) -> None:
        self.runner = None  # type: ignore[assignment]
