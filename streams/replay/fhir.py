"""FHIR R4 Bundles of Observation resources (vital-signs profile, LOINC) as replay events.

Bundles are parsed and validated with ``fhir.resources`` (its R4B models, which read R4
Observations). Each Observation becomes one observation per LOINC-coded quantity, itself
or, for a panel such as blood pressure (85354-9), its components:

- the code: the first ``http://loinc.org`` coding that Vigil knows
  (:func:`streams.core.codes.by_loinc`), the pulse-oximetry 59408-5 winning over the
  2708-6 that the profile requires beside it; an Observation without one is skipped and counted
  in a warning, as are those ``entered-in-error`` or ``cancelled`` and those without a
  quantity (a ``dataAbsentReason``);
- the patient id: the ``subject`` reference's id (``Patient/123`` → ``123``; a
  ``urn:uuid:`` reference to a Patient entry of the bundle → that Patient's id, else the
  uuid);
- the event time: ``effectiveDateTime`` (or ``effectivePeriod.start``), with its offset;
- value and unit: ``valueQuantity.value`` and its UCUM ``code`` (or, failing that, its
  ``unit`` text) when :mod:`streams.core.units` accepts it for the code. The unit is sent
  as written: converting is the worker's job.

Observations of one patient at one time are grouped into one event per topic (vitals,
labs), as a bedside integration would send them. Event ids are derived from the
Observations' ids, so replaying a bundle twice produces the same ids. No ADT events are
sent: the worker takes a patient's first observation as the admission time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.observation import Observation as FhirObservation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference

from streams.core.codes import Category, CodeInfo, by_loinc
from streams.core.events import Observation, ObservationEvent, TopicKind
from streams.core.units import accepted_units, normalise
from streams.replay.event import ReplayEvent, one_line, replay_event
from vigil.errors import ConfigError, SchemaError

__all__ = [
    "effective_time",
    "loinc_info",
    "quantity_observation",
    "read_fhir",
    "subject_id",
]

_LOINC = "http://loinc.org"
_SOURCE = "fhir-replay"
_SKIPPED_STATUSES = frozenset({"entered-in-error", "cancelled"})
# The vital-signs pulse-oximetry profile codes SpO2 as 2708-6 (arterial O2 saturation)
# plus 59408-5: a more specific code beside one of these wins.
_PROFILE_BASE_CODES = frozenset({"2708-6"})
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Measured:
    patient_id: str
    at: datetime
    info: CodeInfo
    observation: Observation
    identity: str


class _Skip(Exception):  # noqa: N818 (control flow, never leaves this module)
    """An Observation Vigil cannot use (no known code, no quantity): skipped, not fatal."""


def read_fhir(path: Path) -> list[ReplayEvent]:
    """Read one FHIR R4 Bundle (JSON) of Observations into time-ordered input events.

    Raises:
        ConfigError: The file cannot be read, is not a Bundle, or has an Observation
            Vigil cannot place (no subject or time, a unit not accepted for its code);
            the message names the file and the entry.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: unreadable: {exc}") from exc
    try:
        bundle = Bundle.model_validate_json(text)
    except ValueError as exc:
        raise ConfigError(f"{path.name}: not a FHIR R4 Bundle: {one_line(exc)}") from exc
    patients = {
        entry.fullUrl: entry.resource.id
        for entry in bundle.entry or []
        if isinstance(entry.resource, Patient) and entry.fullUrl and entry.resource.id
    }
    measured: list[_Measured] = []
    skipped: dict[str, int] = {}
    for index, entry in enumerate(bundle.entry or []):
        resource = entry.resource
        if not isinstance(resource, FhirObservation):
            continue
        identity = resource.id or entry.fullUrl or f"{path.name}#{index}"
        try:
            measured.extend(_measure(resource, identity, patients))
        except _Skip as skip:
            skipped[str(skip)] = skipped.get(str(skip), 0) + 1
        except (ValueError, SchemaError) as exc:
            raise ConfigError(
                f"{path.name}: entry {index} (Observation {identity}): {one_line(exc)}"
            ) from exc
    if skipped:
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items()))
        _log.warning("%s: skipped Observations: %s", path.name, reasons)
    try:
        return _events(measured)
    except ValueError as exc:
        raise ConfigError(f"{path.name}: {one_line(exc)}") from exc


def _measure(resource: FhirObservation, identity: str, patients: dict[str, str]) -> list[_Measured]:
    if resource.status in _SKIPPED_STATUSES:
        raise _Skip(f"with status {resource.status}")
    parts = [(resource.code, resource.valueQuantity)]
    parts += [(c.code, c.valueQuantity) for c in resource.component or []]
    quantities = [
        (info, quantity)
        for concept, quantity in parts
        if quantity is not None and (info := loinc_info(concept)) is not None
    ]
    if not quantities:
        raise _Skip("without a LOINC-coded quantity Vigil knows")
    patient_id = subject_id(resource.subject, patients)
    at = effective_time(resource)
    return [
        _Measured(patient_id, at, info, quantity_observation(info, quantity), identity)
        for info, quantity in quantities
    ]


def loinc_info(concept: CodeableConcept | None) -> CodeInfo | None:
    """The Vigil code of the first LOINC coding Vigil knows (a specific code beating the
    profile's base code), or None."""
    known: list[CodeInfo] = []
    for coding in (concept.coding if concept is not None else None) or []:
        if coding.system == _LOINC and coding.code is not None:
            with contextlib.suppress(SchemaError):
                known.append(by_loinc(coding.code))
    specific = [info for info in known if info.loinc not in _PROFILE_BASE_CODES]
    chosen = specific or known
    return chosen[0] if chosen else None


def subject_id(subject: Reference | None, patients: dict[str, str]) -> str:
    """The patient id of a ``subject`` reference (``patients``: bundle fullUrl -> id).

    Raises:
        ValueError: No reference.
    """
    reference = subject.reference if subject is not None else None
    if not reference:
        raise ValueError("no subject reference")
    if reference in patients:
        return patients[reference]
    reference = reference.split("/_history/")[0]
    return reference.rsplit("/", 1)[-1].rsplit(":", 1)[-1]


def effective_time(resource: FhirObservation) -> datetime:
    """``effectiveDateTime`` (or ``effectivePeriod.start``), timezone-aware.

    Raises:
        ValueError: Neither, or no time of day and offset.
    """
    at: object = resource.effectiveDateTime
    if at is None and resource.effectivePeriod is not None:
        at = resource.effectivePeriod.start
    if not isinstance(at, datetime) or at.tzinfo is None:
        raise ValueError("no effectiveDateTime with a time of day and an offset")
    return at


def quantity_observation(info: CodeInfo, quantity: Quantity) -> Observation:
    """The observation of ``quantity``, its unit as written (UCUM code, else unit text).

    Raises:
        ValueError: No value, or a unit not accepted for the code.
    """
    if quantity.value is None:
        raise ValueError(f"{info.code}: valueQuantity has no value")
    value = float(Decimal(quantity.value))
    for unit in (quantity.code, quantity.unit):
        if unit is None:
            continue
        try:
            normalise(info.code, value, unit)
        except SchemaError:
            continue
        return Observation(code=info.code, value=value, unit=unit)
    raise ValueError(
        f"{info.code}: unit {quantity.code or quantity.unit!r} is not accepted; "
        f"use one of {accepted_units(info.code)}"
    )


def _events(measured: list[_Measured]) -> list[ReplayEvent]:
    groups: dict[tuple[datetime, str, TopicKind], list[list[_Measured]]] = {}
    for item in measured:
        kind = TopicKind.LABS if item.info.category is Category.LAB else TopicKind.VITALS
        batches = groups.setdefault((item.at, item.patient_id, kind), [[]])
        if any(m.observation.code == item.observation.code for m in batches[-1]):
            batches.append([])  # the same code twice at one time: a second event
        batches[-1].append(item)
    events: list[ReplayEvent] = []
    for (at, patient_id, kind), batches in sorted(groups.items()):
        for batch in batches:
            digest = hashlib.sha256(
                "\x1f".join(
                    [patient_id, at.isoformat(), kind.value, *(m.identity for m in batch)]
                ).encode()
            ).hexdigest()[:24]
            event = ObservationEvent(
                event_id=f"fhir-{digest}",
                patient_id=patient_id,
                event_time=at,
                source=_SOURCE,
                observations=tuple(m.observation for m in batch),
            )
            events.append(replay_event(event, kind, len(events)))
    events.sort()
    return events
