"""Run ``vigil console``: build its parts from the settings and serve them with uvicorn.

Uvicorn's access log is off: request paths name patients, and log lines never do.
"""

from __future__ import annotations

import logging
import socket
from datetime import timedelta

import redis.asyncio as aioredis
import uvicorn
from aiokafka import AIOKafkaProducer

from streams.adapters.security import aiokafka_options, redis_options
from streams.console.app import Console, build_app
from streams.console.audit import AuditTrail
from streams.console.auth import Lockout
from streams.console.feed import Feed, Hub
from streams.console.metrics import ConsoleMetrics
from streams.console.oidc import OidcClient
from streams.console.settings import ConsoleSettings
from streams.console.users import UserStore
from streams.console.ward import Ward
from streams.settings import WorkerSettings

__all__ = ["make_console", "run_console"]

_log = logging.getLogger(__name__)


def make_console(settings: ConsoleSettings, connections: WorkerSettings | None = None) -> Console:
    """The console's parts; Kafka and Redis security from ``connections`` (the worker's
    ``VIGIL_KAFKA_*``/``VIGIL_REDIS_*`` settings, read from the environment by default)."""
    connections = (connections or WorkerSettings()).model_copy(
        update={
            "kafka_bootstrap": settings.kafka_bootstrap,
            "topic_prefix": settings.topic_prefix,
            "redis_url": settings.redis_url,
        }
    )
    kafka = aiokafka_options(connections)
    metrics = ConsoleMetrics()
    ward = Ward(timedelta(hours=settings.history_hours or 24), settings.max_patients)
    hub = Hub()

    def redis_client() -> aioredis.Redis:
        return aioredis.Redis.from_url(settings.redis_url, **redis_options(connections))

    console = Console(
        settings=settings,
        users=UserStore(settings.users_file),
        audit=AuditTrail(settings.audit_file),
        ward=ward,
        hub=hub,
        metrics=metrics,
        lockout=Lockout(settings.max_failed_logins, settings.lockout_minutes * 60),
        oidc=OidcClient(settings) if settings.oidc else None,
        kafka_options=kafka,
    )
    console.feed = Feed(settings, ward, hub, metrics, kafka, redis_client)

    def producer() -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            acks="all",
            linger_ms=0,
            client_id="vigil-console",
            **kafka,
        )

    console.producer_factory = producer
    return console


def run_console(settings: ConsoleSettings) -> None:
    """Serve the console until stopped (SIGINT/SIGTERM).

    Raises:
        OSError: The address cannot be bound (in use, not local); raised before any Kafka
            or Redis client is made.
    """
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((settings.host, settings.port))
    except OSError:
        listener.close()
        raise
    app = build_app(make_console(settings))
    if settings.session_secret is None:
        _log.warning("VIGIL_CONSOLE_SESSION_SECRET unset: sessions end when the console stops")
    scheme = "https" if settings.tls else "http"
    _log.info("ward console on %s://%s:%d/", scheme, settings.host, settings.port)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=None if settings.tls_certfile is None else str(settings.tls_certfile),
        ssl_keyfile=None if settings.tls_keyfile is None else str(settings.tls_keyfile),
        access_log=False,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run(sockets=[listener])
