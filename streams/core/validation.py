"""Edge validation: raw Kafka bytes in, a checked event with canonical values out.

:func:`decode_input` raises :class:`~vigil.errors.SchemaError` whose ``reason`` is a
:class:`DeadLetterReason`; the caller sends :func:`dead_letter` of it to the dead-letter
topic and carries on. Values outside a code's physiological range are *artifacts*: they
are reported in :attr:`Decoded.artifacts`, never raised. ``too_late`` and ``duplicate``
are reserved for the state layer, which knows the watermark and the seen event ids.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from streams.core.codes import get_code
from streams.core.events import (
    INPUT_TOPICS,
    AckEvent,
    AdtEvent,
    DeadLetterReason,
    DeadLetterRecord,
    ImagingEvent,
    InputEvent,
    ObservationEvent,
    TopicKind,
)
from streams.core.units import normalise
from vigil.errors import SchemaError

__all__ = [
    "CanonicalObservation",
    "DeadLetterReason",
    "Decoded",
    "dead_letter",
    "decode_ack",
    "decode_input",
]

_MODELS: Final[dict[TopicKind, type[ObservationEvent | AdtEvent | ImagingEvent]]] = {
    TopicKind.VITALS: ObservationEvent,
    TopicKind.LABS: ObservationEvent,
    TopicKind.ADT: AdtEvent,
    TopicKind.IMAGING: ImagingEvent,
}
_MAX_DETAIL_ERRORS: Final = 3


@dataclass(frozen=True, slots=True)
class CanonicalObservation:
    """An observation in its code's canonical unit.

    Attributes:
        code: Vigil code.
        value: Value in ``unit``.
        unit: Canonical UCUM unit of ``code``.
        artifact: True when ``value`` is outside the code's physiological range.
    """

    code: str
    value: float
    unit: str
    artifact: bool


@dataclass(frozen=True, slots=True)
class Decoded:
    """A validated input event and its observations in canonical units.

    Attributes:
        event: The event as received (units as sent).
        observations: Every observation converted; for ADT events the numeric
            descriptors (``Age``, ``Height``, ``Weight``); empty for imaging.
    """

    event: InputEvent
    observations: tuple[CanonicalObservation, ...]

    @property
    def valid(self) -> tuple[CanonicalObservation, ...]:
        """Observations inside their physiological range (use these as features)."""
        return tuple(o for o in self.observations if not o.artifact)

    @property
    def artifacts(self) -> tuple[CanonicalObservation, ...]:
        """Observations outside their physiological range (count these)."""
        return tuple(o for o in self.observations if o.artifact)


def _reason(error: ErrorDetails) -> DeadLetterReason:
    kind = error["type"]
    if kind == "json_invalid" or (kind == "model_type" and not error["loc"]):
        return DeadLetterReason.INVALID_JSON
    if kind == "missing":
        return DeadLetterReason.MISSING_FIELD
    if kind == "timezone_aware":
        return DeadLetterReason.NAIVE_TIMESTAMP
    if kind == "finite_number":
        return DeadLetterReason.NON_FINITE
    return DeadLetterReason.INVALID_FIELD


def _schema_error(error: ValidationError) -> SchemaError:
    details = error.errors(include_url=False, include_input=False)
    # Messages only, never input values: a payload may hold identifiers.
    parts = [
        f"{'.'.join(str(part) for part in d['loc']) or '<root>'}: {d['msg']}"
        for d in details[:_MAX_DETAIL_ERRORS]
    ]
    if len(details) > _MAX_DETAIL_ERRORS:
        parts.append(f"and {len(details) - _MAX_DETAIL_ERRORS} more")
    return SchemaError(_reason(details[0]), "; ".join(parts)[:2000])


def _canonical(code: str, value: float, unit: str) -> CanonicalObservation:
    info = get_code(code)
    canonical = normalise(code, value, unit)
    return CanonicalObservation(code, canonical, info.unit, not info.is_plausible(canonical))


def _observations(event: InputEvent) -> tuple[CanonicalObservation, ...]:
    if isinstance(event, ObservationEvent):
        return tuple(_canonical(o.code, o.value, o.unit) for o in event.observations)
    if isinstance(event, AdtEvent):
        descriptors = (
            ("Age", event.age_years, "a"),
            ("Height", event.height_cm, "cm"),
            ("Weight", event.weight_kg, "kg"),
        )
        return tuple(
            _canonical(code, value, unit) for code, value, unit in descriptors if value is not None
        )
    return ()


def decode_input(
    kind: TopicKind,
    raw: bytes,
    *,
    now: datetime,
    max_future: timedelta,
    max_bytes: int,
) -> Decoded:
    """Decode and validate one input record.

    Args:
        kind: Input topic kind the record came from (vitals, labs, imaging, adt).
        raw: The record value, UTF-8 JSON.
        now: Current wall-clock time (timezone-aware), injected for testability.
        max_future: How far ``event_time`` may lie beyond ``now`` (clock skew allowance).
        max_bytes: Largest accepted record, in bytes.

    Returns:
        The event with its observations in canonical units, artifacts flagged.

    Raises:
        SchemaError: With a :class:`DeadLetterReason` as ``reason``.
        ValueError: ``kind`` is not an input topic or ``now`` is naive (caller bugs).
    """
    if kind not in INPUT_TOPICS:
        raise ValueError(f"{kind} is not an input topic")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if len(raw) > max_bytes:
        raise SchemaError(
            DeadLetterReason.PAYLOAD_TOO_LARGE, f"{len(raw)} bytes exceeds the {max_bytes} limit"
        )
    try:
        event = _MODELS[kind].model_validate_json(raw)
    except ValidationError as error:
        raise _schema_error(error) from None
    if event.event_time > now + max_future:
        ahead = (event.event_time - now).total_seconds()
        raise SchemaError(
            DeadLetterReason.FUTURE_EVENT, f"event_time is {ahead:.0f} s ahead of the clock"
        )
    return Decoded(event, _observations(event))


def decode_ack(raw: bytes, *, now: datetime, max_future: timedelta, max_bytes: int) -> AckEvent:
    """Decode and validate one record of the ``acks`` topic (structure and clock only;
    :func:`streams.core.acks.apply_ack` judges the action itself).

    Raises:
        SchemaError: With a :class:`DeadLetterReason` as ``reason``.
        ValueError: ``now`` is naive.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if len(raw) > max_bytes:
        raise SchemaError(
            DeadLetterReason.PAYLOAD_TOO_LARGE, f"{len(raw)} bytes exceeds the {max_bytes} limit"
        )
    try:
        ack = AckEvent.model_validate_json(raw)
    except ValidationError as error:
        raise _schema_error(error) from None
    if ack.event_time > now + max_future:
        ahead = (ack.event_time - now).total_seconds()
        raise SchemaError(
            DeadLetterReason.FUTURE_EVENT, f"event_time is {ahead:.0f} s ahead of the clock"
        )
    return ack


Encoding = Literal["utf-8", "base64url"]


def _text(data: bytes, *, may_cut: bool) -> tuple[str, Encoding]:
    # A truncated prefix may end inside one UTF-8 character (at most 3 bytes of it).
    for cut in range(4 if may_cut else 1):
        try:
            return data[: len(data) - cut].decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            continue
    return base64.urlsafe_b64encode(data).decode("ascii"), "base64url"


def dead_letter(
    error: SchemaError,
    *,
    topic: str,
    partition: int | None,
    offset: int | None,
    key: bytes | None,
    raw: bytes,
    received_time: datetime,
    max_payload_bytes: int = 65_536,
) -> DeadLetterRecord:
    """Build the dead-letter record for a record that failed validation.

    Args:
        error: The validation failure; its ``reason`` must be a :class:`DeadLetterReason`.
        topic: Source topic.
        partition: Source partition, ``None`` outside Kafka.
        offset: Source offset, ``None`` outside Kafka.
        key: Record key bytes, ``None`` if absent.
        raw: Record value bytes, as received.
        received_time: Wall-clock receipt time (timezone-aware).
        max_payload_bytes: Keep at most this prefix of ``raw``, in bytes.

    Raises:
        ValueError: ``error.reason`` is not a :class:`DeadLetterReason`.
    """
    truncated = len(raw) > max_payload_bytes
    payload, payload_encoding = _text(raw[:max_payload_bytes], may_cut=truncated)
    key_text, key_encoding = (None, "utf-8") if key is None else _text(key, may_cut=False)
    return DeadLetterRecord(
        reason=DeadLetterReason(error.reason),
        detail=error.detail[:2000],
        payload=payload,
        payload_encoding=payload_encoding,
        payload_size_bytes=len(raw),
        payload_truncated=truncated,
        source_topic=topic,
        partition=partition,
        offset=offset,
        key=key_text,
        key_encoding=key_encoding,
        received_time=received_time,
    )
