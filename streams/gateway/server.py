"""``vigil gateway``: wire the MLLP listener, the HTTP listener (health, metrics, FHIR) and
the Kafka sink, and
run them until SIGTERM or SIGINT (then stop accepting, finish answers in progress and
flush the producer)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl

import redis.asyncio as aioredis
from aiohttp import web

from streams.gateway.fhir_read import FhirReader
from streams.gateway.fhir_service import FhirService
from streams.gateway.history import ScoreHistory
from streams.gateway.history_feed import follow_scores
from streams.gateway.hl7_service import Hl7Service
from streams.gateway.http import http_app
from streams.gateway.metrics import GatewayMetrics
from streams.gateway.mllp import MllpServer
from streams.gateway.settings import GatewaySettings
from streams.gateway.sink import KafkaSink

__all__ = ["run_gateway", "serve"]

_log = logging.getLogger(__name__)


def _ssl_context(settings: GatewaySettings) -> ssl.SSLContext | None:
    if settings.tls_certfile is None or settings.tls_keyfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_certfile, settings.tls_keyfile)
    if settings.tls_client_cafile is not None:
        context.load_verify_locations(settings.tls_client_cafile)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def serve(settings: GatewaySettings, stop: asyncio.Event) -> None:
    """Run the gateway until ``stop`` is set.

    Raises:
        ConfigError: The code map file is invalid.
        OSError: A port cannot be bound.
    """
    metrics = GatewayMetrics()
    options = settings.mapping_options()
    sink = KafkaSink(settings, metrics)
    service = Hl7Service(
        options,
        sink,
        metrics,
        application=settings.application,
        deadletter_max_payload_bytes=settings.deadletter_max_payload_bytes,
    )
    mllp = MllpServer(
        service.handle,
        service.oversized,
        metrics,
        max_message_bytes=settings.max_message_bytes,
        max_connections=settings.max_connections,
        frame_timeout_seconds=settings.frame_timeout_seconds,
        idle_timeout_seconds=settings.idle_timeout_seconds,
        max_in_flight=settings.mllp_max_in_flight,
    )
    fhir = FhirService(
        sink,
        metrics,
        base=settings.fhir_base,
        codes=options.codes,
        source=settings.fhir_source,
        max_bytes=settings.max_message_bytes,
        deadletter_max_payload_bytes=settings.deadletter_max_payload_bytes,
    )
    password = (
        None if settings.redis_password is None else settings.redis_password.get_secret_value()
    )
    redis = aioredis.Redis.from_url(
        settings.redis_url, username=settings.redis_username, password=password
    )
    history = ScoreHistory(
        max_patients=settings.history_max_patients, per_patient=settings.history_per_patient
    )
    reader = FhirReader(
        redis, history, metrics, base=settings.fhir_base, prefix=settings.topic_prefix
    )
    context = _ssl_context(settings)
    app = http_app(settings, sink, metrics, [*fhir.routes(), *reader.routes()])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    feed: asyncio.Task[None] | None = None
    try:
        # Bind first: a port in use ends the start before any Kafka client exists.
        mllp_port = await mllp.start(settings.mllp_host, settings.mllp_port, context)
        site = web.TCPSite(runner, settings.http_host, settings.http_port, ssl_context=context)
        await site.start()
        sink.start()
        if settings.history_hours > 0:
            feed = asyncio.get_running_loop().create_task(follow_scores(settings, history))
        _log.info(
            "gateway listening: MLLP %s:%d, HTTP %s:%d%s",
            settings.mllp_host,
            mllp_port,
            settings.http_host,
            settings.http_port,
            " (TLS)" if context is not None else "",
        )
        await stop.wait()
        _log.info("gateway stopping")
    finally:
        if feed is not None:
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed
        await mllp.close()
        await runner.cleanup()
        await sink.close()
        await redis.aclose()


def run_gateway(settings: GatewaySettings) -> None:
    """Run the gateway in this process until SIGTERM or SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(settings, stop)

    asyncio.run(main())
