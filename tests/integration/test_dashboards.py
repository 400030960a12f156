"""Every Grafana dashboard query against the real Prometheus, during a real replay.

A worker is started on one of the ports the local stack's Prometheus scrapes (9108-9111),
a few real stays are replayed through it, and while it runs every panel query (Grafana's
``$__interval`` and ``$__rate_interval`` read as ``1m``) must be valid, and return series
unless listed in ``MAY_BE_EMPTY`` with the reason. Prometheus is asked to reload first, so
it evaluates this checkout's recording rules.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from streams.adapters.topics import create_topics
from streams.replay import physionet2012_events, produce, read_length_of_stay
from streams.settings import WorkerSettings
from vigil.stack.settings import StackSettings
from vigil.testing.workers import metrics_port, running_worker, worker_env

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "physionet2012-demo"
DASHBOARDS = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
N_STAYS = 30

# Queries that may rightly return nothing during a short, healthy replay.
MAY_BE_EMPTY = {
    'count by (alertname) (ALERTS{alertname=~"Vigil.*", alertstate="firing"})': "no alert firing",
    "vigil:inference_errors:rate5m": "no inference error",
    "sum by (code) (rate(vigil_artifacts_total[5m]))": "no physiological artifact",
    # vigil_ood_total{model} exists once the worker primes its models or flags an input.
    "vigil:ood:ratio_rate5m": "no OOD flag counted yet",
}


def _queries() -> list[tuple[str, str]]:
    """(dashboard / panel title, PromQL) of every panel target."""
    queries = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = re.sub(r"\$__(rate_)?interval\b", "1m", target["expr"])
                queries.append((f"{dashboard['title']} / {panel['title']}", expr))
    return queries


def _query(client: httpx.Client, expr: str) -> dict[str, Any]:
    response = client.post("/api/v1/query", data={"query": expr})
    body: dict[str, Any] = response.json()
    return body


# The model that scores by default (the step model; the window model when it is off).
_SCORING_MODEL = (
    WorkerSettings.model_fields["triton_step_model"].default
    or WorkerSettings.model_fields["triton_model"].default
)
_TRITON_P95 = f'max(vigil:triton_request_seconds:p95_5m{{model="{_SCORING_MODEL}"}})'


def _value(client: httpx.Client, expr: str) -> float | None:
    body = _query(client, expr)
    result = body.get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if result else None


@pytest.mark.slow
def test_dashboard_queries_are_valid_and_return_series_during_a_replay(
    stack: StackSettings, unique: str, tmp_path: Path
) -> None:
    queries = _queries()
    assert queries
    assert set(MAY_BE_EMPTY) <= {expr for _, expr in queries}, "stale MAY_BE_EMPTY entry"
    client = httpx.Client(base_url=stack.prometheus_url, timeout=10)
    reload = client.post("/-/reload")
    assert reload.status_code == 200, reload.text

    prefix = f"dash{unique}"
    create_topics(WorkerSettings(kafka_bootstrap=stack.kafka_bootstrap, topic_prefix=prefix))
    port = metrics_port(stack)
    env = worker_env(
        stack, prefix=prefix, app_id=prefix, data_dir=tmp_path / "worker", metrics_port=str(port)
    )
    paths = sorted((DEMO / "set-a").glob("*.txt"))[:N_STAYS]
    events = list(
        physionet2012_events(paths, length_of_stay=read_length_of_stay(DEMO / "Outcomes-a.txt"))
    )
    instance = f"{stack.host}:{port}"
    log = tmp_path / "worker.log"
    with running_worker(env, log) as worker:
        # Two halves, the second once Prometheus has scraped the first: a worker that
        # processes the whole replay between two scrapes would leave every rate at 0 (the
        # counters must move between the two scrapes a rate5m recording rule reads).
        half = len(events) // 2
        produce(events[:half], bootstrap=stack.kafka_bootstrap, topic_prefix=prefix)
        first_half_scraped = False
        # Wait until this worker's scores are scraped and every query that should have
        # data has it (the rate5m recording rules need two scrapes of the new series).
        wanted = [(title, e) for title, e in queries if e not in MAY_BE_EMPTY]
        deadline = time.monotonic() + 300
        empty: list[str] = []
        while time.monotonic() < deadline:
            assert worker.poll() is None, log.read_text()[-3000:]
            scored = _value(client, f'sum(vigil_scores_total{{instance="{instance}"}})')
            if scored and not first_half_scraped:
                produce(events[half:], bootstrap=stack.kafka_bootstrap, topic_prefix=prefix)
                first_half_scraped = True
                continue
            if scored:
                empty = [
                    f"{title}: {e}"
                    for title, e in wanted
                    if not _query(client, e).get("data", {}).get("result")
                ]
                # Rates and quantiles of the counters and histograms this test checks
                # exist once they moved between two scrapes (NaN or 0 before).
                rate = _value(client, "sum(vigil:events_in:rate5m)") or 0.0
                p95 = _value(client, _TRITON_P95)
                moving = rate > 0 and p95 is not None and not math.isnan(p95)
                if not empty and moving:
                    break
            time.sleep(5)
        assert scored, f"Prometheus never scraped scores from {instance}"
        assert not empty, "queries without data:\n" + "\n".join(empty)

        for title, expr in queries:
            body = _query(client, expr)
            assert body["status"] == "success", f"{title}: {expr}: {body}"

        # Plausible values for the key series.
        # The headline "Degraded scores (share)": a share over every worker, and the same
        # query on this worker alone (it scored in the last 5 minutes, so not NaN). Other
        # workers on the shared stack may be degraded, and this one may be under load:
        # the value itself is the pipeline's business, the query's shape is this test's.
        (degraded_expr,) = [e for t, e in queries if t.endswith("/ Degraded scores (share)")]
        degraded = _value(client, degraded_expr)
        assert degraded is not None
        assert math.isnan(degraded) or 0 <= degraded <= 1
        own_expr = degraded_expr.replace(
            "vigil_scores_total{", f'vigil_scores_total{{instance="{instance}",'
        ).replace("vigil_scores_total[", f'vigil_scores_total{{instance="{instance}"}}[')
        assert own_expr.count(instance) == 2, own_expr
        own = _value(client, own_expr)
        assert own is not None
        assert 0 <= own <= 1
        up = _value(client, f'up{{job="vigil-worker", instance="{instance}"}}')
        assert up == 1
        assert _value(client, 'min(up{job="triton"})') == 1
        assert (_value(client, "sum(vigil:events_in:rate5m)") or 0) > 0
        accepted = _value(client, f'sum(vigil_events_in_total{{instance="{instance}"}})')
        assert accepted is not None
        assert 0 < accepted <= len(events)
        risk = _value(client, f'sum(vigil_risk_score_count{{instance="{instance}"}})')
        assert risk is not None
        assert risk > 0
        p95 = _value(client, _TRITON_P95)
        assert p95 is not None
        assert 0 < p95 < 5
        assert _value(client, f'vigil_degraded{{instance="{instance}"}}') == 0
        served = _value(client, 'sum(nv_inference_request_success{model="deterioration"})')
        assert served is not None
        assert served > 0
        share = _value(client, "vigil:deadletter:ratio_rate5m")
        assert share is not None
        assert math.isnan(share) or 0 <= share <= 1
    client.close()
