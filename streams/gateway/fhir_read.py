"""FHIR R4 REST out: ``GET <base>/RiskAssessment?subject=…`` (the patient's latest score)
and ``GET <base>/Flag?subject=…[&status=active]`` (the patient's open alerts), read from the
worker's Redis cache (:mod:`streams.adapters.redis_store`'s key layout) and answered as
``searchset`` Bundles. A patient Redis does not know gives an empty Bundle; Redis down
gives 503.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Final

import redis.asyncio as aioredis
from aiohttp import web
from pydantic import ValidationError
from redis.exceptions import RedisError

from streams.core.events import AlertRecord, ScoreRecord
from streams.gateway.fhir_out import flag, risk_assessment, searchset
from streams.gateway.fhir_service import FHIR_JSON, operation_outcome
from streams.gateway.metrics import GatewayMetrics

__all__ = ["FhirReader"]

_PATIENT: Final = re.compile(r"^(?:Patient/)?([A-Za-z0-9][A-Za-z0-9._:-]{0,63})$")
_log = logging.getLogger(__name__)


def _reply(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type=FHIR_JSON)


class FhirReader:
    """The FHIR GET handlers (see the module docstring)."""

    def __init__(
        self, client: aioredis.Redis, metrics: GatewayMetrics, *, base: str, prefix: str
    ) -> None:
        self._redis = client
        self._metrics = metrics
        self._base = base
        self._prefix = prefix

    def routes(self) -> list[web.RouteDef]:
        """The GET routes under the FHIR base."""
        return [
            web.get(f"{self._base}/RiskAssessment", self.risk_assessments),
            web.get(f"{self._base}/Flag", self.flags),
        ]

    def _patient(self, request: web.Request, resource: str) -> str | web.Response:
        match = _PATIENT.fullmatch(request.query.get("subject", ""))
        if match is None:
            outcome = operation_outcome(
                [
                    (
                        "required",
                        "search parameter subject=Patient/<id> is required",
                        f"{resource}.subject",
                    )
                ]
            )
            return self._count(resource, _reply(400, outcome))
        return match.group(1)

    async def risk_assessments(self, request: web.Request) -> web.Response:
        """The latest RiskAssessment of ``subject``."""
        patient = self._patient(request, "RiskAssessment")
        if isinstance(patient, web.Response):
            return patient
        try:
            raw = await self._redis.get(f"{self._prefix}:patient:{patient}:score")
        except RedisError as error:
            return self._unavailable("RiskAssessment", error)
        resources = []
        if raw is not None:
            try:
                resources.append(risk_assessment(ScoreRecord.model_validate_json(raw)))
            except ValidationError:
                _log.warning("unreadable score in Redis (skipped)")
        return self._count("RiskAssessment", _reply(200, searchset(resources, self._base)))

    async def flags(self, request: web.Request) -> web.Response:
        """The Flags of ``subject``'s open alerts (``status`` filters)."""
        patient = self._patient(request, "Flag")
        if isinstance(patient, web.Response):
            return patient
        wanted = request.query.get("status")
        if wanted not in (None, "active", "inactive"):
            outcome = operation_outcome(
                [("value", "status must be active or inactive", "Flag.status")]
            )
            return self._count("Flag", _reply(400, outcome))
        try:
            stored = await self._redis.hvals(f"{self._prefix}:patient:{patient}:alerts")
        except RedisError as error:
            return self._unavailable("Flag", error)
        resources = []
        for raw in stored:
            try:
                resource = flag(AlertRecord.model_validate_json(raw))
            except ValidationError:
                _log.warning("unreadable alert in Redis (skipped)")
                continue
            if wanted is None or resource["status"] == wanted:
                resources.append(resource)
        resources.sort(key=lambda r: str(r["period"]["start"]))
        return self._count("Flag", _reply(200, searchset(resources, self._base)))

    def _unavailable(self, resource: str, error: RedisError) -> web.Response:
        _log.warning("503 (Redis): %s", type(error).__name__)
        outcome = operation_outcome([("transient", "Redis unavailable, retry", None)])
        return self._count(resource, _reply(503, outcome))

    def _count(self, resource: str, response: web.Response) -> web.Response:
        self._metrics.fhir_requests.labels(resource, str(response.status)).inc()
        return response
