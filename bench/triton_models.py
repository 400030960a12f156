"""Triton throughput of each served model by batch size, from a client process.

``perf_analyzer`` is not available here (the ``nvidia-pytriton`` wheel bundles the
server only), so this is a ``tritonclient`` gRPC loop: one request in flight at a time,
for each model and batch size (1, 8, 32, 64; sizes above the model's
``max_batch_size`` are reported as such), one warm-up request, then requests for
``--seconds`` (at least 2). Inputs are **synthetic** (seeded uniform values of the
shapes and types the model's config declares; masks all ones): the models' cost does not
depend on the values. The figures include gRPC and (de)serialisation on this machine;
beside them, Triton's own statistics over the same interval (mean queue time per request
and compute time per execution, counting every client's requests to that model, since
the stack is shared).

With ``--concurrent``, the listed models are measured at the same time, one client
thread per model (each still one request in flight), as the worker calls
``deterioration`` and ``ood`` for the same events: that is where Python-backend stubs
with default torch threads oversubscribe the cores (BENCHMARKS.md, issue 16).

    .venv/bin/python -m bench.triton_models --seconds 3
    .venv/bin/python -m bench.triton_models --url 127.0.0.1:18001 --name triton_mine
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from bench.common import load_average, machine, write_result
from vigil.stack.settings import StackSettings

__all__ = ["MODELS", "measure"]

MODELS = ("deterioration", "deterioration_explain", "ood", "imaging")
BATCHES = (1, 8, 32, 64)
_NUMPY = {"TYPE_FP32": np.float32, "TYPE_BOOL": np.bool_, "TYPE_INT64": np.int64}


def _inputs(config: dict[str, Any], batch: int, rng: np.random.Generator) -> list[Any]:
    tensors = []
    for spec in config["input"]:
        shape = [batch, *(int(d) for d in spec["dims"])]
        dtype = _NUMPY[spec["data_type"]]
        if "mask" in spec["name"]:
            array = np.ones(shape, dtype=dtype)
        else:
            array = rng.uniform(0.0, 1.0, size=shape).astype(dtype)
        tensor = grpcclient.InferInput(spec["name"], shape, spec["data_type"].removeprefix("TYPE_"))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def measure(client: Any, model: str, batch: int, seconds: float) -> dict[str, Any]:
    """Sequential requests of ``batch`` rows to ``model`` for about ``seconds``."""
    config = client.get_model_config(model, as_json=True)["config"]
    max_batch = int(config.get("max_batch_size", 0))
    if batch > max_batch:
        return {"batch": batch, "skipped": f"max_batch_size is {max_batch}"}
    rng = np.random.default_rng(0)
    inputs = _inputs(config, batch, rng)
    client.infer(model, inputs)  # warm-up
    before = _server_stats(client, model)
    latencies: list[float] = []
    started = time.perf_counter()
    while len(latencies) < 2 or time.perf_counter() - started < seconds:
        begin = time.perf_counter()
        client.infer(model, inputs)
        latencies.append(time.perf_counter() - begin)
    elapsed = time.perf_counter() - started
    after = _server_stats(client, model)
    runs = after["executions"] - before["executions"]
    calls = after["requests"] - before["requests"]
    array = np.array(latencies) * 1000
    return {
        "batch": batch,
        "requests": len(latencies),
        "inferences_per_second": round(batch * len(latencies) / elapsed, 1),
        "latency_p50_ms": round(float(np.percentile(array, 50)), 1),
        "latency_max_ms": round(float(array.max()), 1),
        # Server side, all clients' requests to this model in the meantime (shared stack):
        "server_requests": calls,
        "server_mean_queue_ms": round((after["queue_ns"] - before["queue_ns"]) / calls / 1e6, 1)
        if calls
        else None,
        "server_mean_compute_ms_per_execution": round(
            (after["compute_ns"] - before["compute_ns"]) / runs / 1e6, 1
        )
        if runs
        else None,
    }


def _server_stats(client: Any, model: str) -> dict[str, int]:
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    infer = stats.get("inference_stats", {})
    return {
        "executions": int(stats.get("execution_count", 0)),
        "requests": int(infer.get("success", {}).get("count", 0)),
        "queue_ns": int(infer.get("queue", {}).get("ns", 0)),
        "compute_ns": int(infer.get("compute_infer", {}).get("ns", 0)),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure every model and write ``bench/results/triton.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--url",
        default=None,
        help="Triton gRPC host:port (default: the local stack's, VIGIL_STACK_TRITON_GRPC_PORT)",
    )
    parser.add_argument(
        "--concurrent",
        action="store_true",
        help="measure the listed models at the same time, one client thread each",
    )
    parser.add_argument(
        "--name", default="triton", help="result file stem under bench/results/ (default: triton)"
    )
    args = parser.parse_args(argv)
    url = args.url or StackSettings().triton_grpc_url
    client = grpcclient.InferenceServerClient(url)
    results: dict[str, Any] = {}
    if args.concurrent:
        clients = {model: grpcclient.InferenceServerClient(url) for model in args.models}
        for model in args.models:
            results[model] = {"load_before": load_average(), "batches": []}
        with ThreadPoolExecutor(len(args.models)) as pool:
            for batch in args.batches:
                futures = {
                    model: pool.submit(measure, clients[model], model, batch, args.seconds)
                    for model in args.models
                }
                for model, future in futures.items():
                    row = future.result()
                    results[model]["batches"].append(row)
                    print(model, row)
        for model in args.models:
            results[model]["load_after"] = load_average()
    else:
        for model in args.models:
            before = load_average()
            rows = [measure(client, model, batch, args.seconds) for batch in args.batches]
            results[model] = {"load_before": before, "load_after": load_average(), "batches": rows}
            for row in rows:
                print(model, row)
    result = {
        "benchmark": "triton",
        "machine": machine(),
        "client": "tritonclient gRPC, one request in flight"
        + (" per model, models at the same time" if args.concurrent else "")
        + ", synthetic inputs",
        "url": url,
        "models": results,
    }
    write_result(args.name, result)
    return result


if __name__ == "__main__":
    main()
