"""Served throughput of ``deterioration_step`` on its own Triton, and its model cost.

Starts a private ``tritonserver`` (the binary of the ``nvidia-pytriton`` wheel, as
``vigil stack`` does, :func:`vigil.testing.triton_server.serving_triton`) on free loopback
ports over a copy of
``triton_repo/deterioration_step`` in a temporary folder, so the shared stack (8000-8002)
is never touched. Requests are real: 256 demo stays (test split) stepped to hour 24 with
the committed model, each request carrying the bin closed at 24 h (committed) and the open
bin at 25 h. A ``tritonclient`` gRPC loop sends batch-256 requests for ``--seconds`` with
``--in-flight`` requests outstanding (1 and 4 by default) and reports rows per second.

Beside it, the TorchScript cost alone (frozen, one thread): the served module (step and
OOD verdict, ``triton_repo/deterioration_step/1/model.pt``) in the wrapper's blocks
(:data:`~models.deterioration.step_export.BLOCK_ROWS` rows) of requests with 0, 1 or 2 closed
bins before the open one (2: what the worker sends under its default 1 h commit delay), of
requests from every stage of a stay (:func:`mixed_arrays`: many OOD buckets per block) and
in one 256-row forward; and the step alone (no OOD) for the shipped ensemble and its first
member.

    .venv/bin/python -m bench.step_throughput --seconds 20
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import tritonclient.grpc as grpcclient

from bench.common import DEMO, ROOT, load_average, machine, write_result
from models.deterioration.step_export import BLOCK_ROWS, MODEL_NAME, tensor_specs
from models.deterioration.step_network import StepEnsemble, StepModule
from models.deterioration.step_train import load_step_checkpoint
from streams.core.last_seen import stay_hours_since_seen
from streams.core.step_features import BINS_PER_REQUEST, bin_inputs, pack_bins, stay_bins
from streams.datasets.physionet2012 import load_stays
from vigil.testing.triton_server import serving_triton

__all__ = ["MIXED_HOURS", "mixed_arrays", "model_cost", "request_arrays", "served"]

ADMIT = datetime(2012, 1, 1, tzinfo=UTC)
ROWS = 256


def request_arrays(
    net: StepEnsemble, rows: int = ROWS, closed_bins: int = 1, *, hour: int = 24, skip: int = 0
) -> dict[str, npt.NDArray[np.float32]]:
    """``rows`` real requests (demo stays from the ``skip``-th) at ``hour`` h 30 min: the
    state with every bin before the request's committed, ``closed_bins`` closed bins (the
    oldest committed, the others provisional, as the worker sends them with a commit delay)
    and the open bin ``hour``. ``closed_bins`` 1 (the served measurement): bin 23 committed
    at 24 h; 2: what the worker sends under its default 1 h commit delay (bin 22 committed,
    23 provisional); 0: the open bin alone."""
    stays, _ = load_stays(DEMO)
    stays = (stays * ((rows + skip) // len(stays) + 1))[skip : skip + rows]
    arrays = [s.arrays(ADMIT) for s in stays]
    config = net.config
    no_images = (
        torch.zeros(rows, config.max_images, config.image_dim),
        torch.zeros(rows, config.max_images),
        torch.zeros(rows, config.max_images),
    )
    statics = torch.from_numpy(np.stack([a.statics for a in arrays]))
    static_mask = torch.from_numpy(np.stack([a.static_mask for a in arrays]))
    first = max(hour - closed_bins, 0)  # the request's first bin
    # The stored state: every bin before the request's first committed, 8 per call.
    history = []
    for a in arrays:
        bins = stay_bins(a, ADMIT + timedelta(hours=hour))
        history.append([bins.bin(i) for i in range(len(bins)) if bins.index[i] < first])
    state = torch.zeros(rows, net.layout.width)
    for start in range(0, max(len(h) for h in history), BINS_PER_REQUEST):  # none at hour 0
        chunk = [pack_bins(h[start : start + BINS_PER_REQUEST]) for h in history]
        tensors = [torch.from_numpy(np.stack([c[i] for c in chunk])) for i in range(4)]
        with torch.no_grad():
            _, state, _ = net(
                state, *tensors, torch.full((rows, 1), 8.0), statics, static_mask, *no_images
            )
    packed = []
    commits = []
    for stay in stays:
        observations = stay.observations(ADMIT)
        closed = [bin_inputs(observations, admit_time=ADMIT, index=i) for i in range(first, hour)]
        open_bin = bin_inputs(
            observations,
            admit_time=ADMIT,
            index=hour,
            end_time=ADMIT + timedelta(hours=hour, minutes=30),
        )
        request_bins = [b for b in (*closed, open_bin) if b is not None]
        packed.append(pack_bins(request_bins))
        commits.append([1.0 if closed and closed[0] is not None else 0.0])
    return {
        "state": state.numpy(),
        "bins_values": np.stack([p[0] for p in packed]),
        "bins_mask": np.stack([p[1] for p in packed]),
        "bins_delta_hours": np.stack([p[2] for p in packed]),
        "bins_valid": np.stack([p[3] for p in packed]),
        "commit_bins": np.array(commits, dtype=np.float32),
        "statics": np.stack([a.statics for a in arrays]),
        "static_mask": np.stack([a.static_mask for a in arrays]),
        "image_embeddings": np.zeros((rows, config.max_images, config.image_dim), np.float32),
        "image_age_hours": np.zeros((rows, config.max_images), np.float32),
        "image_mask": np.zeros((rows, config.max_images), np.float32),
        "hours_since_seen": np.stack(
            [stay_hours_since_seen(a, [hour * 60 + 30])[0] for a in arrays]
        ),
    }


MIXED_HOURS: tuple[int, ...] = (1, 2, 3, 5, 7, 10, 14, 20, 28, 38, 47)
"""Hours of :func:`mixed_arrays`: one in each OOD input bucket of steps observed."""


def mixed_arrays(net: StepEnsemble, rows: int = BLOCK_ROWS) -> dict[str, npt.NDArray[np.float32]]:
    """``rows`` requests (one closed bin each) from different stays at the hours of
    :data:`MIXED_HOURS`, interleaved: a block of patients at every stage of their stay, as
    a worker with many patients sends, so the OOD head's bucket products are many and
    small."""
    per_hour = -(-rows // len(MIXED_HOURS))
    parts = [
        request_arrays(net, per_hour, hour=hour, skip=k * per_hour)
        for k, hour in enumerate(MIXED_HOURS)
    ]
    return {
        name: np.stack([part[name][i] for i in range(per_hour) for part in parts])[:rows]
        for name in parts[0]
    }


def model_cost(
    module: torch.nn.Module,
    requests: Mapping[str, dict[str, npt.NDArray[np.float32]]],
    names: Sequence[str],
) -> dict[str, Any]:
    """Frozen TorchScript of ``module``, one thread, the inputs ``names``: ms per forward
    and µs per row for a served block (:data:`BLOCK_ROWS` rows) of each set of requests in
    ``requests``, and one 256-row forward of the ``"1_closed_bin"`` requests (the served
    measurement's)."""
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = (
            module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
        )
        frozen = torch.jit.freeze(scripted.eval())
    cases = [(label, arrays, BLOCK_ROWS) for label, arrays in requests.items()]
    cases.append(("1_closed_bin", requests["1_closed_bin"], ROWS))
    out: dict[str, Any] = {}
    for label, source, rows in cases:
        tensors = [torch.from_numpy(source[name][:rows].copy()) for name in names]
        with torch.no_grad():
            for _ in range(5):
                frozen(*tensors)
            runs = max(20, 6000 // rows)
            seconds = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                for _ in range(runs):
                    frozen(*tensors)
                seconds = min(seconds, (time.perf_counter() - started) / runs)
        out[f"{label}_ms_per_forward_{rows}_rows"] = round(seconds * 1000, 3)
        out[f"{label}_us_per_row_{rows}_rows"] = round(seconds / rows * 1e6, 1)
    return out


def served(
    url: str, arrays: dict[str, npt.NDArray[np.float32]], seconds: float, in_flight: int
) -> dict[str, Any]:
    """Rows per second of batch-``ROWS`` requests with ``in_flight`` outstanding, sent to
    the Triton at gRPC ``url``. Every output is returned, as the worker asks for them
    (risk, state and the OOD verdict)."""
    client = grpcclient.InferenceServerClient(url)
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    client.infer(MODEL_NAME, inputs, outputs=None)  # warm-up
    done = 0
    errors: list[str] = []
    lock = threading.Condition()
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    def send() -> None:
        begin = time.perf_counter()

        def callback(result: Any, error: Any) -> None:
            nonlocal done
            with lock:
                if error is not None:
                    errors.append(str(error))
                else:
                    done += 1
                    latencies.append(time.perf_counter() - begin)
                lock.notify()

        client.async_infer(MODEL_NAME, inputs, callback, outputs=None)

    started = time.perf_counter()
    sent = 0
    with lock:
        while time.perf_counter() < stop_at:
            while sent - done - len(errors) < in_flight:
                send()
                sent += 1
            lock.wait(timeout=1.0)
        while done + len(errors) < sent:
            lock.wait(timeout=5.0)
    elapsed = time.perf_counter() - started
    client.close()
    ms = np.array(latencies) * 1000
    return {
        "in_flight": in_flight,
        "requests": done,
        "errors": len(errors),
        "rows_per_second": round(done * ROWS / elapsed, 1),
        "latency_p50_ms": round(float(np.percentile(ms, 50)), 1),
        "latency_p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure and write ``bench/results/deterioration_step.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args(argv)
    net, _ = load_step_checkpoint(ROOT / "models" / "weights" / "deterioration_step.pt")
    requests = {
        "open_bin_only": request_arrays(net, closed_bins=0),
        "1_closed_bin": request_arrays(net, closed_bins=1),
        "2_closed_bins": request_arrays(net, closed_bins=2),
        "mixed_hours_1_closed_bin": mixed_arrays(net),
    }
    arrays = requests["1_closed_bin"]
    single = StepEnsemble(net.config, 1)
    single.load_state_dict(
        {k: v for k, v in net.state_dict().items() if not k.startswith("members.")}
        | {k: v for k, v in net.state_dict().items() if k.startswith("members.0.")}
    )
    p = net.config.n_series
    single_requests = {
        k: {**a, "state": a["state"][:, : 5 * p + net.config.hidden].copy()}
        for k, a in requests.items()
    }
    inputs, _ = tensor_specs(net.config, net.layout.width)
    step_names = [name for name in arrays if name != "hours_since_seen"]  # the OOD head's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        served_module = torch.jit.load(  # type: ignore[no-untyped-call]
            str(ROOT / "triton_repo" / MODEL_NAME / "1" / "model.pt")
        )
    result: dict[str, Any] = {
        "benchmark": "deterioration_step",
        "machine": machine(),
        "load_before": load_average(),
        "model_cost": {
            "served_module": model_cost(served_module, requests, list(arrays)),
            f"step_only_{net.layout.members}_members": model_cost(
                StepModule(net), requests, step_names
            ),
            "step_only_first_member": model_cost(StepModule(single), single_requests, step_names),
        },
    }
    with tempfile.TemporaryDirectory(prefix="vigil-step-triton-") as tmp:
        repo = Path(tmp) / "repo"
        shutil.copytree(ROOT / "triton_repo" / MODEL_NAME, repo / MODEL_NAME)
        with serving_triton(repo, Path(tmp) / "triton.log", ready_seconds=120) as url:
            result["served"] = [served(url, arrays, args.seconds, k) for k in args.in_flight]
    result["load_after"] = load_average()
    result["client"] = (
        f"tritonclient gRPC async, batch {ROWS}, real demo stays at 24 h (1 committed + 1 "
        "open bin per row), own tritonserver on free loopback ports with only this model"
    )
    result["request_bytes_per_row"] = 4 * sum(int(np.prod(s.dims)) for s in inputs)
    write_result("deterioration_step", result)
    for key, value in result.items():
        print(key, value)
    return result


if __name__ == "__main__":
    main()
