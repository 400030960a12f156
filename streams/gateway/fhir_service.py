"""FHIR R4 REST in: ``POST <base>/Observation``, ``POST <base>/Encounter`` and
``POST <base>`` with a batch or transaction Bundle.

Answers, all ``application/fhir+json``:

- **201** (a resource) or **200** (a Bundle: ``batch-response``/``transaction-response``,
  one entry per entry) once Kafka acknowledged every event;
- **400** (not a valid FHIR resource) or **422** (valid, but not something Vigil can use) with
  an OperationOutcome whose issue names the element by FHIRPath; the body goes to
  dead-letter with the reason first. A transaction with one bad entry is refused whole; a
  batch answers each entry on its own;
- **413** over the size limit, **415** for a body that is not JSON, **503** (``transient``,
  ``Retry-After``) when Kafka does not acknowledge.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.observation import Observation as FhirObservation

from streams.core.events import TopicKind
from streams.core.validation import dead_letter
from streams.gateway.codemap import CodeMap
from streams.gateway.fhir_map import (
    BundleEntry,
    FhirError,
    bundle_entries,
    encounter_events,
    observation_events,
    parse,
)
from streams.gateway.hl7_map import GatewayEvent
from streams.gateway.metrics import GatewayMetrics
from streams.gateway.sink import KafkaSink, Record
from vigil.errors import TopicError

__all__ = ["FHIR_JSON", "FhirService", "operation_outcome"]

FHIR_JSON: Final = "application/fhir+json"
_PROTOCOL: Final = "fhir"
_ACCEPTED_TYPES: Final = frozenset({"application/fhir+json", "application/json"})
_log = logging.getLogger(__name__)


def operation_outcome(issues: Sequence[tuple[str, str, str | None]]) -> dict[str, Any]:
    """An OperationOutcome of ``(issue type, diagnostics, FHIRPath or None)`` issues."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": code, "diagnostics": text}
            | ({"expression": [where]} if where else {})
            for code, text, where in issues
        ],
    }


def _reply(status: int, body: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type=FHIR_JSON, headers=headers or None
    )


class FhirService:
    """The FHIR POST handlers (see the module docstring)."""

    def __init__(
        self,
        sink: KafkaSink,
        metrics: GatewayMetrics,
        *,
        base: str,
        codes: CodeMap,
        source: str,
        max_bytes: int,
        deadletter_max_payload_bytes: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sink = sink
        self._metrics = metrics
        self._base = base
        self._codes = codes
        self._source = source
        self._max_bytes = max_bytes
        self._max_payload = deadletter_max_payload_bytes
        self._clock = clock

    def routes(self) -> list[web.RouteDef]:
        """The POST routes under the FHIR base."""
        return [
            web.post(f"{self._base}/Observation", self.post_observation),
            web.post(f"{self._base}/Encounter", self.post_encounter),
            web.post(self._base, self.post_bundle),
            web.post(f"{self._base}/", self.post_bundle),
        ]

    async def post_observation(self, request: web.Request) -> web.Response:
        """``POST <base>/Observation``."""
        return await self._single(request, "Observation")

    async def post_encounter(self, request: web.Request) -> web.Response:
        """``POST <base>/Encounter``."""
        return await self._single(request, "Encounter")

    async def post_bundle(self, request: web.Request) -> web.Response:
        """``POST <base>`` with a batch or transaction Bundle."""
        started = time.perf_counter()
        body, refusal = await self._body(request)
        if refusal is not None:
            return self._count("Bundle", refusal, started)
        try:
            bundle = parse(body, "Bundle")
            assert isinstance(bundle, Bundle)  # noqa: S101 (parse returns the type asked)
            entries = bundle_entries(bundle, source=self._source, codes=self._codes)
        except FhirError as problem:
            return self._count("Bundle", await self._refuse(body, problem, request, 400), started)
        problems = [e.problem for e in entries if e.problem is not None]
        if bundle.type == "transaction" and problems:
            issues = [(p.code, p.detail, p.expression) for p in problems]
            response = await self._refuse(body, problems[0], request, 422, issues)
            return self._count("Bundle", response, started)
        events = [event for entry in entries for event in entry.events]
        for refused in problems:  # a batch's refused entries go to dead-letter one by one
            stored = await self._dead_letter(body, refused, request)
            if stored is not None:
                return self._count("Bundle", stored, started)
        unavailable = await self._deliver(events)
        if unavailable is not None:
            return self._count("Bundle", unavailable, started)
        reply = {
            "resourceType": "Bundle",
            "type": f"{bundle.type}-response",
            "entry": [_entry_response(entry) for entry in entries],
        }
        return self._count("Bundle", _reply(200, reply), started)

    async def _single(self, request: web.Request, resource_type: str) -> web.Response:
        started = time.perf_counter()
        body, refusal = await self._body(request)
        if refusal is not None:
            return self._count(resource_type, refusal, started)
        try:
            resource = parse(body, resource_type)
        except FhirError as problem:
            return self._count(
                resource_type, await self._refuse(body, problem, request, 400), started
            )
        try:
            events = self._events(resource)
        except FhirError as problem:
            return self._count(
                resource_type, await self._refuse(body, problem, request, 422), started
            )
        unavailable = await self._deliver(events)
        if unavailable is not None:
            return self._count(resource_type, unavailable, started)
        location = f"{self._base}/{resource_type}/{events[0].event.event_id}"
        return self._count(
            resource_type,
            web.Response(
                status=201, body=body, content_type=FHIR_JSON, headers={"Location": location}
            ),
            started,
        )

    def _events(self, resource: FhirObservation | Encounter | Bundle) -> list[GatewayEvent]:
        if isinstance(resource, FhirObservation):
            return observation_events(resource, source=self._source)
        if isinstance(resource, Encounter):
            return encounter_events(resource, source=self._source, codes=self._codes)
        raise TypeError("a Bundle is posted to the base")

    async def _body(self, request: web.Request) -> tuple[bytes, web.Response | None]:
        if request.content_type not in _ACCEPTED_TYPES:
            outcome = operation_outcome([("not-supported", "send application/fhir+json", None)])
            return b"", _reply(415, outcome)
        if request.content_length is not None and request.content_length > self._max_bytes:
            return b"", _too_large(self._max_bytes)
        try:
            return await request.read(), None
        except web.HTTPRequestEntityTooLarge:
            return b"", _too_large(self._max_bytes)

    async def _dead_letter(
        self, body: bytes, problem: FhirError, request: web.Request
    ) -> web.Response | None:
        record = dead_letter(
            problem,
            topic=_PROTOCOL,
            partition=None,
            offset=None,
            key=None,
            raw=body,
            received_time=self._clock(),
            max_payload_bytes=self._max_payload,
        )
        origin = request.remote or "unknown"
        detail = f"{problem.detail} (FHIR {request.method} {request.path} from {origin})"
        record = record.model_copy(update={"detail": detail[:2000]})
        try:
            await self._sink.deliver(
                [Record(TopicKind.DEADLETTER.value, None, record.model_dump_json().encode())]
            )
        except TopicError as error:
            _log.warning("503 to %s (dead-letter not stored): %s", origin, error)
            return _unavailable()
        self._metrics.deadletters.labels(_PROTOCOL, problem.reason).inc()
        return None

    async def _refuse(
        self,
        body: bytes,
        problem: FhirError,
        request: web.Request,
        status: int,
        issues: Sequence[tuple[str, str, str | None]] | None = None,
    ) -> web.Response:
        unavailable = await self._dead_letter(body, problem, request)
        if unavailable is not None:
            return unavailable
        _log.info("%d to %s: %s", status, request.remote, problem.reason)
        outcome = operation_outcome(issues or [(problem.code, problem.detail, problem.expression)])
        return _reply(status, outcome)

    async def _deliver(self, events: list[GatewayEvent]) -> web.Response | None:
        try:
            await self._sink.deliver([Record(e.kind.value, e.key, e.payload) for e in events])
        except TopicError as error:
            _log.warning("503 (Kafka): %s", error)
            return _unavailable()
        return None

    def _count(self, resource_type: str, response: web.Response, started: float) -> web.Response:
        self._metrics.fhir_requests.labels(resource_type, str(response.status)).inc()
        self._metrics.ack_seconds.labels(_PROTOCOL).observe(time.perf_counter() - started)
        return response


def _too_large(limit: int) -> web.Response:
    return _reply(413, operation_outcome([("too-costly", f"the body exceeds {limit} bytes", None)]))


def _unavailable() -> web.Response:
    outcome = operation_outcome([("transient", "Kafka unavailable: nothing accepted, retry", None)])
    return _reply(503, outcome, **{"Retry-After": "5"})


def _entry_response(entry: BundleEntry) -> dict[str, Any]:
    problem = entry.problem
    if problem is None:
        return {"response": {"status": "201 Created" if entry.events else "200 OK"}}
    outcome = operation_outcome([(problem.code, problem.detail, problem.expression)])
    return {"response": {"status": "422 Unprocessable Entity", "outcome": outcome}}
