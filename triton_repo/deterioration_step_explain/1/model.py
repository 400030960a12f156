"""Triton Python-backend model of ``deterioration`` and ``deterioration_explain``.

The exporter copies this file to each model's ``<version>/model.py``. A thin wrapper:
input and output names and dtypes come from ``config.pbtxt`` (through ``pb_utils``), the
TorchScript module ``model.pt`` beside this file does the work. The module's outputs are
matched to the config's outputs in order, so the same file serves the fast model
(``risk``, ``fused``) and the explaining one (``risk``, ``fused``, ``contributions``).
The requests of a dynamic batch are validated one by one; a bad request gets its own
``TritonError`` (``INVALID_ARG``) and the valid ones are run together, in forwards of
exactly ``block_rows`` rows (see :data:`BLOCK_ROWS`). The block size is fixed per model: a
``parameters`` entry ``block_rows`` of ``config.pbtxt`` (a positive integer; default
:data:`BLOCK_ROWS`, which every model but ``deterioration_step`` uses). A bigger block
costs fewer forwards for big batches and pads small ones more (BENCHMARKS.md, "Step model
``deterioration_step``"). :class:`Runner` is the pure numpy/torch path, importable
without Triton.

At load (:func:`prepare_module`), each stub limits torch to ``torch_num_threads`` intra-op
threads (a ``parameters`` entry of ``config.pbtxt``, default :data:`DEFAULT_NUM_THREADS`)
and one inter-op thread, freezes the TorchScript module (:func:`torch.jit.freeze`:
outputs bit-identical to the unfrozen module, tested) and runs warm-up blocks so that
TorchScript's profiling executor has specialised the graph before the first request.
Why one thread: Triton runs one stub process per model instance (six here) on a 2-core
machine; with torch's default of one OpenMP thread per core, models computing at the same
time (``deterioration`` and ``ood`` for every event, ``deterioration_explain`` on alerts)
or any other load on the cores made each stub's threads wait for one another at every
small operator of the 48-step recurrence: a 1-row ``deterioration`` execution took 0.8-2.3
s instead of 35 ms (BENCHMARKS.md, "Triton serving: threads, executor, queue policy").
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

__all__ = [
    "BLOCK_ROWS",
    "BLOCK_ROWS_MULTIPLE",
    "DEFAULT_NUM_THREADS",
    "WARMUP_BLOCKS",
    "RequestError",
    "Runner",
    "TritonPythonModel",
    "block_rows_parameter",
    "prepare_module",
    "set_torch_threads",
]

BLOCK_ROWS = 16
"""Rows per forward pass unless the model's ``config.pbtxt`` sets ``block_rows``
(:func:`block_rows_parameter`). Every forward runs at exactly this batch shape (the last block
padded with copies of its first row, whose outputs are dropped), so a row's outputs do not
depend on how Triton's dynamic batcher or the worker's micro-batches grouped it: on CPU
the same row gave outputs up to 1.2e-7 apart in batches of different sizes, and
bit-identical outputs at one fixed shape whatever the other rows and its position
(docs/replay.md, "Determinism"). Cost measured on the 2-core CI machine for the
deterioration model: one row 10 ms alone, 20 ms padded to 16; 64 rows 51 ms in one
forward, about 80 ms as four blocks. A model's block size is one fixed shape; changing a
model's value may change its outputs in the last bits. The shape alone is not enough:
the matrix kernels may compute the last rows of a block another way. Measured on this CPU
(6 Dec 2026, the ``deterioration`` window model, one thread): in blocks of 5 and 6 the
last row came out 1 ulp apart from the same row at other positions; blocks of 1, 3, 4, 8,
12, 16, 24 and 40 gave the same bits at every position. So ``block_rows`` must be 1 or a
multiple of :data:`BLOCK_ROWS_MULTIPLE` (:func:`block_rows_parameter` refuses others)."""

BLOCK_ROWS_MULTIPLE = 8
"""A configured ``block_rows`` other than 1 must be a multiple of this (see :data:`BLOCK_ROWS`)."""


DEFAULT_NUM_THREADS = 1
"""Intra-op torch threads per stub when ``config.pbtxt`` has no ``torch_num_threads``."""
WARMUP_BLOCKS = 3
"""Forwards of one zero block run at load: the profiling executor records shapes on the
first and optimises (fuses) from the second, which took 50-500 ms on the first requests."""


class RequestError(ValueError):
    """One request is invalid (wrong names, dtypes, shapes or non-finite values)."""


class Runner:
    """Validates requests against the config and runs the TorchScript module.

    Args:
        module: The loaded TorchScript module.
        inputs: ``(name, dtype, dims)`` per input in forward order; dims exclude batch.
        outputs: ``(name, dtype)`` per output in forward order.
        device: Torch device of the module.
        block_rows: Rows of every forward (the model's fixed shape).

    Raises:
        ValueError: ``block_rows`` is not positive.
    """

    def __init__(
        self,
        module: torch.jit.ScriptModule,
        inputs: Sequence[tuple[str, npt.DTypeLike, tuple[int, ...]]],
        outputs: Sequence[tuple[str, npt.DTypeLike]],
        device: str = "cpu",
        *,
        block_rows: int = BLOCK_ROWS,
    ) -> None:
        if block_rows < 1:
            raise ValueError(f"block_rows must be positive, got {block_rows}")
        self.block_rows = block_rows
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
        for start in range(0, rows, self.block_rows):
            stop = min(start + self.block_rows, rows)
            tensors = [
                torch.from_numpy(_block(arrays[name], start, stop, self.block_rows)).to(self.device)
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


def set_torch_threads(intra_op: int) -> None:
    """Limits this process to ``intra_op`` torch threads and one inter-op thread.

    The inter-op pool can be sized only before it first runs work (torch raises after
    that), so a second call leaves it as it is.
    """
    if intra_op < 1:
        raise ValueError(f"torch_num_threads must be positive, got {intra_op}")
    torch.set_num_threads(intra_op)
    with contextlib.suppress(RuntimeError):  # already set, or the pool has run work
        torch.set_num_interop_threads(1)


def block_rows_parameter(parameters: Mapping[str, Any]) -> int:
    """The ``block_rows`` of a model config's ``parameters`` (:data:`BLOCK_ROWS` if absent).

    Raises:
        ValueError: The value is not a positive integer, or is neither 1 nor a multiple of
            :data:`BLOCK_ROWS_MULTIPLE` (the model does not load).
    """
    text = str(parameters.get("block_rows", {}).get("string_value", "")).strip()
    if not text:
        return BLOCK_ROWS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"block_rows must be a positive integer, got {text!r}")
    if value != 1 and value % BLOCK_ROWS_MULTIPLE:
        raise ValueError(
            f"block_rows must be 1 or a multiple of {BLOCK_ROWS_MULTIPLE} (a row's outputs "
            f"may then depend on its position in the block), got {value}"
        )
    return value


def prepare_module(
    module: torch.jit.ScriptModule,
    inputs: Sequence[tuple[str, npt.DTypeLike, tuple[int, ...]]],
    device: str = "cpu",
    *,
    warmup_blocks: int = WARMUP_BLOCKS,
    block_rows: int = BLOCK_ROWS,
) -> torch.jit.ScriptModule:
    """Freezes an eval-mode TorchScript module and warms it up on zero blocks.

    Freezing inlines the weights and attributes as constants (no ``self.`` lookups per
    operator); outputs stay bit-identical to the unfrozen module (tests/models). The
    warm-up runs ``warmup_blocks`` forwards of one ``block_rows``-row block of zeros,
    the only shape :class:`Runner` ever runs for this model.
    """
    module.eval()
    frozen: torch.jit.ScriptModule = torch.jit.freeze(module)
    zeros = [
        torch.from_numpy(np.zeros((block_rows, *dims), dtype=dtype)).to(device)
        for _, dtype, dims in inputs
    ]
    with torch.no_grad():
        for _ in range(warmup_blocks):
            frozen(*zeros)
    return frozen


def _block(array: npt.NDArray[Any], start: int, stop: int, rows: int) -> npt.NDArray[Any]:
    """Rows ``start:stop`` padded to ``rows`` with copies of the first."""
    block = array[start:stop]
    missing = rows - (stop - start)
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
        parameters = config.get("parameters", {})
        threads = parameters.get("torch_num_threads", {}).get("string_value", "")
        set_torch_threads(int(threads) if threads else DEFAULT_NUM_THREADS)
        block_rows = block_rows_parameter(parameters)
        gpu = args.get("model_instance_kind") == "GPU" and torch.cuda.is_available()
        device = f"cuda:{args.get('model_instance_device_id', '0')}" if gpu else "cpu"
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        module = torch.jit.load(path, map_location=device)  # type: ignore[no-untyped-call]
        frozen = prepare_module(module, inputs, device, block_rows=block_rows)
        self.runner = Runner(frozen, inputs, outputs, device, block_rows=block_rows)

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
