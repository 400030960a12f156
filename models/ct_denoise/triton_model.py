"""Triton Python-backend model of ``ct_denoise`` (copied to ``ct_denoise/<version>/model.py``).

The shared wrapper (:mod:`models.common.triton_model`) serves fixed shapes; the denoiser
is fully convolutional and its contract takes any image size (at least 48 x 48 and
64 x 64), so it has this small wrapper of its own:

* inputs ``image [B,1,H,W]`` FP32 and ``dose_fraction [B,1]`` FP32, output
  ``denoised [B,1,H,W]`` FP32 (names and dtypes read from ``config.pbtxt``);
* each request is checked alone (dtype, shape, ``8 <= H, W <= MAX_SIDE``, finite values,
  dose in ``(0, 1]``); a bad one gets ``INVALID_ARG`` and the others still run;
* every image runs through the TorchScript module alone (a batch of one), so its output
  never depends on how Triton grouped requests;
* torch is limited to ``torch_num_threads`` intra-op threads (``parameters``), and the
  module is frozen and warmed up at 48 x 48 and 64 x 64 when loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["MAX_SIDE", "DenoiseRunner", "RequestError", "TritonPythonModel"]

MAX_SIDE = 1024
"""Largest image side accepted."""


class RequestError(ValueError):
    """One request is invalid."""


class DenoiseRunner:
    """Checks requests and runs the module one image at a time.

    Args:
        module: The (frozen) TorchScript :class:`models.ct_denoise.network.ServedDenoiser`.
    """

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        self.module = module

    @staticmethod
    def check(arrays: Mapping[str, npt.NDArray[Any] | None]) -> int:
        """Checks one request; returns its batch size.

        Raises:
            RequestError: What is wrong, in one sentence.
        """
        image, dose = arrays.get("image"), arrays.get("dose_fraction")
        if image is None or dose is None:
            raise RequestError("inputs 'image' and 'dose_fraction' are required")
        if image.dtype != np.float32 or dose.dtype != np.float32:
            raise RequestError("'image' and 'dose_fraction' must be FP32")
        if image.ndim != 4 or image.shape[1] != 1:
            raise RequestError(f"'image' must be [B, 1, H, W], got {list(image.shape)}")
        side_ok = 8 <= image.shape[2] <= MAX_SIDE and 8 <= image.shape[3] <= MAX_SIDE
        if not side_ok:
            raise RequestError(f"image sides must be 8-{MAX_SIDE}, got {list(image.shape[2:])}")
        if dose.shape != (image.shape[0], 1):
            raise RequestError(f"'dose_fraction' must be [B, 1], got {list(dose.shape)}")
        if image.shape[0] < 1:
            raise RequestError("empty request")
        if not (np.isfinite(image).all() and np.isfinite(dose).all()):
            raise RequestError("inputs hold non-finite values")
        if (dose <= 0.0).any() or (dose > 1.0).any():
            raise RequestError("'dose_fraction' must be in (0, 1]")
        return int(image.shape[0])

    def run(
        self, image: npt.NDArray[np.float32], dose: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """``denoised [B,1,H,W]`` of a checked request."""
        rows = []
        with torch.no_grad():
            for i in range(image.shape[0]):
                (out,) = self.module(
                    torch.from_numpy(np.ascontiguousarray(image[i : i + 1])),
                    torch.from_numpy(np.ascontiguousarray(dose[i : i + 1])),
                )
                rows.append(out.numpy())
        denoised: npt.NDArray[np.float32] = np.concatenate(rows).astype(np.float32)
        return denoised


def prepare(module: torch.jit.ScriptModule, threads: int) -> torch.jit.ScriptModule:
    """Limits torch threads, freezes the module and warms it up at 48 and 64 pixels."""
    torch.set_num_threads(max(threads, 1))
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    module.eval()
    frozen: torch.jit.ScriptModule = torch.jit.freeze(module)
    with torch.no_grad():
        for side in (48, 64, 48, 64):
            frozen(torch.zeros(1, 1, side, side), torch.ones(1, 1))
    return frozen


class TritonPythonModel:
    """Triton's entry point."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb_utils = pb_utils
        config = json.loads(args["model_config"])
        threads = config.get("parameters", {}).get("torch_num_threads", {}).get("string_value")
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        module = torch.jit.load(path, map_location="cpu")  # type: ignore[no-untyped-call]
        self.runner = DenoiseRunner(prepare(module, int(threads or 1)))

    def execute(self, requests: list[Any]) -> list[Any]:
        pb_utils = self.pb_utils
        responses = []
        for request in requests:
            arrays: dict[str, npt.NDArray[Any] | None] = {}
            for name in ("image", "dose_fraction"):
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                arrays[name] = None if tensor is None else tensor.as_numpy()
            try:
                self.runner.check(arrays)
            except RequestError as exc:
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[],
                        error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG),
                    )
                )
                continue
            denoised = self.runner.run(
                np.asarray(arrays["image"], dtype=np.float32),
                np.asarray(arrays["dose_fraction"], dtype=np.float32),
            )
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("denoised", denoised)])
            )
        return responses

    def finalize(self) -> None:
        self.runner = None  # type: ignore[assignment]
