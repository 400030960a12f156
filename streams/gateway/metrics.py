"""Every Prometheus metric of ``vigil gateway``, in its own registry (docs/gateway.md).

Labels are bounded: protocol (``mllp``, ``fhir``), message type (the supported ones or
``other``), ACK code, topic kind, dead-letter reason, frame error kind. Never a patient
identifier, a control id or a peer address.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from streams.core.events import DeadLetterReason

__all__ = ["ACK_CODES", "FRAME_ERRORS", "MESSAGE_TYPES", "GatewayMetrics"]

MESSAGE_TYPES: Final = ("ORU^R01", "ADT^A01", "ADT^A02", "ADT^A03", "ADT^A08", "other")
ACK_CODES: Final = ("AA", "AE", "AR")
FRAME_ERRORS: Final = ("oversized", "frame_timeout", "idle_timeout", "no_start_byte", "truncated")
_ACK_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class GatewayMetrics:
    """The gateway's metrics, registered on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.messages = Counter(
            "vigil_gateway_messages_total",
            "Messages answered, by protocol, message type and ACK code.",
            ["protocol", "message_type", "ack"],
            registry=r,
        )
        self.events = Counter(
            "vigil_gateway_events_total",
            "Records Kafka acknowledged, by topic kind (vitals, labs, adt, deadletter).",
            ["kind"],
            registry=r,
        )
        self.deadletters = Counter(
            "vigil_gateway_deadletter_total",
            "Messages sent to dead-letter, by protocol and reason.",
            ["protocol", "reason"],
            registry=r,
        )
        self.skipped = Counter(
            "vigil_gateway_obx_skipped_total",
            "OBX segments left out (deleted, cannot obtain, or unknown code when skipped).",
            registry=r,
        )
        self.ack_seconds = Histogram(
            "vigil_gateway_ack_seconds",
            "From a whole message received to its answer written, seconds.",
            ["protocol"],
            buckets=_ACK_BUCKETS,
            registry=r,
        )
        self.fhir_requests = Counter(
            "vigil_gateway_fhir_requests_total",
            "FHIR requests answered, by resource type and HTTP status.",
            ["resource", "status"],
            registry=r,
        )
        self.connections = Gauge("vigil_gateway_connections", "Open MLLP connections.", registry=r)
        self.connections_refused = Counter(
            "vigil_gateway_connections_refused_total",
            "MLLP connections closed at once because max_connections were open.",
            registry=r,
        )
        self.frame_errors = Counter(
            "vigil_gateway_frame_errors_total",
            "MLLP frames dropped (and their connection closed), by kind.",
            ["kind"],
            registry=r,
        )
        self.kafka_up = Gauge(
            "vigil_gateway_kafka_up", "1 when the Kafka producer is connected.", registry=r
        )
        for message_type in MESSAGE_TYPES:
            for ack in ACK_CODES:
                self.messages.labels("mllp", message_type, ack)
        for reason in DeadLetterReason:
            self.deadletters.labels("mllp", reason.value)
        for kind in FRAME_ERRORS:
            self.frame_errors.labels(kind)
        for kind in ("vitals", "labs", "adt", "deadletter"):
            self.events.labels(kind)
        self.ack_seconds.labels("mllp")
        self.ack_seconds.labels("fhir")
        for reason in DeadLetterReason:
            self.deadletters.labels("fhir", reason.value)

    def message(self, protocol: str, message_type: str, ack: str) -> None:
        """Count one answered message (an unsupported type counts as ``other``)."""
        label = message_type if message_type in MESSAGE_TYPES else "other"
        self.messages.labels(protocol, label, ack).inc()
