"""The gateway's HTTP side (aiohttp): ``/health``, ``/metrics`` and the FHIR routes.

``/health`` answers 200 when Kafka is connected and 503 otherwise, without credentials (for
load balancers). Every other path needs ``Authorization: Bearer <token>`` when a token is
set (compared in constant time).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.gateway.metrics import GatewayMetrics
from streams.gateway.settings import GatewaySettings
from streams.gateway.sink import KafkaSink

__all__ = ["http_app"]

_HEALTH = "/health"
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def http_app(
    settings: GatewaySettings,
    sink: KafkaSink,
    metrics: GatewayMetrics,
    routes: Sequence[web.RouteDef] = (),
) -> web.Application:
    """The aiohttp application of the gateway, with ``routes`` (FHIR) added."""
    token = None if settings.auth_token is None else settings.auth_token.get_secret_value()

    @web.middleware
    async def authenticate(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if token is not None and request.path != _HEALTH:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return web.json_response(
                    {"error": "missing or wrong bearer token"},
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return await handler(request)

    async def health(request: web.Request) -> web.Response:
        up = sink.up
        body = {"status": "ok" if up else "degraded", "kafka": "up" if up else "down"}
        return web.json_response(body, status=200 if up else 503)

    async def prometheus(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[authenticate], client_max_size=settings.max_message_bytes)
    app.router.add_get(_HEALTH, health)
    app.router.add_get("/metrics", prometheus)
    app.add_routes(routes)
    return app
