"""Recorded HL7 v2 message logs as replay events (``vigil replay --format hl7``).

A log file (``*.hl7``) holds messages either MLLP-framed (0x0B … 0x1C 0x0D, as captured
off the wire) or one after another, each starting with ``MSH`` at the start of a line
(segments separated by CR, LF or CRLF), as interface engines export them. Each message is
mapped exactly as ``vigil gateway`` maps it (:mod:`streams.gateway.hl7_map`, default
options and code table), so a replayed log gives the same events and event ids as the
live feed did. A message the gateway would refuse makes the whole file unreadable (the
error names the message), as for the other replay formats.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from streams.gateway.hl7_map import MappingOptions, map_hl7
from streams.gateway.mllp import END, START
from streams.replay.event import ReplayEvent
from vigil.errors import ConfigError, MessageError

__all__ = ["read_hl7", "split_messages"]

_MESSAGE_START: Final = re.compile(rb"(?:^|[\r\n])(?=MSH)")


def split_messages(data: bytes) -> list[bytes]:
    """The messages of a log: MLLP frames, or else text split before each ``MSH``."""
    if START in data:
        frames = [part.split(START, 1)[-1] for part in data.split(END)]
        return [frame for frame in frames if frame.strip()]
    parts = _MESSAGE_START.split(data)
    return [part.strip(b"\r\n") for part in parts if part.strip()]


def read_hl7(path: Path) -> list[ReplayEvent]:
    """Read one HL7 v2 log into time-ordered input events.

    Raises:
        ConfigError: The file cannot be read, or a message in it cannot be used; the
            message names the file and the message's position.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path.name}: unreadable: {exc}") from exc
    options = MappingOptions()
    events: list[ReplayEvent] = []
    for number, message in enumerate(split_messages(data), start=1):
        try:
            mapped = map_hl7(message, options)
        except MessageError as exc:
            raise ConfigError(f"{path.name}: message {number}: {exc}") from exc
        for item in mapped.events:
            record = item.event
            events.append(
                ReplayEvent(
                    record.event_time,
                    record.patient_id,
                    len(events),
                    item.kind,
                    item.payload,
                    key=item.key,
                )
            )
    if not events:
        raise ConfigError(f"{path.name}: no HL7 v2 message")
    events.sort()
    return events
