"""Every Prometheus metric of ``vigil console``, in its own registry (``/metrics``).

Labels are bounded (topic kind, outcome, action, event kind); never a patient identifier
or a user name.
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

__all__ = ["ConsoleMetrics"]

_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ConsoleMetrics:
    """The console's metrics, registered on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.records = Counter(
            "vigil_console_records_total",
            "Output records read, by topic kind and outcome (applied, skipped).",
            ["kind", "outcome"],
            registry=r,
        )
        self.patients = Gauge("vigil_console_patients", "Patients on the board.", registry=r)
        self.streams = Gauge(
            "vigil_console_event_streams", "Open live-update streams (boards).", registry=r
        )
        self.actions = Counter(
            "vigil_console_actions_total",
            "Alert actions sent to the acks topic, by action and outcome (sent, failed).",
            ["action", "outcome"],
            registry=r,
        )
        self.action_seconds = Histogram(
            "vigil_console_action_seconds",
            "Time from an action's request to Kafka's acknowledgement of its record.",
            buckets=_BUCKETS,
            registry=r,
        )
        self.sign_ins = Counter(
            "vigil_console_sign_ins_total",
            "Sign-in attempts by method (local, oidc) and outcome (ok, failed, locked).",
            ["method", "outcome"],
            registry=r,
        )
        self.push_seconds = Histogram(
            "vigil_console_push_seconds",
            "Time from a record read from Kafka to its row written to a board's stream.",
            buckets=_BUCKETS,
            registry=r,
        )
