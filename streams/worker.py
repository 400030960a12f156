"""Run the worker: check topics, serve /metrics, start Faust (``vigil worker``)."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

from streams.adapters.topics import missing_topics
from streams.metrics import REGISTRY
from streams.settings import WorkerSettings
from streams.wiring import create_worker
from vigil.errors import TopicError

__all__ = ["run_worker"]

log = logging.getLogger(__name__)


def run_worker(settings: WorkerSettings) -> None:
    """Start the worker and block until it stops (SIGTERM/SIGINT stop it cleanly).

    Raises:
        TopicError: Required topics are missing (run ``vigil topics create``).
    """
    missing = missing_topics(settings)
    if missing:
        raise TopicError(
            f"missing Kafka topics: {', '.join(missing)}; create them with `vigil topics create`"
        )
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=REGISTRY)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    worker = create_worker(settings)
    worker.app.finalize()
    from faust.worker import Worker

    Worker(worker.app, loglevel=settings.log_level.lower(), quiet=True).execute_from_commandline()
