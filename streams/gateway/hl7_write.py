"""Vigil input events written as HL7 v2 messages (ORU^R01, ADT^A01/A02/A03). Pure: no I/O.

The inverse of :mod:`streams.gateway.hl7_map`, for tests, benchmarks and demos: a
PhysioNet stay replayed through the gateway this way lands on Kafka as the same events
(apart from ids and source) as ``vigil replay`` writes. Codes are written as LOINC where
Vigil's vocabulary has one and as the Vigil code (coding system ``L``) otherwise; values
in plain decimal notation; times in UTC with ``+0000``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Final

import hl7

from streams.core.codes import get_code
from streams.core.events import AdtEvent, IcuType, ObservationEvent

__all__ = ["adt_message", "frame", "hl7_timestamp", "oru_message"]

_ESCAPER: Final = hl7.parse("MSH|^~\\&|||||||ACK|0|P|2.5")
_SERVICES: Final = {
    IcuType.CORONARY_CARE: "CCU",
    IcuType.CARDIAC_SURGERY_RECOVERY: "CSRU",
    IcuType.MEDICAL: "MICU",
    IcuType.SURGICAL: "SICU",
}
_TRIGGERS: Final = {"admit": "A01", "transfer": "A02", "discharge": "A03", "update": "A08"}
_SEX: Final = {"male": "M", "female": "F", "other": "O"}
_START, _END = b"\x0b", b"\x1c\x0d"


def hl7_timestamp(at: datetime) -> str:
    """``YYYYMMDDHHMMSS[.ffffff]+0000`` of a timezone-aware time."""
    utc = at.astimezone(UTC)
    fraction = f".{utc.microsecond:06d}" if utc.microsecond else ""
    return utc.strftime("%Y%m%d%H%M%S") + fraction + "+0000"


def _number(value: float) -> str:
    return format(Decimal(repr(value)), "f")


def _msh(kind: str, control_id: str, at: datetime, sender: str) -> str:
    esc = _ESCAPER.escape
    return (
        f"MSH|^~\\&|{esc(sender)}|ICU|VIGIL|VIGIL|{hl7_timestamp(at)}||{kind}|"
        f"{esc(control_id)}|P|2.5|||AL|NE"
    )


def _obx(index: int, code: str, value: float, unit: str, at: datetime | None) -> str:
    info = get_code(code)
    esc = _ESCAPER.escape
    coded = (
        f"{info.loinc}^{esc(info.description)}^LN"
        if info.loinc is not None
        else f"{code}^{esc(info.description)}^L"
    )
    when = "" if at is None else hl7_timestamp(at)
    return f"OBX|{index}|NM|{coded}||{_number(value)}|{esc(unit)}^^UCUM|||||F|||{when}"


def oru_message(event: ObservationEvent, control_id: str, *, sender: str = "MONITOR") -> bytes:
    """One ORU^R01 carrying ``event``'s observations (OBR-7 and OBX-14: its time)."""
    esc = _ESCAPER.escape
    segments = [
        _msh("ORU^R01^ORU_R01", control_id, event.event_time, sender),
        f"PID|1||{esc(event.patient_id)}",
        f"OBR|1|||VIGIL^Vigil observations^L|||{hl7_timestamp(event.event_time)}",
    ]
    segments += [
        _obx(n, o.code, o.value, o.unit, event.event_time)
        for n, o in enumerate(event.observations, start=1)
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


def adt_message(event: AdtEvent, control_id: str, *, sender: str = "ADT") -> bytes:
    """One ADT^A01/A02/A03 for ``event``: sex in PID-8, the ICU type as the PV1-10 hospital
    service, the care unit in PV1-3, age, height and weight as OBX."""
    esc = _ESCAPER.escape
    trigger = _TRIGGERS[event.action]
    stamp = hl7_timestamp(event.event_time)
    sex = "" if event.sex is None else _SEX[event.sex]
    service = "" if event.icu_type is None else _SERVICES[event.icu_type]
    unit = esc(event.care_unit or "")
    segments = [
        _msh(f"ADT^{trigger}^ADT_{trigger}", control_id, event.event_time, sender),
        f"EVN|{trigger}|{stamp}||||{stamp}",
        f"PID|1||{esc(event.patient_id)}|||||{sex}",
        f"PV1|1|I|{unit}|||||||{service}",
    ]
    descriptors = (
        ("Age", event.age_years, "a"),
        ("Height", event.height_cm, "cm"),
        ("Weight", event.weight_kg, "kg"),
    )
    present = [(code, value, u) for code, value, u in descriptors if value is not None]
    segments += [
        _obx(n, code, value, u, None) for n, (code, value, u) in enumerate(present, start=1)
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


def frame(message: bytes) -> bytes:
    """``message`` in MLLP framing: 0x0B, the message, 0x1C 0x0D."""
    return _START + message + _END
