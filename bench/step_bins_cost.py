"""What each provisional bin costs the served step model (``VIGIL_STEP_COMMIT_DELAY_HOURS``).

A step request runs its stored state through every valid bin it carries; the commit
delay adds one closed bin per hour of delay to every request. This times the committed
``triton_repo/deterioration_step/1/model.pt`` (TorchScript, one thread, the served
128-row block) on :func:`models.deterioration.step_export.example_step_inputs` rows with
1 to 5 valid bins, in alternating rounds so a shared machine's drift hits every count
alike, and reports the median ms per block and the ratio to 2 bins (one closed bin and
the open one: no delay).

    .venv/bin/python -m bench.step_bins_cost --rounds 6
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import numpy as np
import torch

from bench.common import ROOT, load_average, machine, write_result
from models.deterioration.step_export import BLOCK_ROWS, example_step_inputs
from models.deterioration.step_train import load_step_checkpoint

__all__ = ["main"]

_CALLS = 30


def _inputs(base: list[torch.Tensor], bins: int) -> list[torch.Tensor]:
    """``base`` with the first ``bins`` bins of every row valid, the rest padding."""
    inputs = [t.clone() for t in base]
    valid = torch.zeros_like(inputs[4])
    valid[:, :bins] = 1.0
    inputs[4] = valid
    inputs[5] = torch.zeros_like(inputs[5])  # commit nothing: the state stays comparable
    return inputs


def main() -> None:
    """Time 1-5 valid bins per row; write ``bench/results/step-bins-cost.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="Alternating rounds.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(ROOT / "triton_repo/deterioration_step/1/model.pt"))  # type: ignore[no-untyped-call]
    module.eval()
    net, _ = load_step_checkpoint(ROOT / "models/weights/deterioration_step.pt")
    base = list(example_step_inputs(net, batch=BLOCK_ROWS, images=False, seed=1))
    counts = (1, 2, 3, 4, 5)
    times: dict[int, list[float]] = {n: [] for n in counts}
    load_before = load_average()
    with torch.no_grad():
        for _ in range(args.rounds):
            for n in counts:
                inputs = _inputs(base, n)
                for _ in range(3):
                    module(*inputs)
                started = time.perf_counter()
                for _ in range(_CALLS):
                    module(*inputs)
                times[n].append((time.perf_counter() - started) / _CALLS * 1000)
    median = {n: float(np.median(v)) for n, v in times.items()}
    result: dict[str, Any] = {
        "benchmark": "step_bins_cost",
        "machine": machine(),
        "load_before": load_before,
        "load_after": load_average(),
        "block_rows": BLOCK_ROWS,
        "ms_per_block": {str(n): round(median[n], 3) for n in counts},
        "ratio_to_2_bins": {str(n): round(median[n] / median[2], 3) for n in counts},
        "runs_ms": {str(n): [round(v, 3) for v in times[n]] for n in counts},
    }
    write_result("step-bins-cost", result)
    for n in counts:
        ratio = median[n] / median[2]
        print(f"{n} bins: {median[n]:.2f} ms per {BLOCK_ROWS}-row block ({ratio:.2f}x 2 bins)")


if __name__ == "__main__":
    main()
