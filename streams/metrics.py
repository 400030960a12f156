"""Every Prometheus metric of the worker, declared once (see docs/metrics.md).

Conventions: base units (seconds), ``_total`` counters, bounded label values (topic
kinds, reasons, model names, severities), and never a patient identifier in a label.
Metrics live in a dedicated registry so several apps in one process (tests) do not clash;
the standard process and platform collectors are registered on it too.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

__all__ = ["REGISTRY", "WorkerMetrics", "metrics"]

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class WorkerMetrics:
    """The worker's metrics (one instance per registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events_in = Counter(
            "vigil_events_in_total",
            "Input events by topic kind and outcome (accepted, deadletter, duplicate, too_late).",
            ["topic", "outcome"],
            registry=registry,
        )
        self.observations_artifact = Counter(
            "vigil_artifacts_total",
            "Observations outside the physiological range, kept out of features.",
            ["code"],
            registry=registry,
        )
        self.deadletter = Counter(
            "vigil_deadletter_total",
            "Records sent to dead-letter by reason.",
            ["reason"],
            registry=registry,
        )
        self.scores = Counter(
            "vigil_scores_total",
            "Scores emitted by model and degraded flag.",
            ["model", "degraded"],
            registry=registry,
        )
        self.alerts = Counter(
            "vigil_alerts_total",
            "Alert state changes emitted by severity and kind.",
            ["severity", "kind", "state"],
            registry=registry,
        )
        self.event_lag = Histogram(
            "vigil_event_lag_seconds",
            "Wall-clock delay from an event's time to its processing, seconds.",
            ["topic"],
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self.score_latency = Histogram(
            "vigil_event_to_score_seconds",
            "Wall-clock time from reading the triggering event to sending its score, seconds.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.triton_latency = Histogram(
            "vigil_triton_request_seconds",
            "Triton request latency, seconds.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.triton_batch = Histogram(
            "vigil_triton_batch_size",
            "Patients per Triton request.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.risk = Histogram(
            "vigil_risk_score",
            "Model risk of each score (0-1), by model; the clinical risk distribution.",
            ["model"],
            buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=registry,
        )
        self.inference_errors = Counter(
            "vigil_inference_errors_total",
            "Failed Triton requests by model and error kind.",
            ["model", "error"],
            registry=registry,
        )
        self.degraded = Gauge(
            "vigil_degraded",
            "1 while the worker scores without the model (NEWS2 only).",
            registry=registry,
        )
        self.ood = Counter(
            "vigil_ood_total",
            "Scores flagged out of distribution.",
            ["model"],
            registry=registry,
        )
        self.active_patients = Gauge(
            "vigil_active_patients", "Patients with state held by this worker.", registry=registry
        )
        self.state_bytes = Gauge(
            "vigil_state_bytes",
            "Approximate serialised size of the patient states held, bytes.",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "vigil_consumer_lag_messages",
            "Messages behind the end of each input topic.",
            ["topic"],
            registry=registry,
        )
        self.redis_errors = Counter(
            "vigil_redis_errors_total",
            "Failed Redis writes (retried when Redis returns).",
            registry=registry,
        )


metrics = WorkerMetrics(REGISTRY)
"""The process-wide metrics instance."""
