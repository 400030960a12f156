"""The ward console's web application (Starlette, server-rendered, live rows by SSE).

Routes (all but ``/login``, ``/health``, ``/metrics`` and ``/static`` need a session; a
page answers a redirect to ``/login``, ``/events`` and the images 401):

==============================================  ===============================================
``GET /login``, ``POST /login``                 sign-in form (``username``, ``password``)
``GET /login/oidc``, ``GET /auth/callback``     OpenID Connect, when configured
``POST /logout``                                sign-out
``GET /``                                       the ward board (``sort``, ``unit``, ``severity``)
``GET /events``                                 server-sent events: changed board rows
``GET /patients/{patient_id}``                  the patient page
``POST /patients/{patient_id}/alerts/{alert_id}/actions``   acknowledge, snooze, escalate
``GET /patients/{patient_id}/findings/{finding_id}.png``    CAM heatmap over the image
``GET /health``, ``GET /metrics``               health (no patient data), Prometheus
==============================================  ===============================================

Every POST needs the session's CSRF token. Actions need the clinician or admin role
(a viewer gets 403 and no buttons). Every sign-in, sign-out, failure and action is written to
the console's audit trail; an action is also audited by the worker on ``vigil.audit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from streams.console.actions import SNOOZE_MINUTES, ActionError, build_ack
from streams.console.audit import AuditTrail
from streams.console.auth import (
    Lockout,
    check_csrf,
    csrf_token,
    current_user,
    same_origin,
    sign_in,
    sign_out,
)
from streams.console.charts import HEIGHT, WIDTH, patient_chart
from streams.console.feed import Feed, Hub
from streams.console.images import overlay_png
from streams.console.metrics import ConsoleMetrics
from streams.console.oidc import OidcClient
from streams.console.settings import ConsoleSettings
from streams.console.users import UserStore, can_act
from streams.console.ward import SEVERITY_FILTERS, SORTS, Row, Ward

__all__ = ["Console", "build_app"]

_log = logging.getLogger(__name__)
_HERE: Final = Path(__file__).resolve().parent
_SECURITY_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}
_SEVERITY_ICON: Final = {"high": "▲", "medium": "◆", "low": "●"}


@dataclass
class Console:
    """The running console's parts (shared by the routes)."""

    settings: ConsoleSettings
    users: UserStore
    audit: AuditTrail
    ward: Ward
    hub: Hub
    metrics: ConsoleMetrics
    lockout: Lockout
    oidc: OidcClient | None = None
    feed: Feed | None = None
    producer_factory: Callable[[], AIOKafkaProducer] | None = None
    producer: AIOKafkaProducer | None = None
    kafka_options: dict[str, Any] = field(default_factory=dict)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    templates.env.globals.update(
        ago=_ago,
        icon=_SEVERITY_ICON,
        sorts=SORTS,
        severities=SEVERITY_FILTERS,
        snooze_minutes=SNOOZE_MINUTES,
        chart_width=WIDTH,
        chart_height=HEIGHT,
    )
    templates.env.filters["pct"] = lambda v: "—" if v is None else f"{100 * v:.0f}%"
    templates.env.filters["when"] = lambda v: "—" if v is None else f"{v:%Y-%m-%d %H:%M}Z"
    return templates


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


Handler = Callable[[Request], Awaitable[Response]]


def build_app(console: Console) -> Starlette:
    """The Starlette application of ``console`` (Kafka clients start in its lifespan)."""
    settings = console.settings
    templates = _templates()

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("user", current_user(request))
        context["csrf"] = csrf_token(request)
        response = templates.TemplateResponse(request, name, context, status_code=status)
        response.headers.update(_SECURITY_HEADERS)
        response.headers["cache-control"] = "no-store"
        return response

    def signed_in(handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            user = current_user(request)
            if user is None or (console.users.get(user.name) is None and not _oidc_user(request)):
                if request.url.path.startswith("/patients/") and request.url.path.endswith(".png"):
                    return PlainTextResponse("sign in first", status_code=401)
                # Where to go after sign-in stays in the session: the login page never
                # echoes a patient's id.
                request.session["next"] = request.url.path
                return RedirectResponse("/login", status_code=303)
            return await handler(request)

        return wrapped

    # --- sign-in ---------------------------------------------------------------------------
    async def login_form(request: Request) -> Response:
        return page(request, "login.html", oidc=console.oidc is not None, error=None)

    async def login(request: Request) -> Response:
        form = await request.form()
        username = str(form.get("username", "")).strip()
        password = str(form.get("password", ""))
        client = _client(request)
        sent_token = form.get("csrf_token") is not None
        if (sent_token and not check_csrf(request, form)) or not same_origin(request):
            console.audit.record(
                "sign_in", user=username[:64], outcome="refused_csrf", method="local", client=client
            )
            return PlainTextResponse("invalid or missing CSRF token", status_code=403)
        keys = (f"user:{username.lower()}", f"client:{client}")
        if console.lockout.locked(*keys):
            console.metrics.sign_ins.labels("local", "locked").inc()
            console.audit.record(
                "sign_in", user=username[:64], outcome="locked", method="local", client=client
            )
            return page(
                request,
                "login.html",
                status=429,
                oidc=console.oidc is not None,
                error="Too many failed sign-ins: try again later.",
            )
        if not username or not password:
            return page(
                request,
                "login.html",
                status=400,
                oidc=console.oidc is not None,
                error="Enter a user name and a password.",
            )
        user = await asyncio.to_thread(console.users.verify, username, password)
        if user is None:
            console.lockout.fail(*keys)
            console.metrics.sign_ins.labels("local", "failed").inc()
            console.audit.record(
                "sign_in", user=username[:64], outcome="failed", method="local", client=client
            )
            return page(
                request,
                "login.html",
                status=401,
                oidc=console.oidc is not None,
                error="Wrong user name or password.",
            )
        console.lockout.succeed(*keys)
        target = request.session.get("next")
        sign_in(request, user, "local")
        console.metrics.sign_ins.labels("local", "ok").inc()
        console.audit.record("sign_in", user=user.name, outcome="ok", method="local", client=client)
        if not isinstance(target, str) or not target.startswith("/") or target.startswith("//"):
            target = "/"
        return RedirectResponse(target, status_code=303)

    async def logout(request: Request) -> Response:
        form = await request.form()
        user = current_user(request)
        if not check_csrf(request, form):
            return PlainTextResponse("invalid or missing CSRF token", status_code=403)
        if user is not None:
            console.audit.record(
                "sign_out", user=user.name, outcome="ok", method=request.session.get("method")
            )
        sign_out(request)
        return RedirectResponse("/login", status_code=303)

    def _oidc_user(request: Request) -> bool:
        return request.session.get("method") == "oidc"

    async def oidc_start(request: Request) -> Response:
        if console.oidc is None:
            return PlainTextResponse("OpenID Connect is not configured", status_code=404)
        return await console.oidc.redirect(request)

    async def oidc_callback(request: Request) -> Response:
        if console.oidc is None:
            return PlainTextResponse("OpenID Connect is not configured", status_code=404)
        client = _client(request)
        try:
            user = await console.oidc.user(request)
        except PermissionError as exc:
            console.metrics.sign_ins.labels("oidc", "failed").inc()
            console.audit.record(
                "sign_in", user="(oidc)", outcome="failed", method="oidc", client=client
            )
            return PlainTextResponse(f"sign-in refused: {exc}", status_code=403)
        sign_in(request, user, "oidc")
        console.metrics.sign_ins.labels("oidc", "ok").inc()
        console.audit.record("sign_in", user=user.name, outcome="ok", method="oidc", client=client)
        return RedirectResponse("/", status_code=303)

    # --- board -----------------------------------------------------------------------------
    async def board(request: Request) -> Response:
        params = request.query_params
        sort = params.get("sort", "severity")
        unit = params.get("unit", "")
        severity = params.get("severity", "all")
        try:
            rows = console.ward.rows(sort=sort, unit=unit, severity=severity)
        except ValueError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        clock = console.ward.clock
        return page(
            request,
            "board.html",
            rows=rows,
            units=console.ward.units(),
            sort=sort,
            unit=unit,
            severity=severity,
            clock=clock,
            clock_s=None if clock is None else clock.timestamp(),
            caught_up=console.feed is None or console.feed.caught_up.is_set(),
        )

    row_template = templates.get_template("_row.html")

    def render_row(row: Row) -> str:
        return row_template.render(row=row, ago=_ago, icon=_SEVERITY_ICON)

    async def events(request: Request) -> Response:
        if current_user(request) is None:
            return PlainTextResponse("sign in first", status_code=401)
        queue = console.hub.subscribe()
        console.metrics.streams.set(console.hub.subscribers)

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        changed, received = await asyncio.wait_for(queue.get(), timeout=15)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    while not queue.empty():
                        more, _ = queue.get_nowait()
                        changed |= more
                    clock = console.ward.clock
                    for patient_id in changed:
                        view = console.ward.patients.get(patient_id)
                        if view is None:
                            continue
                        data = {
                            "id": patient_id,
                            "html": render_row(console.ward.row(view)),
                            "clock": None if clock is None else clock.timestamp(),
                        }
                        yield f"event: row\ndata: {json.dumps(data)}\n\n"
                    console.metrics.push_seconds.observe(time.monotonic() - received)
            finally:
                console.hub.unsubscribe(queue)
                console.metrics.streams.set(console.hub.subscribers)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    # --- patient ---------------------------------------------------------------------------
    async def patient(request: Request) -> Response:
        patient_id = request.path_params["patient_id"]
        view = console.ward.patients.get(patient_id)
        if view is None:
            return page(request, "missing.html", status=404, patient_id=patient_id)
        chart = patient_chart(view, console.ward.history)
        user = current_user(request)
        return page(
            request,
            "patient.html",
            view=view,
            row=console.ward.row(view),
            chart=chart,
            can_act=user is not None and can_act(user.role),
            sent=request.query_params.get("sent"),
        )

    async def act(request: Request) -> Response:
        patient_id = request.path_params["patient_id"]
        alert_id = request.path_params["alert_id"]
        user = current_user(request)
        if user is None:  # signed_in() let it through: cannot happen
            return PlainTextResponse("sign in first", status_code=401)
        form = await request.form()
        action = str(form.get("action", ""))
        if not check_csrf(request, form):
            console.audit.record(
                "alert_action",
                user=user.name,
                outcome="refused_csrf",
                action=action[:32],
                patient_id=patient_id,
                alert_id=alert_id,
            )
            return PlainTextResponse("invalid or missing CSRF token", status_code=403)
        if not can_act(user.role):
            console.audit.record(
                "alert_action",
                user=user.name,
                outcome="forbidden",
                action=action,
                patient_id=patient_id,
                alert_id=alert_id,
            )
            return PlainTextResponse(
                f"role {user.role} cannot act on alerts (clinician or admin)", status_code=403
            )
        view = console.ward.patients.get(patient_id)
        alert = None if view is None else view.alerts.get(alert_id)
        if view is None or alert is None or alert.state == "resolved":
            return PlainTextResponse("no such active alert for this patient", status_code=404)
        at = datetime.now(UTC)
        if settings.ack_clock == "event" and view.last_time is not None:
            at = view.last_time
        try:
            ack = build_ack(
                patient_id=patient_id,
                alert_id=alert_id,
                action=action,
                user=user.name,
                reason=str(form.get("reason", "")),
                snooze_minutes=_text(form.get("snooze_minutes")),
                at=at,
            )
        except ActionError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        started = time.monotonic()
        try:
            if console.producer is None:
                raise KafkaError("no Kafka producer")
            await console.producer.send_and_wait(
                settings.topic("acks"),
                ack.model_dump_json().encode(),
                key=patient_id.encode(),
            )
        except KafkaError as exc:
            console.metrics.actions.labels(action, "failed").inc()
            console.audit.record(
                "alert_action",
                user=user.name,
                outcome="failed",
                action=action,
                patient_id=patient_id,
                alert_id=alert_id,
                ack_id=ack.ack_id,
            )
            _log.warning("action not sent: %s", type(exc).__name__)
            return PlainTextResponse("the action could not be sent (Kafka): try again", 503)
        console.metrics.action_seconds.observe(time.monotonic() - started)
        console.metrics.actions.labels(action, "sent").inc()
        console.audit.record(
            "alert_action",
            user=user.name,
            outcome="sent",
            action=action,
            patient_id=patient_id,
            alert_id=alert_id,
            ack_id=ack.ack_id,
        )
        return RedirectResponse(
            f"/patients/{quote(patient_id)}?sent={action}#alert-{alert_id}", status_code=303
        )

    async def finding_image(request: Request) -> Response:
        patient_id = request.path_params["patient_id"]
        finding_id = request.path_params["finding_id"]
        view = console.ward.patients.get(patient_id)
        finding = None
        if view is not None:
            finding = next((f for f in view.findings if f.finding_id == finding_id), None)
        if view is None or finding is None:
            return PlainTextResponse("no such finding", status_code=404)
        image = await asyncio.to_thread(
            overlay_png,
            finding,
            view.images.get(finding.study_id),
            settings.artifact_dir,
            settings.imaging_file_root,
        )
        if image is None:
            return PlainTextResponse("no heatmap for this finding", status_code=404)
        return Response(image, media_type="image/png", headers={"cache-control": "no-store"})

    # --- service ---------------------------------------------------------------------------
    async def health(request: Request) -> Response:
        ready = console.feed is None or console.feed.caught_up.is_set()
        return JSONResponse(
            {"status": "ok" if ready else "starting", "patients": len(console.ward.patients)},
            status_code=200,
        )

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(console.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = []
        if console.feed is not None:
            tasks.append(asyncio.create_task(console.feed.run(), name="vigil-console-feed"))
        if console.producer_factory is not None:
            console.producer = console.producer_factory()
            await console.producer.start()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if console.producer is not None:
                await console.producer.stop()

    secret = (
        settings.session_secret.get_secret_value()
        if settings.session_secret is not None
        else secrets.token_urlsafe(48)
    )
    routes = [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/login/oidc", oidc_start, methods=["GET"]),
        Route("/auth/callback", oidc_callback, methods=["GET"], name="oidc_callback"),
        Route("/logout", logout, methods=["POST"]),
        Route("/", signed_in(board), methods=["GET"]),
        Route("/events", events, methods=["GET"]),
        Route("/patients/{patient_id}", signed_in(patient), methods=["GET"]),
        Route("/patients/{patient_id}/alerts/{alert_id}/actions", signed_in(act), methods=["POST"]),
        Route(
            "/patients/{patient_id}/findings/{finding_id}.png",
            signed_in(finding_image),
            methods=["GET"],
        ),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=secret,
            session_cookie="vigil_console",
            max_age=int(timedelta(hours=settings.session_hours).total_seconds()),
            same_site="lax",
            https_only=settings.tls,
        )
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
