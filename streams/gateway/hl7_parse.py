"""Bytes of one HL7 v2 message to a parsed ``hl7.Message``, and safe reads of its fields.

Parsing is python-hl7's (``hl7.parse``); this module adds what an edge needs around it:
a size limit, the character set (UTF-8, or ISO 8859-1 when MSH-18 says so), the message
control id even from a message that does not parse (for the ACK), reads of a field,
repetition or component that answer ``""`` instead of raising for what is absent, and HL7
timestamps to timezone-aware UTC. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from typing import Any, Final

import hl7
from hl7.containers import Component, Factory, Field, Message, Repetition, Segment

from streams.core.events import DeadLetterReason
from vigil.errors import MessageError

__all__ = [
    "SUPPORTED_VERSIONS",
    "field_text",
    "hl7_time",
    "parse_hl7",
    "peek_control_id",
    "repetitions",
    "unescape",
]

SUPPORTED_VERSIONS: Final = ("2.3", "2.4", "2.5", "2.6", "2.7", "2.8")
"""HL7 v2 versions accepted (MSH-12; ``2.3.1``, ``2.5.1`` and ``2.7.1`` count as their minor)."""

_LATIN1: Final = frozenset({"8859/1", "ISO-8859-1", "ISO IR100"})
_CONTROL_ID: Final = re.compile(rb"MSH(.)(?:[^\r\n]*?\1){8}([^\r\n|^~\\&]{1,64})")
_SEGMENT: Final = re.compile(r"[A-Z][A-Z0-9]{2}.?")
# An observation time needs at least a minute (YYYYMMDDHHMM); a date alone is not one.
_MIN_TIME_DIGITS: Final = 12
# python-hl7's containers are lists whose __getitem__ adds a Python-level slice check; the
# reads below index them as plain lists (a dozen reads per OBX).
_item: Final = list.__getitem__


def _light(container: type[Any], level: int) -> type[Any]:
    """A subclass of python-hl7's ``container`` whose constructor sets the same attributes as
    the library's, without its chain of keyword calls and assertions (a third of a parse)."""

    def __init__(  # noqa: N807 (the constructor of the class made below)
        self: Any,
        separator: str | None = None,
        sequence: Iterable[Any] = (),
        esc: str = "\\",
        separators: str = "\r|~^&",
        factory: type[Factory] | None = None,
    ) -> None:
        list.__init__(self, sequence)
        self.separator = separators[level]
        self.esc = esc
        self.separators = separators
        self.factory = factory if factory is not None else Factory

    return type(container.__name__, (container,), {"__init__": __init__})


class _Factory(Factory):  # type: ignore[misc]
    """python-hl7's documented hook for the containers a parse builds: the same classes
    (``isinstance`` and every method hold), built faster."""

    create_message = _light(Message, 0)
    create_segment = _light(Segment, 1)
    create_field = _light(Field, 2)
    create_repetition = _light(Repetition, 3)
    create_component = _light(Component, 4)


def peek_control_id(raw: bytes) -> str | None:
    """MSH-10 of a message that may not parse (to address its ACK), or None."""
    match = _CONTROL_ID.search(raw[:4096])
    if match is None:
        return None
    try:
        return match.group(2).decode("ascii")
    except UnicodeDecodeError:
        return None


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    header = raw.split(b"\r", 1)[0]
    charset = header.split(header[3:4])[17:18] if len(header) > 3 else []
    if charset and charset[0].decode("ascii", "replace").strip().upper() in _LATIN1:
        return raw.decode("latin-1")
    raise MessageError(
        DeadLetterReason.INVALID_FIELD,
        "message is not UTF-8 and MSH-18 does not declare ISO 8859-1",
    )


def _check_delimiters(text: str, segments: list[str]) -> None:
    # python-hl7 trusts MSH-1/MSH-2 and the segment names; hostile ones make it raise
    # arbitrary errors or recurse, so they are checked first.
    def fail(detail: str) -> MessageError:
        return MessageError(DeadLetterReason.INVALID_FIELD, detail)

    if not text.startswith("MSH") or len(text) < 9:
        raise fail("the first segment is not MSH")
    separator = text[3]
    end = text.find(separator, 4)
    encoding = text[4:end] if end > 0 else ""
    delimiters = separator + encoding
    if (
        len(encoding) not in (4, 5)
        or len(set(delimiters)) != len(delimiters)
        or any(
            not c.isascii() or not c.isprintable() or c.isalnum() or c == " " for c in delimiters
        )
    ):
        raise fail("MSH-1 and MSH-2 are not valid HL7 delimiters")
    for number, segment in enumerate(segments, start=1):
        if not _SEGMENT.fullmatch(segment[:4]) or (len(segment) > 3 and segment[3] != separator):
            raise fail(f"segment {number} does not start with a segment name")


def parse_hl7(raw: bytes, *, max_bytes: int) -> Message:
    """Parse one HL7 v2 message (segments separated by CR; LF, CRLF and blank lines are
    tolerated).

    Raises:
        MessageError: ``payload_too_large``, or ``invalid_field`` when the bytes are not
            text in a declared character set or not an HL7 v2 message.
    """
    try:
        return _parse(raw, max_bytes)
    except MessageError as exc:
        exc.control_id = peek_control_id(raw)  # only a refusal needs it before the parse
        raise


def _parse(raw: bytes, max_bytes: int) -> Message:
    if len(raw) > max_bytes:
        raise MessageError(
            DeadLetterReason.PAYLOAD_TOO_LARGE, f"{len(raw)} bytes exceeds the {max_bytes} limit"
        )
    text = _decode(raw)
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    segments = [segment for segment in text.split("\r") if segment.strip()]
    text = "\r".join(segments)
    if "\x00" in text:
        raise MessageError(DeadLetterReason.INVALID_FIELD, "message contains NUL characters")
    _check_delimiters(text, segments)
    try:
        return hl7.parse(text, factory=_Factory)
    except Exception as exc:  # noqa: BLE001 (a third-party parser on hostile input)
        raise MessageError(
            DeadLetterReason.INVALID_FIELD, f"not an HL7 v2 message: {type(exc).__name__}"
        ) from None


def unescape(message: Message, text: str) -> str:
    """``text`` with HL7 escape sequences resolved: ``\\F\\`` ``\\S\\`` ``\\T\\``
    ``\\R\\`` ``\\E\\`` become their delimiters, others (highlighting, hex, formatting)
    are dropped. (python-hl7's own unescape logs the field's value on a bad sequence.)"""
    escape = message.esc
    if escape not in text:
        return text
    separators = message.separators  # segment, field, repetition, component, subcomponent
    table = {
        "F": separators[1],
        "R": separators[2],
        "S": separators[3],
        "T": separators[4],
        "E": escape,
    }
    parts = text.split(escape)
    out = [parts[0]]
    for index in range(1, len(parts), 2):
        out.append(table.get(parts[index], ""))
        if index + 1 < len(parts):
            out.append(parts[index + 1])
    return "".join(out)


def repetitions(segment: Segment, number: int) -> int:
    """How many repetitions field ``number`` of ``segment`` has (0 when empty or absent)."""
    if number >= len(segment):
        return 0
    node = _item(segment, number)
    if node and isinstance(_item(node, 0), Repetition):
        return len(node)
    return 0 if len(node) == 0 or (len(node) == 1 and _item(node, 0) == "") else 1


def field_text(
    message: Message, segment: Segment, number: int, repetition: int = 1, component: int = 1
) -> str:
    """Text of field ``number`` (1-based, as HL7 counts: ``MSH-10`` is 10), its
    ``repetition`` and ``component`` (first subcomponent), unescaped and stripped;
    ``""`` when absent."""
    if number >= len(segment):
        return ""
    node = _item(segment, number)
    if node and isinstance(_item(node, 0), Repetition):
        if repetition > len(node):
            return ""
        rep = _item(node, repetition - 1)
    elif repetition == 1:
        rep = node
    else:
        return ""
    if rep and isinstance(_item(rep, 0), Component):
        if component > len(rep):
            return ""
        sub = _item(rep, component - 1)
        value = str(_item(sub, 0)) if sub else ""
    elif component == 1:
        value = str(_item(rep, 0)) if len(rep) == 1 else "".join(str(part) for part in rep)
    else:
        return ""
    if message.esc in value:
        value = unescape(message, value)
    return value.strip()


@lru_cache(maxsize=4096)
def _parse_time(text: str) -> datetime | None:
    # Monitors send many observations at one time: each distinct text is parsed once.
    parsed: datetime | None = hl7.parse_datetime(text)
    return parsed


def hl7_time(
    text: str, *, naive_zone: tzinfo | None, name: str, since_1970: bool = True
) -> datetime:
    """An HL7 TS/DTM (``YYYYMMDDHHMM[SS[.S…]][+/-ZZZZ]``) in UTC.

    Args:
        text: The timestamp.
        naive_zone: Zone of a timestamp without an offset; None rejects such a timestamp.
        name: Field name for the error message (``OBX-14``).
        since_1970: Refuse a time before 1970 (event times; not birth dates).

    Raises:
        MessageError: ``missing_field``, ``invalid_field`` or ``naive_timestamp``.
    """
    if not text:
        raise MessageError(DeadLetterReason.MISSING_FIELD, f"{name} is empty")
    digits = len(text.split("+")[0].split("-")[0].split(".")[0])
    if digits < _MIN_TIME_DIGITS:
        raise MessageError(DeadLetterReason.INVALID_FIELD, f"{name} needs at least YYYYMMDDHHMM")
    try:
        parsed = _parse_time(text)
    except (ValueError, OverflowError):
        raise MessageError(
            DeadLetterReason.INVALID_FIELD, f"{name} is not an HL7 timestamp"
        ) from None
    if parsed is None:
        raise MessageError(DeadLetterReason.MISSING_FIELD, f"{name} is empty")
    if parsed.tzinfo is None:
        if naive_zone is None:
            raise MessageError(
                DeadLetterReason.NAIVE_TIMESTAMP,
                f"{name} has no UTC offset (set VIGIL_GATEWAY_NAIVE_TIME_ZONE to accept it)",
            )
        parsed = parsed.replace(tzinfo=naive_zone)
    try:
        utc = parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        raise MessageError(DeadLetterReason.INVALID_FIELD, f"{name} is out of range") from None
    if since_1970 and utc.year < 1970:
        raise MessageError(DeadLetterReason.INVALID_FIELD, f"{name} is before 1970")
    return utc
