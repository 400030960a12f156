"""FHIR R4 REST out, as ``searchset`` Bundles:

- ``GET <base>/RiskAssessment?subject=…[&_count=N]``: the patient's scores, newest first:
  the history followed from the ``scores`` topic (:mod:`streams.gateway.history`) and the
  latest score in the worker's Redis cache;
- ``GET <base>/Flag?subject=…[&status=active]``: the patient's open alerts, from Redis
  (:mod:`streams.adapters.redis_store`'s key layout).

An unknown patient gives an empty Bundle; Redis down gives 503 (unless the history alone
can answer).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from typing import Any, Final

import redis.asyncio as aioredis
from aiohttp import web
from pydantic import ValidationError
from redis.exceptions import RedisError

from streams.core.events import AlertRecord, ScoreRecord
from streams.gateway.fhir_out import flag, risk_assessment, searchset
from streams.gateway.fhir_service import FHIR_JSON, operation_outcome
from streams.gateway.history import ScoreHistory
from streams.gateway.metrics import GatewayMetrics

__all__ = ["FhirReader"]

_DEFAULT_COUNT: Final = 100
_MAX_COUNT: Final = 1000
_PATIENT: Final = re.compile(r"^(?:Patient/)?([A-Za-z0-9][A-Za-z0-9._:-]{0,63})$")
_log = logging.getLogger(__name__)


def _reply(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type=FHIR_JSON)


class FhirReader:
    """The FHIR GET handlers (see the module docstring)."""

    def __init__(
        self,
        client: aioredis.Redis,
        history: ScoreHistory,
        metrics: GatewayMetrics,
        *,
        base: str,
        prefix: str,
    ) -> None:
        self._redis = client
        self._history = history
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
        """``subject``'s RiskAssessments, newest first: the history followed from the
        scores topic, and Redis's latest score (``_count`` limits, default 100)."""
        patient = self._patient(request, "RiskAssessment")
        if isinstance(patient, web.Response):
            return patient
        count_text = request.query.get("_count", str(_DEFAULT_COUNT))
        if not count_text.isdigit() or not 1 <= int(count_text) <= _MAX_COUNT:
            outcome = operation_outcome(
                [("value", f"_count must be 1-{_MAX_COUNT}", "RiskAssessment._count")]
            )
            return self._count("RiskAssessment", _reply(400, outcome))
        scores = self._history.scores(patient)
        try:
            raw = await self._redis.get(f"{self._prefix}:patient:{patient}:score")
        except RedisError as error:
            if not scores:
                return self._unavailable("RiskAssessment", error)
            raw = None  # the history alone still answers
        if raw is not None:
            try:
                scores.append(ScoreRecord.model_validate_json(raw))
            except ValidationError:
                _log.warning("unreadable score in Redis (skipped)")
        unique: dict[str, tuple[datetime, dict[str, Any]]] = {}
        for score in scores:
            resource = risk_assessment(score)
            unique.setdefault(resource["id"], (score.event_time, resource))
        newest = sorted(unique.values(), key=lambda pair: pair[0], reverse=True)
        resources = [resource for _, resource in newest[: int(count_text)]]
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
