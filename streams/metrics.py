"""Every Prometheus metric of the worker, declared once (see docs/metrics.md).

Conventions: base units (seconds), ``_total`` counters, bounded label values (topic
kinds, reasons, model names, severities), and never a patient identifier in a label.
Metrics live in a dedicated registry so several apps in one process (tests) do not clash;
the standard process and platform collectors are registered on it too.

Label values that come from a closed set (topic kinds, outcomes, dead-letter reasons, alert
severities and kinds, ICU types) are created at zero up front, so that rates and ratios
exist before the first event instead of being missing series; :meth:`WorkerMetrics.prime`
does the same for the configured model names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from streams.core.events import INPUT_TOPICS, DeadLetterReason, IcuType, TopicKind
from streams.core.state import Outcome

__all__ = [
    "BATCH_STAGES",
    "OUTPUT_TOPICS",
    "REGISTRY",
    "UNKNOWN_ICU_TYPE",
    "WorkerMetrics",
    "metrics",
]

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_RECORDS_BUCKETS = (1, 4, 16, 64, 256, 512, 1024, 2048, 4096, 8192)
_STATE_BUCKETS = tuple(float(2**k) for k in range(10, 24))  # 1 KiB .. 8 MiB

OUTPUT_TOPICS: Final = (TopicKind.SCORES, TopicKind.ALERTS, TopicKind.DEADLETTER)
"""Topic kinds counted by ``vigil_events_out_total``."""

BATCH_STAGES: Final = ("apply", "model", "send", "confirm", "changelog")
"""``stage`` label values of ``vigil_batch_stage_seconds``, in the order a batch runs them."""

INPUT_ORDER_OUTCOMES = ("forced", "idled", "given_up")
"""``outcome`` label values of ``vigil_input_order_records_total``."""

UNKNOWN_ICU_TYPE: Final = "unknown"
"""``icu_type`` label of alerts whose patient has no ICU type (no admission record yet)."""

_ALERT_SEVERITIES = ("low", "medium", "high")
_ALERT_KINDS = ("deterioration", "news2")
_ALERT_STATES = ("open", "escalated", "resolved")
_ICU_TYPES = (*(t.value for t in IcuType), UNKNOWN_ICU_TYPE)


class _AlertCounter(Counter):
    """``vigil_alerts_total``: ``icu_type`` may be left out and is then ``unknown``.

    Transitional: the worker counted alerts by severity, kind and state before the
    ``icu_type`` label existed; once every caller passes it, this becomes a plain Counter.
    """

    def labels(self, *labelvalues: object, **labelkwargs: object) -> _AlertCounter:
        if len(labelvalues) == 3 and not labelkwargs:
            labelvalues = (*labelvalues, UNKNOWN_ICU_TYPE)
        return super().labels(*labelvalues, **labelkwargs)


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
        self.events_out = Counter(
            "vigil_events_out_total",
            "Records produced by topic kind (scores, alerts, deadletter) and outcome "
            "(delivered, failed).",
            ["topic", "outcome"],
            registry=registry,
        )
        self.alerts = _AlertCounter(
            "vigil_alerts_total",
            "Alert state changes emitted by severity, kind, state and ICU type.",
            ["severity", "kind", "state", "icu_type"],
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
            "Scores whose input the ood model flagged out of distribution, by scoring model.",
            ["model"],
            registry=registry,
        )
        self.step_rebuilds = Counter(
            "vigil_step_rebuilds_total",
            "Step-model requests that started again from admission because a record "
            "arrived for a bin the stored state had already committed.",
            registry=registry,
        )
        self.batch_records = Histogram(
            "vigil_batch_records",
            "Input records per batch (the worker's unit of work).",
            buckets=_RECORDS_BUCKETS,
            registry=registry,
        )
        self.batch_stage = Histogram(
            "vigil_batch_stage_seconds",
            "Wall time of each stage of a batch, seconds: apply (decode, validate, apply, "
            "snapshots), model (Triton answers), send (outputs handed to the producer), "
            "confirm (from there: states encoded, then until Kafka holds the outputs, "
            "including the wait for the previous batch's writes; the next batch is applied "
            "meanwhile), changelog (states sent and in Kafka).",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.input_order = Counter(
            "vigil_input_order_records_total",
            "Input records the event-time merger did not release in order, by outcome: "
            "forced (released early, a partition number held too many), idled (released "
            "because another topic was silent), given_up (held at a hand-over or stop; read "
            "again from the committed offset).",
            ["outcome"],
            registry=registry,
        )
        self.batches_behind = Counter(
            "vigil_batches_behind_total",
            "Batches filled with the longer wait because a full batch of input was waiting "
            "(VIGIL_BATCH_MAX_MS_BEHIND).",
            registry=registry,
        )
        self.explanations = Counter(
            "vigil_explanations_total",
            "Alert explanations by the explain model, by outcome: sent (on the explanations "
            "topic), unavailable (the model failed), failed (not published), dropped (queue "
            "full).",
            ["outcome"],
            registry=registry,
        )
        self.active_patients = Gauge(
            "vigil_active_patients", "Patients with state held by this worker.", registry=registry
        )
        self.state_size = Histogram(
            "vigil_state_size_bytes",
            "Serialised size of each per-patient state as the changelog holds it, bytes, "
            "sampled periodically.",
            buckets=_STATE_BUCKETS,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "vigil_consumer_lag_messages",
            "Messages between the group's committed offsets and the end of each input topic.",
            ["topic"],
            registry=registry,
        )
        self.redis_errors = Counter(
            "vigil_redis_errors_total",
            "Failed Redis writes (retried when Redis returns).",
            registry=registry,
        )
        self.recovery_restarts = Counter(
            "vigil_recovery_restarts_total",
            "Changelog partitions the recovery watchdog resumed and sought again because "
            "table recovery received no record from them for VIGIL_RECOVERY_STALL_SECONDS.",
            registry=registry,
        )
        self._prime_closed_sets()

    def _prime_closed_sets(self) -> None:
        for kind in sorted(INPUT_TOPICS):
            for outcome in (*(o.value for o in Outcome), "deadletter"):
                self.events_in.labels(kind.value, outcome)
        for out in OUTPUT_TOPICS:
            for delivery in ("delivered", "failed"):
                self.events_out.labels(out.value, delivery)
        for reason in DeadLetterReason:
            self.deadletter.labels(reason.value)
        for stage in BATCH_STAGES:
            self.batch_stage.labels(stage)
        for outcome in ("sent", "unavailable", "failed", "dropped"):
            self.explanations.labels(outcome)
        for outcome in INPUT_ORDER_OUTCOMES:
            self.input_order.labels(outcome)
        for severity in _ALERT_SEVERITIES:
            for alert_kind in _ALERT_KINDS:
                for state in _ALERT_STATES:
                    for icu_type in _ICU_TYPES:
                        self.alerts.labels(severity, alert_kind, state, icu_type)

    def prime(self, models: Iterable[str]) -> None:
        """Create the per-model series at zero (call once with the configured models).

        Args:
            models: Model names as they label scores, for example ``deterioration``
                and ``news2`` (the degraded mode's label).
        """
        for model in models:
            for degraded in ("false", "true"):
                self.scores.labels(model, degraded)
            self.ood.labels(model)


metrics = WorkerMetrics(REGISTRY)
"""The process-wide metrics instance."""
