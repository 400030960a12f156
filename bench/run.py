"""Run every benchmark on the running local stack, one after the other.

    .venv/bin/python -m bench.run            # or: make bench
    .venv/bin/python -m bench.run --only triton state_size

Each benchmark writes ``bench/results/<name>.json`` and prints its figures; this prints
a Markdown summary of them at the end (``python -m bench.report`` prints it again). The
stack must be up (``vigil stack status``); nothing here starts or stops it.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from bench import latency, recovery, report, scaling, state_size, throughput, triton_models

__all__ = ["BENCHMARKS", "main"]


def _throughput_1w(args: argparse.Namespace) -> Any:
    # The window model (no step model); py-spy samples the worker for 60 s of the run
    # (attached by pid, --nonblocking).
    window = [*_sized(args), "--step-model", ""]
    if shutil.which(args.py_spy) is None:
        print(f"py-spy not found ({args.py_spy}): no profile (pip install py-spy)")
        return throughput.main(window)
    return throughput.main([*window, "--profile", "60", "--py-spy", args.py_spy])


def _throughput_news2(args: argparse.Namespace) -> Any:
    # The worker's own cost: Triton unreachable, every score NEWS2 only (labelled degraded).
    return throughput.main(
        [*_sized(args), "--without-triton", "--name", "throughput-1w-without-triton"]
    )


def _throughput_step(args: argparse.Namespace) -> Any:
    # Step scoring (VIGIL_TRITON_STEP_MODEL): one O(1) model call per score, OOD included.
    return throughput.main(
        [*_sized(args), "--step-model", "deterioration_step", "--name", "throughput-1w-step"]
    )


def _scaling(args: argparse.Namespace, *join: str) -> Any:
    # One worker, then two on the same backlog (fresh topics each): speed and whether
    # their scores and alerts are the same, with step scoring.
    sized = ["--stays", str(args.stays), "--timeout", str(args.timeout)]
    return scaling.main([*sized, "--step-model", "deterioration_step", *join])


def _scaling_join(args: argparse.Namespace) -> Any:
    # The same, the second worker joining 3 s into the first one's backlog: a rebalance
    # that hands over partitions with records held for ordering.
    return _scaling(args, "--join-after", "3", "--name", "scaling-join")


def _sized(args: argparse.Namespace) -> list[str]:
    return ["--stays", str(args.stays), "--timeout", str(args.timeout)]


def _latency(args: argparse.Namespace) -> Any:
    return latency.main(["--seconds", "15", "--drain", "20", "--step-model", ""])  # window


def _recovery(args: argparse.Namespace) -> Any:
    return recovery.main([])


def _latency_step(args: argparse.Namespace) -> Any:
    return latency.main(
        [
            "--seconds",
            "15",
            "--drain",
            "20",
            "--step-model",
            "deterioration_step",
            "--name",
            "latency-step",
        ]
    )


def _triton(args: argparse.Namespace) -> Any:
    return triton_models.main([])


def _state(args: argparse.Namespace) -> Any:
    return state_size.main([])


BENCHMARKS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "triton": _triton,
    "state_size": _state,
    "throughput": _throughput_1w,
    "throughput_news2": _throughput_news2,
    "throughput_step": _throughput_step,
    "scaling": _scaling,
    "scaling_join": _scaling_join,
    "latency": _latency,
    "latency_step": _latency_step,
    "recovery": _recovery,
}


def main(argv: Sequence[str] | None = None) -> None:
    """Run the chosen benchmarks (all by default), then print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=None)
    parser.add_argument("--stays", type=int, default=60, help="stays for throughput runs")
    parser.add_argument(
        "--timeout", type=float, default=420.0, help="seconds a throughput run may take"
    )
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    args = parser.parse_args(argv)
    for name in args.only or list(BENCHMARKS):
        print(f"== {name}", flush=True)
        BENCHMARKS[name](args)
    print(report.render())


if __name__ == "__main__":
    main()
