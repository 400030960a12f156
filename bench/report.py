"""Print the figures in ``bench/results/*.json`` as Markdown tables, against the targets.

.venv/bin/python -m bench.report
"""

from __future__ import annotations

import json
from typing import Any

from bench.common import RESULTS

__all__ = ["render"]

TARGET_EVENTS_PER_SECOND = 10_000
TARGET_ALERT_P99_MS = 250


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _raw_rate(raw: dict[str, Any]) -> tuple[float, str]:
    """Records/s of the raw loop; older results lack ``seconds_after_start``."""
    if "seconds_after_start" in raw:
        return float(raw["records_per_second"]), ""
    return raw["records"] / raw["seconds_with_startup"], "\\*"


def _load_text(load: dict[str, float]) -> str:
    return f"{load['load_1m']:.1f}"


def _throughput(lines: list[str]) -> None:
    names = (
        "throughput-1w",
        "throughput-1w-step",
        "throughput-2w",
        "throughput-1w-without-triton",
    )
    rows = [(name, _load(name)) for name in names]
    lines += [
        "| Run | Events | Worker events/s | With start-up | Raw aiokafka rec/s | Ratio "
        "| Worker CPU ms/event | Degraded scores | Triton scoring model: mean request ms "
        "| Load 1m before/after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, data in rows:
        if data is None:
            continue
        worker = data["worker"]
        model = data.get("step_model") or "deterioration"  # the model that scored
        raw, mark = _raw_rate(data["raw_aiokafka"])
        lines.append(
            f"| {name} ({worker['workers']} worker{'s' if worker['workers'] > 1 else ''}) "
            f"| {data['events']:,} | {worker['events_per_second']:,} "
            f"| {worker['events_per_second_with_startup']:,} "
            f"| {raw:,.0f}{mark} | {worker['events_per_second'] / raw:.5f} "
            f"| {worker.get('worker_cpu_ms_per_event')} "
            f"| {worker['degraded_scores']:,} "
            f"| `{model}`: {worker['triton_during_run'].get(model, {}).get('mean_request_ms')} "
            f"| {_load_text(data['load_before'])} / {_load_text(data['load_after'])} |"
        )
    lines.append(
        "\n\\* result written before the raw loop was timed from the end of `start()`: "
        "records / (time including `start()`), since its first-to-last time can be 0."
    )
    lines.append(f"\nTarget: {TARGET_EVENTS_PER_SECOND:,} events/s per worker.\n")


def _latency(lines: list[str]) -> None:
    runs = [
        (name, run)
        for name in ("latency", "latency-step")
        for run in ((_load(name) or {}).get("runs") or [])
    ]
    if not runs:
        return
    lines += [
        "| Run | Rate asked | Achieved | Kept up | Backlog growth (events/s) "
        "| Score p50 / p99 ms | Alert p50 / p99 ms (n) | Load 1m before/after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, run in runs:
        score, alert = run["event_to_score"], run["event_to_alert"]
        lines.append(
            f"| {name} | {run['rate_target']:,.0f} | {run['rate_achieved']:,} | {run['kept_up']} "
            f"| {run['backlog_growth_events_per_second']} "
            f"| {score['p50_ms']} / {score['p99_ms']} "
            f"| {alert['p50_ms']} / {alert['p99_ms']} ({alert['n']}) "
            f"| {_load_text(run['load_before'])} / {_load_text(run['load_after'])} |"
        )
    lines.append(f"\nTarget: p99 event-to-alert <= {TARGET_ALERT_P99_MS} ms at 1,000 events/s.\n")


def _triton(lines: list[str]) -> None:
    data = _load("triton")
    if data is None:
        return
    lines += [
        "| Model | Batch | Inferences/s | p50 ms per request | Load 1m before/after |",
        "| --- | --- | --- | --- | --- |",
    ]
    for model, entry in data["models"].items():
        load = f"{_load_text(entry['load_before'])} / {_load_text(entry['load_after'])}"
        for row in entry["batches"]:
            if "skipped" in row:
                lines.append(f"| {model} | {row['batch']} | {row['skipped']} | | {load} |")
            else:
                lines.append(
                    f"| {model} | {row['batch']} | {row['inferences_per_second']:,} "
                    f"| {row['latency_p50_ms']:,} | {load} |"
                )
    lines.append("")


def _state(lines: list[str]) -> None:
    data = _load("state_size")
    if data is None:
        return
    size = data["json_bytes"]
    lines += [
        f"State JSON bytes over {data['stays']} stays: p50 {size['p50']:,}, "
        f"p95 {size['p95']:,}, max {size['max']:,} (target <= {data['target_bytes']:,}). "
        f"Heap per patient in the in-memory table: {data['heap_bytes_per_patient']:,} bytes; "
        f"RSS growth {data['rss_growth_mib_per_1000_patients']} MiB per 1,000 patients.",
        "",
    ]


def _profile(lines: list[str]) -> None:
    data = _load("throughput-1w")
    if data is None or "profile" not in data["worker"]:
        return
    profile = data["worker"]["profile"]
    lines += [
        f"Profile ({profile['tool']}): {profile['samples']:,} samples in "
        f"{profile['wall_seconds']} s, {profile['events_in_window']:,} events accounted.",
        "",
        "| Stage | Share of samples | active ms per event |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {row['name']} | {row['share']:.1%} | {row['active_ms_per_event']} |"
        for row in profile["stages"]
    ]
    lines.append("")


def _scaling(lines: list[str]) -> None:
    for name, how in (
        ("scaling", "both workers started together"),
        ("scaling-join", "the second joining mid-backlog"),
    ):
        data = _load(name)
        if data is not None:
            _scaling_run(lines, data, how)


def _scaling_run(lines: list[str], data: dict[str, Any], how: str) -> None:
    outputs = data["outputs"]
    one, two = (run["events_per_second"] for run in data["runs"])
    lines += [
        f"Two workers, {how}:\n",
        "| Workers | Events/s | Scores | Distinct (patient, time) | Alert changes |",
        "| --- | --- | --- | --- | --- |",
        f"| 1 | {one:,} | {outputs['scores'][0]:,} | {outputs['distinct_score_keys'][0]:,} "
        f"| {outputs['alert_changes'][0]:,} |",
        f"| 2 | {two:,} | {outputs['scores'][1]:,} | {outputs['distinct_score_keys'][1]:,} "
        f"| {outputs['alert_changes'][1]:,} |",
        f"\nTwo to one: {data['two_to_one']}x; outputs identical: {outputs['identical']} "
        f"({outputs['score_keys_in_both']:,} scoring keys in both, "
        f"{outputs['risk_differs_on_common_keys']:,} of them with another risk; alert "
        f"changes only in one run: {outputs['alert_changes_only_in_one_worker_run']} and "
        f"{outputs['alert_changes_only_in_two_worker_run']}). Target: at least 1.0x with "
        "identical outputs.\n",
    ]


def render() -> str:
    """The Markdown summary of every result present."""
    lines: list[str] = []
    for title, part in (
        ("Throughput", _throughput),
        ("Scaling", _scaling),
        ("Latency", _latency),
        ("Triton", _triton),
        ("State size", _state),
        ("Profile", _profile),
    ):
        lines.append(f"### {title}\n")
        part(lines)
    return "\n".join(lines)


def main() -> None:
    """Print the summary."""
    print(render())


if __name__ == "__main__":
    main()
