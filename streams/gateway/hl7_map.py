"""HL7 v2 ORU^R01 and ADT^A01/A02/A03/A08 messages as Vigil input events. Pure: no I/O.

- **ORU^R01**: every numeric OBX (value type ``NM``) becomes one observation: the code
  from OBX-3 (LOINC, or the local table of :mod:`streams.gateway.codemap`, alternate coding
  included), the value from OBX-5, the unit from OBX-6 (its identifier, else its text),
  which :func:`streams.core.units.normalise` must accept for the code; the unit is sent as
  written (converting is the worker's job, as for ``vigil replay``). The time is OBX-14,
  else the OBR-7 of its order. Observations of one patient at one time form one event per
  topic (``vitals``, ``labs``), as ``vigil replay`` groups them. OBX with result status
  ``D``, ``W`` or ``X`` (deleted, wrong, cannot be obtained) are left out.
- **ADT**: A01 admits, A02 transfers, A03 discharges and A08 (update patient
  information) is an ``update``: the worker takes its descriptors and care unit and
  changes nothing else. The time is EVN-6, else EVN-2; sex
  from PID-8; age from an OBX with LOINC 30525-0, else from PID-7 (full years at the event
  time); height and weight from OBX (8302-2, 29463-7); the care unit from PV1-3, the ICU
  type from PV1-10 (hospital service) or PV1-3 through the table.

The patient id is PID-3's first identifier (or PV1-19, the visit number, by option).
Event ids are ``hl7-<MSH-10>-<n>``, ``n`` counting the message's events, so a resent
message yields the same ids and the worker drops it as a duplicate. A message it cannot
use raises :class:`~vigil.errors.MessageError` naming the segment and field, never a value.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Final, Literal

from hl7.containers import Message, Segment
from pydantic import ValidationError

from streams.core.codes import Category, CodeInfo
from streams.core.events import AdtEvent, DeadLetterReason, Observation, ObservationEvent, TopicKind
from streams.core.units import accepted_units, normalise
from streams.gateway.codemap import DEFAULT_CODE_MAP, CodeMap
from streams.gateway.hl7_parse import (
    SUPPORTED_VERSIONS,
    field_text,
    hl7_time,
    parse_hl7,
    repetitions,
)
from vigil.errors import MessageError, SchemaError

__all__ = [
    "ADT_ACTIONS",
    "GatewayEvent",
    "MappedMessage",
    "MappingOptions",
    "map_hl7",
    "map_parsed",
]

ADT_ACTIONS: Final[dict[str, Literal["admit", "transfer", "discharge", "update"]]] = {
    "A01": "admit",
    "A02": "transfer",
    "A03": "discharge",
    "A08": "update",
}
_SKIPPED_STATUSES: Final = frozenset({"D", "W", "X"})
_SEX: Final[dict[str, Literal["female", "male", "other"]]] = {
    "M": "male",
    "F": "female",
    "O": "other",
    "A": "other",
    "N": "other",
}
_SAFE_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_DIMENSIONLESS: Final = frozenset({"1", "{score}", "[pH]"})
_DESCRIPTOR_CODES: Final = frozenset({"Age", "Height", "Weight"})


@dataclass(frozen=True, slots=True)
class GatewayEvent:
    """One input event to produce: the topic kind and the record (keyed by patient)."""

    kind: TopicKind
    event: ObservationEvent | AdtEvent

    @property
    def key(self) -> bytes:
        """Kafka key: the patient id."""
        return self.event.patient_id.encode()

    @property
    def payload(self) -> bytes:
        """Kafka value: the record as JSON."""
        return self.event.model_dump_json().encode()


@dataclass(frozen=True, slots=True)
class MappedMessage:
    """What one HL7 message became.

    Attributes:
        control_id: MSH-10.
        message_type: ``ORU^R01``, ``ADT^A01`` …
        events: The events, in the message's order.
        skipped: OBX segments left out (status deleted or cannot obtain; unknown codes
            when the options skip them).
    """

    control_id: str
    message_type: str
    events: tuple[GatewayEvent, ...]
    skipped: int = 0


@dataclass(frozen=True)
class MappingOptions:
    """How messages are read (every default comes from ``GatewaySettings``).

    Attributes:
        codes: Local code table.
        max_message_bytes: Largest message accepted.
        naive_time_zone: Zone of timestamps without an offset; None rejects them.
        unknown_codes: ``reject`` a message with an OBX no table knows, or ``skip`` that OBX.
        patient_id_field: ``PID-3`` (first identifier) or ``PV1-19`` (visit number).
        source: The events' ``source``.
    """

    codes: CodeMap = field(default=DEFAULT_CODE_MAP)
    max_message_bytes: int = 1_048_576
    naive_time_zone: tzinfo | None = None
    unknown_codes: Literal["reject", "skip"] = "reject"
    patient_id_field: Literal["PID-3", "PV1-19"] = "PID-3"
    source: str = "hl7-gateway"


def map_hl7(raw: bytes, options: MappingOptions) -> MappedMessage:
    """Parse and map one HL7 v2 message.

    Raises:
        MessageError: The message cannot be used; ``reason`` is a dead-letter reason and
            ``control_id`` MSH-10 when it could be read.
    """
    return map_parsed(parse_hl7(raw, max_bytes=options.max_message_bytes), options)


def map_parsed(message: Message, options: MappingOptions) -> MappedMessage:
    """Map a parsed message (see :func:`map_hl7`)."""
    msh = message.segment("MSH")
    control_id = field_text(message, msh, 10)
    try:
        return _map(message, msh, control_id, options)
    except MessageError as exc:
        exc.control_id = control_id or None
        raise
    except SchemaError as exc:
        raise MessageError(exc.reason, exc.detail, control_id=control_id or None) from None
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise MessageError(
            DeadLetterReason.INVALID_FIELD, f"{where}: {first['msg']}", control_id=control_id
        ) from None


def _map(message: Message, msh: Segment, control_id: str, options: MappingOptions) -> MappedMessage:
    if not control_id:
        raise MessageError(DeadLetterReason.MISSING_FIELD, "MSH-10 (message control id) is empty")
    kind, trigger = field_text(message, msh, 9, 1, 1), field_text(message, msh, 9, 1, 2)
    message_type = f"{kind}^{trigger}"
    version = field_text(message, msh, 12)
    if not version.startswith(SUPPORTED_VERSIONS):
        raise MessageError(
            DeadLetterReason.INVALID_FIELD,
            f"MSH-12 version is not one of {', '.join(SUPPORTED_VERSIONS)}",
        )
    base = _event_base(control_id)
    if message_type == "ORU^R01":
        events, skipped = _oru(message, base, options)
    elif kind == "ADT" and trigger in ADT_ACTIONS:
        events, skipped = _adt(message, trigger, base, options)
    else:
        raise MessageError(
            DeadLetterReason.INVALID_FIELD,
            "MSH-9 message type is not ORU^R01 or ADT^A01/A02/A03/A08",
        )
    return MappedMessage(control_id, message_type, tuple(events), skipped)


def _event_base(control_id: str) -> str:
    if _SAFE_ID.fullmatch(control_id):
        return f"hl7-{control_id}"
    # An id with characters an event id refuses (or too long) is hashed, still stable.
    return f"hl7-h{hashlib.sha256(control_id.encode()).hexdigest()[:32]}"


def _names(message: Message) -> list[str]:
    return [str(segment[0]) for segment in message]


def _patient_id(message: Message, pid: Segment | None, pv1: Segment | None, option: str) -> str:
    segment, number, name = (pid, 3, "PID-3") if option == "PID-3" else (pv1, 19, "PV1-19")
    value = "" if segment is None else field_text(message, segment, number)
    if not value:
        raise MessageError(DeadLetterReason.MISSING_FIELD, f"{name} (patient id) is empty")
    if not _SAFE_ID.fullmatch(value):
        raise MessageError(
            DeadLetterReason.INVALID_FIELD,
            f"{name} must be 1-64 of [A-Za-z0-9._:-], starting with a letter or digit",
        )
    return value


def _resolve(message: Message, obx: Segment, codes: CodeMap) -> CodeInfo | None:
    for rep in range(1, max(repetitions(obx, 3), 1) + 1):
        for first in (1, 4):  # the identifier, then the alternate identifier
            identifier = field_text(message, obx, 3, rep, first)
            system = field_text(message, obx, 3, rep, first + 2)
            info = codes.resolve(identifier, system)
            if info is not None:
                return info
    return None


def _value(message: Message, obx: Segment, where: str, info: CodeInfo) -> float:
    if field_text(message, obx, 2) != "NM":
        raise MessageError(DeadLetterReason.INVALID_FIELD, f"{where}-2 value type must be NM")
    if repetitions(obx, 5) > 1:
        raise MessageError(DeadLetterReason.INVALID_FIELD, f"{where}-5 has several values")
    text = field_text(message, obx, 5)
    if not text:
        raise MessageError(DeadLetterReason.MISSING_FIELD, f"{where}-5 ({info.code}) is empty")
    try:
        value = float(text)
    except ValueError:
        raise MessageError(
            DeadLetterReason.INVALID_FIELD, f"{where}-5 ({info.code}) is not a number"
        ) from None
    if not math.isfinite(value):
        raise MessageError(DeadLetterReason.NON_FINITE, f"{where}-5 ({info.code}) is not finite")
    return value


def _unit(message: Message, obx: Segment, where: str, info: CodeInfo, value: float) -> str:
    spellings = [field_text(message, obx, 6, 1, 1), field_text(message, obx, 6, 1, 2)]
    written = [s for s in spellings if s]
    if not written and info.unit in _DIMENSIONLESS:
        return info.unit
    for unit in written:
        try:
            normalise(info.code, value, unit)
        except SchemaError as exc:
            if exc.reason == DeadLetterReason.NON_FINITE:
                raise MessageError(exc.reason, f"{where}: {exc.detail}") from None
            continue
        return unit
    raise MessageError(
        DeadLetterReason.UNKNOWN_UNIT,
        f"{where}-6 unit is not accepted for {info.code}; use one of {accepted_units(info.code)}",
    )


@dataclass
class _Batch:
    patient_id: str
    at: datetime
    kind: TopicKind
    observations: list[Observation] = field(default_factory=list)


def _oru(message: Message, base: str, options: MappingOptions) -> tuple[list[GatewayEvent], int]:
    patient: str | None = None
    pv1: Segment | None = None
    pid: Segment | None = None
    order_time: datetime | None = None
    seen_obr = False
    batches: list[_Batch] = []
    open_batches: dict[tuple[str, datetime, TopicKind], _Batch] = {}
    skipped = 0
    for index, segment in enumerate(message):
        name = str(segment[0])
        where = f"{name} {index + 1}"
        if name == "PID":
            pid, pv1, patient, seen_obr, order_time = segment, None, None, False, None
        elif name == "PV1":
            if pid is None:
                raise MessageError(DeadLetterReason.INVALID_FIELD, f"{where} comes before PID")
            pv1 = segment
        elif name == "OBR":
            if pid is None:
                raise MessageError(DeadLetterReason.INVALID_FIELD, f"{where} comes before PID")
            seen_obr = True
            obr_time = field_text(message, segment, 7)
            order_time = (
                hl7_time(obr_time, naive_zone=options.naive_time_zone, name=f"{where}-7")
                if obr_time
                else None
            )
        elif name == "OBX":
            if pid is None or not seen_obr:
                raise MessageError(
                    DeadLetterReason.INVALID_FIELD, f"{where} comes before its PID and OBR"
                )
            if field_text(message, segment, 11) in _SKIPPED_STATUSES:
                skipped += 1
                continue
            info = _resolve(message, segment, options.codes)
            if info is None:
                if options.unknown_codes == "skip":
                    skipped += 1
                    continue
                raise MessageError(
                    DeadLetterReason.UNKNOWN_CODE,
                    f"{where}-3 code is neither a LOINC code Vigil knows nor in the local table",
                )
            if patient is None:
                patient = _patient_id(message, pid, pv1, options.patient_id_field)
            value = _value(message, segment, where, info)
            unit = _unit(message, segment, where, info, value)
            obx_time = field_text(message, segment, 14)
            if obx_time:
                at = hl7_time(obx_time, naive_zone=options.naive_time_zone, name=f"{where}-14")
            elif order_time is not None:
                at = order_time
            else:
                raise MessageError(
                    DeadLetterReason.MISSING_FIELD, f"{where}-14 and its OBR-7 are both empty"
                )
            kind = TopicKind.LABS if info.category is Category.LAB else TopicKind.VITALS
            batch = open_batches.get((patient, at, kind))
            if batch is None or any(o.code == info.code for o in batch.observations):
                batch = _Batch(patient, at, kind)  # the same code twice at one time: a new event
                open_batches[(patient, at, kind)] = batch
                batches.append(batch)
            batch.observations.append(Observation(code=info.code, value=value, unit=unit))
    if not batches:
        raise MessageError(
            DeadLetterReason.MISSING_FIELD,
            "no usable OBX" + (" (PID missing)" if pid is None else ""),
        )
    events = [
        GatewayEvent(
            b.kind,
            ObservationEvent(
                event_id=f"{base}-{n}",
                patient_id=b.patient_id,
                event_time=b.at,
                source=options.source,
                observations=tuple(b.observations),
            ),
        )
        for n, b in enumerate(batches)
    ]
    return events, skipped


def _only(message: Message, name: str, *, required: bool) -> Segment | None:
    found = [segment for segment in message if str(segment[0]) == name]
    if len(found) > 1:
        raise MessageError(DeadLetterReason.INVALID_FIELD, f"{name} appears more than once")
    if not found and required:
        raise MessageError(DeadLetterReason.MISSING_FIELD, f"no {name} segment")
    return found[0] if found else None


def _full_years(born: datetime, at: datetime) -> float:
    years = at.year - born.year - ((at.month, at.day) < (born.month, born.day))
    return float(years)


def _adt(
    message: Message, trigger: str, base: str, options: MappingOptions
) -> tuple[list[GatewayEvent], int]:
    names = _names(message)
    evn = _only(message, "EVN", required=True)
    pid = _only(message, "PID", required=True)
    pv1 = _only(message, "PV1", required=False)
    if not names.index("MSH") < names.index("EVN") < names.index("PID"):
        raise MessageError(DeadLetterReason.INVALID_FIELD, "segments must run MSH, EVN, PID")
    if pv1 is not None and names.index("PV1") < names.index("PID"):
        raise MessageError(DeadLetterReason.INVALID_FIELD, "PV1 comes before PID")
    if evn is None or pid is None:  # pragma: no cover (required=True above)
        raise MessageError(DeadLetterReason.MISSING_FIELD, "no EVN or PID segment")
    patient = _patient_id(message, pid, pv1, options.patient_id_field)
    occurred = field_text(message, evn, 6)
    name = "EVN-6" if occurred else "EVN-2"
    at = hl7_time(
        occurred or field_text(message, evn, 2), naive_zone=options.naive_time_zone, name=name
    )
    descriptors: dict[str, float] = {}
    skipped = 0
    for index, segment in enumerate(message):
        if str(segment[0]) != "OBX":
            continue
        where = f"OBX {index + 1}"
        if index < names.index("PID"):
            raise MessageError(DeadLetterReason.INVALID_FIELD, f"{where} comes before PID")
        info = _resolve(message, segment, options.codes)
        if info is None or info.code not in _DESCRIPTOR_CODES:
            skipped += 1  # an ADT's other observations (allergies, notes) are not Vigil's
            continue
        value = _value(message, segment, where, info)
        unit = _unit(message, segment, where, info, value)
        descriptors[info.code] = normalise(info.code, value, unit)
    born = field_text(message, pid, 7)
    if "Age" not in descriptors and born:
        birth = hl7_time(born[:8] + "0000", naive_zone=UTC, name="PID-7", since_1970=False)
        descriptors["Age"] = _full_years(birth, at)
    care_unit = "" if pv1 is None else field_text(message, pv1, 3)
    service = "" if pv1 is None else field_text(message, pv1, 10)
    icu_type = options.codes.icu_type(service) or options.codes.icu_type(care_unit)
    event = AdtEvent(
        event_id=f"{base}-0",
        patient_id=patient,
        event_time=at,
        source=options.source,
        action=ADT_ACTIONS[trigger],
        age_years=descriptors.get("Age"),
        sex=_SEX.get(field_text(message, pid, 8).upper()),
        height_cm=descriptors.get("Height"),
        weight_kg=descriptors.get("Weight"),
        icu_type=icu_type,
        care_unit=care_unit[:64] or None,
    )
    return [GatewayEvent(TopicKind.ADT, event)], skipped
