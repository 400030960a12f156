"""FHIR R4 Observation, Encounter and Bundle bodies as Vigil input events. Pure: no I/O.

Bodies are validated with ``fhir.resources`` (R4B models, which read R4). Observations map
as ``vigil replay --format fhir`` maps them (:mod:`streams.replay.fhir`: LOINC code, the
subject's id, ``effectiveDateTime``, the quantity's UCUM unit), except that what the replay
skips is refused here, since a sender can fix it: no LOINC code Vigil knows, no quantity,
status ``entered-in-error`` or ``cancelled``. An Encounter ``in-progress`` (or ``arrived``,
``triaged``) admits at ``period.start``; ``finished`` discharges at ``period.end``; the
care unit is the first location's display text, its ICU type through the code table.

Event ids come from the resource id (``fhir-<type>-<id>``; an Encounter adds its status),
or, without one, from a hash of the body: a resent resource is a duplicate. Every refusal is
a :class:`FhirError` naming the element by its FHIRPath (``Observation.valueQuantity``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.observation import Observation as FhirObservation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.reference import Reference
from pydantic import ValidationError

from streams.core.codes import Category
from streams.core.events import (
    AdtEvent,
    DeadLetterReason,
    Observation,
    ObservationEvent,
    TopicKind,
)
from streams.gateway.codemap import CodeMap
from streams.gateway.hl7_map import GatewayEvent
from streams.replay.fhir import effective_time, loinc_info, quantity_observation, subject_id
from vigil.errors import MessageError

__all__ = [
    "BundleEntry",
    "FhirError",
    "bundle_entries",
    "encounter_events",
    "observation_events",
    "parse",
]

_ADMITTING: Final = frozenset({"in-progress", "arrived", "triaged"})
_REFUSED_STATUSES: Final = frozenset({"entered-in-error", "cancelled"})
_SEX: Final[dict[str, Literal["female", "male", "other"]]] = {
    "female": "female",
    "male": "male",
    "other": "other",
}


class FhirError(MessageError):
    """A FHIR body Vigil refuses; ``expression`` is the FHIRPath of the element at fault.

    Args:
        reason: Dead-letter reason.
        detail: What is wrong (no values).
        expression: FHIRPath, for example ``Observation.valueQuantity.code``.
        code: OperationOutcome issue type (``invalid``, ``not-supported``, ``value`` …).
    """

    def __init__(self, reason: str, detail: str, *, expression: str, code: str = "invalid"):
        super().__init__(reason, detail)
        self.expression = expression
        self.code = code


def _path(resource_type: str, loc: tuple[int | str, ...]) -> str:
    parts = [resource_type]
    for part in loc:
        if isinstance(part, int):
            parts[-1] += f"[{part}]"
        elif part != "resource_type":
            parts.append(str(part))
    return ".".join(parts)


def _validation_problem(resource_type: str, error: ValidationError, prefix: str = "") -> FhirError:
    first = error.errors(include_input=False, include_url=False)[0]
    path = _path(resource_type, tuple(first["loc"]))
    if prefix:
        path = prefix + path[len(resource_type) :]
    reason = (
        DeadLetterReason.MISSING_FIELD
        if "missing" in first["type"]
        else DeadLetterReason.INVALID_FIELD
    )
    message = first["msg"].split("\n")[0][:300]
    return FhirError(reason, f"{path}: {message}", expression=path)


def parse(body: bytes, expected: str) -> FhirObservation | Encounter | Bundle:
    """Validate ``body`` as a FHIR resource of type ``expected``.

    Raises:
        FhirError: Not UTF-8 JSON, another resource type, or invalid.
    """
    models: dict[str, type[FhirObservation | Encounter | Bundle]] = {
        "Observation": FhirObservation,
        "Encounter": Encounter,
        "Bundle": Bundle,
    }
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FhirError(
            DeadLetterReason.INVALID_JSON, "the body is not UTF-8 JSON", expression=expected
        ) from None
    if not isinstance(document, dict) or document.get("resourceType") != expected:
        raise FhirError(
            DeadLetterReason.INVALID_FIELD,
            f"{expected}.resourceType: must be {expected}",
            expression=f"{expected}.resourceType",
        )
    try:
        # The bytes again, in pydantic's JSON mode: the same model and checks, about half
        # the time of validating the decoded dict (the decode above only checks the type).
        return models[expected].model_validate_json(body)
    except ValidationError as error:
        raise _validation_problem(expected, error) from None
    except (ValueError, TypeError) as error:
        raise FhirError(
            DeadLetterReason.INVALID_FIELD,
            f"{expected}: {type(error).__name__}",
            expression=expected,
        ) from None


def _identity(kind: str, resource_id: str | None, resource: Any) -> str:
    if resource_id:
        safe = "".join(c if c.isalnum() or c in ".-" else "-" for c in resource_id)[:64]
        return f"fhir-{kind}-{safe}"
    canonical = json.dumps(resource.model_dump(mode="json"), sort_keys=True)
    return f"fhir-{kind}-h{hashlib.sha256(canonical.encode()).hexdigest()[:24]}"


def _problem(where: str, detail: str, reason: str = DeadLetterReason.INVALID_FIELD) -> FhirError:
    return FhirError(reason, f"{where}: {detail}", expression=where)


def _subject(subject: Reference | None, patients: dict[str, str] | None, where: str) -> str:
    try:
        return subject_id(subject, patients or {})
    except ValueError:
        raise _problem(
            f"{where}.subject", "a Patient reference is required", DeadLetterReason.MISSING_FIELD
        ) from None


def observation_events(
    resource: FhirObservation,
    *,
    source: str,
    patients: dict[str, str] | None = None,
    where: str = "Observation",
) -> list[GatewayEvent]:
    """The events of one Observation (one per topic kind; a panel's components together).

    Raises:
        FhirError: What Vigil cannot use, naming the element.
    """
    if resource.status in _REFUSED_STATUSES:
        raise _problem(f"{where}.status", f"{resource.status} is not a measurement")
    parts = [("", resource.code, resource.valueQuantity)]
    parts += [
        (f".component[{i}]", c.code, c.valueQuantity)
        for i, c in enumerate(resource.component or [])
    ]
    measured: list[tuple[str, Observation, Category]] = []
    for suffix, concept, quantity in parts:
        info = loinc_info(concept)
        if info is None or quantity is None:
            continue
        try:
            measured.append((suffix, quantity_observation(info, quantity), info.category))
        except ValueError as exc:
            raise _problem(
                f"{where}{suffix}.valueQuantity", str(exc), DeadLetterReason.UNKNOWN_UNIT
            ) from None
    if not measured:
        raise _problem(
            f"{where}.code",
            "no LOINC-coded quantity Vigil knows (see docs/gateway.md for the codes)",
            DeadLetterReason.UNKNOWN_CODE,
        )
    patient_id = _subject(resource.subject, patients, where)
    try:
        at = effective_time(resource)
    except ValueError as exc:
        raise _problem(
            f"{where}.effectiveDateTime", str(exc), DeadLetterReason.MISSING_FIELD
        ) from None
    base = _identity("obs", resource.id, resource)
    by_kind: dict[TopicKind, list[Observation]] = {}
    for _, observation, category in measured:
        kind = TopicKind.LABS if category is Category.LAB else TopicKind.VITALS
        by_kind.setdefault(kind, []).append(observation)
    events = []
    for kind, observations in by_kind.items():
        try:
            event = ObservationEvent(
                event_id=f"{base}-{kind.value}",
                patient_id=patient_id,
                event_time=at,
                source=source,
                observations=tuple(observations),
            )
        except ValidationError as error:
            raise _event_problem(error, where) from None
        events.append(GatewayEvent(kind, event))
    return events


def _event_problem(error: ValidationError, where: str) -> FhirError:
    first = error.errors(include_input=False, include_url=False)[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    element = {
        "patient_id": "subject",
        "event_time": "effectiveDateTime" if where.startswith("Observation") else "period",
        "observations": "component",
    }.get(field, field)
    return _problem(f"{where}.{element}", first["msg"])


def _period_time(resource: Encounter, finished: bool, where: str) -> datetime:
    period = resource.period
    at = None if period is None else (period.end if finished else period.start)
    name = f"{where}.period.{'end' if finished else 'start'}"
    if not isinstance(at, datetime) or at.tzinfo is None:
        raise _problem(
            name, "a date-time with an offset is required", DeadLetterReason.MISSING_FIELD
        )
    return at


def encounter_events(
    resource: Encounter,
    *,
    source: str,
    codes: CodeMap,
    patients: dict[str, str] | None = None,
    patient: Patient | None = None,
    where: str = "Encounter",
) -> list[GatewayEvent]:
    """The ADT event of one Encounter (sex and age from ``patient`` when given).

    Raises:
        FhirError: What Vigil cannot use, naming the element.
    """
    status = resource.status
    if status != "finished" and status not in _ADMITTING:
        raise _problem(
            f"{where}.status",
            f"{status} is neither an admission (in-progress, arrived, triaged) nor finished",
        )
    finished = status == "finished"
    at = _period_time(resource, finished, where)
    patient_id = _subject(resource.subject, patients, where)
    care_unit = None
    for location in resource.location or []:
        reference = location.location
        care_unit = (
            (reference.display or reference.reference or "")[:64] or None if reference else None
        )
        break
    age = None
    if patient is not None and patient.birthDate is not None:
        born = patient.birthDate
        age = float(at.year - born.year - ((at.month, at.day) < (born.month, born.day)))
    sex = None if patient is None or patient.gender is None else _SEX.get(patient.gender)
    try:
        event = AdtEvent(
            event_id=f"{_identity('enc', resource.id, resource)}-{status}",
            patient_id=patient_id,
            event_time=at,
            source=source,
            action="discharge" if finished else "admit",
            care_unit=care_unit,
            icu_type=None if care_unit is None else codes.icu_type(care_unit),
            age_years=age,
            sex=sex,
        )
    except ValidationError as error:
        raise _event_problem(error, where) from None
    return [GatewayEvent(TopicKind.ADT, event)]


@dataclass(frozen=True)
class BundleEntry:
    """One entry of a batch or transaction Bundle: its events, or why it was refused."""

    index: int
    events: tuple[GatewayEvent, ...]
    problem: FhirError | None


def bundle_entries(bundle: Bundle, *, source: str, codes: CodeMap) -> list[BundleEntry]:
    """Map each Observation and Encounter entry of a batch or transaction Bundle
    (Patient entries only serve references; anything else is refused per entry).

    Raises:
        FhirError: The Bundle is not a batch or transaction.
    """
    if bundle.type not in ("batch", "transaction"):
        raise _problem(
            "Bundle.type", "must be batch or transaction", DeadLetterReason.INVALID_FIELD
        )
    entries = bundle.entry or []
    patients = {
        entry.fullUrl: entry.resource.id
        for entry in entries
        if isinstance(entry.resource, Patient) and entry.fullUrl and entry.resource.id
    }
    by_reference = {
        ref: entry.resource
        for entry in entries
        if isinstance(entry.resource, Patient)
        for ref in (entry.fullUrl, f"Patient/{entry.resource.id}")
        if ref
    }
    out: list[BundleEntry] = []
    for index, entry in enumerate(entries):
        resource = entry.resource
        where = f"Bundle.entry[{index}].resource"
        try:
            if isinstance(resource, FhirObservation):
                events = observation_events(resource, source=source, patients=patients, where=where)
            elif isinstance(resource, Encounter):
                reference = resource.subject.reference if resource.subject else None
                patient = by_reference.get(reference or "")
                events = encounter_events(
                    resource,
                    source=source,
                    codes=codes,
                    patients=patients,
                    patient=patient,
                    where=where,
                )
            elif isinstance(resource, Patient):
                events = []  # read for references only
            else:
                raise FhirError(
                    DeadLetterReason.INVALID_FIELD,
                    f"{where}: only Observation, Encounter and Patient entries are accepted",
                    expression=where,
                    code="not-supported",
                )
        except FhirError as problem:
            out.append(BundleEntry(index, (), problem))
        else:
            out.append(BundleEntry(index, tuple(events), None))
    return out
