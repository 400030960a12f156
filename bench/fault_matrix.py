"""Full-size fault matrix on the local stack (``vigil stack up`` first): issue 9.

Runs the cases of ``tests/integration/test_fault_matrix.py`` on more stays, each checked
the same way (no event lost, no conflicting outputs, final observation content equal to
an undisturbed run), and prints one JSON line per case with its recovery times, then
writes them all to ``--out``. The stack is taken from ``VIGIL_STACK_*`` like ``vigil
stack``; its Kafka, Triton and Redis are stopped and restarted (and left healthy).

    .venv/bin/python bench/fault_matrix.py --stays 100 --out reports/fault-matrix.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.integration

from vigil.stack.settings import StackSettings
from vigil.testing.faults import (
    CaseResult,
    Fault,
    alert_conflicts,
    demo_events,
    run_case,
    score_conflicts,
    state_differences,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stays", type=int, default=100)
    parser.add_argument(
        "--cases",
        default=",".join(f.value for f in Fault if f is not Fault.NONE),
        help="comma-separated faults",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="per case, seconds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    stack = StackSettings().resolved()
    events = demo_events(args.stays)
    ids = {json.loads(e.payload)["event_id"] for e in events}
    rows = []
    with tempfile.TemporaryDirectory(prefix="vigil-faults-") as tmp:
        workdir = Path(tmp)

        def case(fault: Fault) -> CaseResult:
            folder = workdir / fault.value
            folder.mkdir()
            name = f"fmb{uuid.uuid4().hex[:10]}"
            return run_case(stack, fault, events, folder, name=name, timeout_seconds=args.timeout)

        reference = case(Fault.NONE)
        for fault in [Fault.NONE, *(Fault(c) for c in args.cases.split(",") if c)]:
            result = reference if fault is Fault.NONE else case(fault)
            row = result.summary()
            row.update(
                lost=len(result.unaccounted(ids)),
                alert_conflicts=len(alert_conflicts(result.alerts)),
                score_conflicts=len(score_conflicts(result.scores)),
                states_differing=len(state_differences(reference.states, result.states)),
                patients=len(result.states),
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
    report = {
        "stays": args.stays,
        "events": len(events),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
        f"python {platform.python_version()}",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cases": rows,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
