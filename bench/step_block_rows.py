"""``block_rows`` sweep of ``deterioration_step`` on a private tritonserver (free ports).

For each block size: a temporary copy of ``triton_repo/deterioration_step`` with the
current ``models/common/triton_model.py`` as ``1/model.py`` and ``block_rows`` set in its
``config.pbtxt``, served by its own ``tritonserver`` (started as
:mod:`bench.step_throughput` does, on free loopback ports, so neither the shared stack
nor ``step_throughput`` is touched). Measured: rows/s at batch 256 with 4 and 1 requests
in flight (:func:`bench.step_throughput.served`, the same real requests), and the latency
of sequential batch-1 and batch-8 requests (p50/p99). Repeat a value (``16 ... 16``) to
see the drift of a shared machine.

    .venv/bin/python -m bench.step_block_rows 16 32 64 128 256 16
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient

import bench.step_throughput as step
from bench.common import ROOT, load_average, machine, write_result
from models.deterioration.step_export import MODEL_NAME
from models.deterioration.step_train import load_step_checkpoint
from vigil.testing.triton_server import serving_triton

__all__ = ["latency", "main"]


def latency(
    url: str, arrays: dict[str, npt.NDArray[np.float32]], batch: int, seconds: float
) -> dict[str, Any]:
    """p50/p99 of sequential requests of the first ``batch`` rows for ``seconds``, sent to
    the Triton at gRPC ``url``."""
    client = grpcclient.InferenceServerClient(url)
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, [batch, *array.shape[1:]], "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(array[:batch]))
        inputs.append(tensor)
    outputs = [grpcclient.InferRequestedOutput(n) for n in ("risk", "state_out", "fused")]
    for _ in range(5):
        client.infer(MODEL_NAME, inputs, outputs=outputs)
    seen = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        begin = time.perf_counter()
        client.infer(MODEL_NAME, inputs, outputs=outputs)
        seen.append(time.perf_counter() - begin)
    client.close()
    ms = np.array(seen) * 1000
    return {
        "batch": batch,
        "requests": len(seen),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
    }


def _repo(tmp: Path, block_rows: int) -> Path:
    repo = tmp / f"repo_{block_rows}"
    shutil.copytree(ROOT / "triton_repo" / MODEL_NAME, repo / MODEL_NAME)
    shutil.copyfile(
        ROOT / "models" / "common" / "triton_model.py", repo / MODEL_NAME / "1" / "model.py"
    )
    config = repo / MODEL_NAME / "config.pbtxt"
    text = config.read_text()
    if 'key: "block_rows"' in text:
        text = re.sub(
            r'(key: "block_rows"\n  value: \{ string_value: ")\d+', rf"\g<1>{block_rows}", text
        )
    else:
        text += (
            f'parameters {{\n  key: "block_rows"\n  value: {{ string_value: "{block_rows}" }}\n}}\n'
        )
    config.write_text(text)
    return repo


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Measure every block size; write ``bench/results/step_block_rows.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("block_rows", type=int, nargs="*", default=[16, 32, 64, 128, 256])
    parser.add_argument("--seconds", type=float, default=12.0, help="batch 256, 4 in flight")
    parser.add_argument("--latency-seconds", type=float, default=6.0)
    args = parser.parse_args(argv)
    net, _ = load_step_checkpoint(ROOT / "models" / "weights" / "deterioration_step.pt")
    arrays = step.request_arrays(net)
    runs = []
    with tempfile.TemporaryDirectory(prefix="vigil-step-blocks-") as name:
        tmp = Path(name)
        for value in args.block_rows:
            entry: dict[str, Any] = {"block_rows": value, "load_before": load_average()}
            log = tmp / f"triton_{value}.log"
            with serving_triton(_repo(tmp, value), log, ready_seconds=120) as url:
                entry["batch_256_in_flight_4"] = step.served(url, arrays, args.seconds, 4)
                entry["batch_256_in_flight_1"] = step.served(url, arrays, args.seconds / 2, 1)
                entry["batch_1"] = latency(url, arrays, 1, args.latency_seconds)
                entry["batch_8"] = latency(url, arrays, 8, args.latency_seconds)
            entry["load_after"] = load_average()
            print(json.dumps(entry), flush=True)
            runs.append(entry)
    write_result(
        "step_block_rows", {"benchmark": "step_block_rows", "machine": machine(), "runs": runs}
    )
    return runs


if __name__ == "__main__":
    main()
