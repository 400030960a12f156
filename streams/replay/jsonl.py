"""Vigil's recording format (JSON Lines) and its reader for replay.

``vigil record`` writes one JSON object per Kafka record::

    {"topic": "vigil.vitals", "partition": 3, "offset": 41, "timestamp": 1735693200000,
     "key": "132539", "value": "{\\"schema_version\\": 1, ...}"}

``timestamp`` is the record's Kafka timestamp in milliseconds since the epoch (UTC).
``key`` and ``value`` are UTF-8 text, or ``null`` when absent. A key or value that is not
valid UTF-8 is written in standard base64 and flagged with ``"key_encoding": "base64"``
or ``"value_encoding": "base64"`` (the flags are omitted for UTF-8).

Played back, each record goes to the topic of the same kind under the current prefix
(``vigil.vitals`` recorded, ``test1.vitals`` replayed with prefix ``test1``): the kind is
the part of the topic name after its last dot and must be one of
:class:`~streams.core.events.TopicKind`. Records are replayed in timestamp order (then by key,
then in file order) with their key; the partition comes from the key, as for any
record, and the timestamp is the time of sending. Records with a ``null`` value
(tombstones) are skipped.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from streams.core.events import TopicKind
from streams.replay.event import ReplayEvent, one_line
from vigil.errors import ConfigError

__all__ = ["RecordedMessage", "read_jsonl"]

_Encoding = Literal["utf-8", "base64"]


class RecordedMessage(BaseModel):
    """One line of a recording.

    Attributes:
        topic: Topic the record was read from (full name, prefix included).
        partition: Partition it was read from.
        offset: Its offset in that partition.
        timestamp: Kafka timestamp, milliseconds since the epoch (UTC).
        key: Key as text (see ``key_encoding``), None when absent.
        value: Value as text (see ``value_encoding``), None for a tombstone.
        key_encoding: ``utf-8`` (the default, omitted on disk) or ``base64``.
        value_encoding: ``utf-8`` (the default, omitted on disk) or ``base64``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    topic: Annotated[str, Field(min_length=1, max_length=249)]
    partition: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]
    timestamp: Annotated[int, Field(ge=0)]
    key: str | None
    value: str | None
    key_encoding: _Encoding = "utf-8"
    value_encoding: _Encoding = "utf-8"

    @classmethod
    def from_kafka(
        cls,
        topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int,
        key: bytes | None,
        value: bytes | None,
    ) -> RecordedMessage:
        """Build the line of a consumed record, choosing each field's encoding."""
        key_text, key_encoding = _encode(key)
        value_text, value_encoding = _encode(value)
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            timestamp=timestamp_ms,
            key=key_text,
            value=value_text,
            key_encoding=key_encoding,
            value_encoding=value_encoding,
        )

    def to_line(self) -> str:
        """The JSON line (no newline), leaving out the default encodings."""
        return self.model_dump_json(exclude_defaults=True)

    def key_bytes(self) -> bytes | None:
        """The key as it was on the wire."""
        return _decode(self.key, self.key_encoding)

    def value_bytes(self) -> bytes | None:
        """The value as it was on the wire."""
        return _decode(self.value, self.value_encoding)


def _encode(data: bytes | None) -> tuple[str | None, _Encoding]:
    if data is None:
        return None, "utf-8"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _decode(text: str | None, encoding: _Encoding) -> bytes | None:
    if text is None:
        return None
    if encoding == "base64":
        return base64.b64decode(text, validate=True)
    return text.encode("utf-8")


def _kind(topic: str) -> TopicKind:
    suffix = topic.rsplit(".", 1)[-1]
    try:
        return TopicKind(suffix)
    except ValueError:
        kinds = ", ".join(kind.value for kind in TopicKind)
        raise ValueError(f"topic {topic!r} is not a Vigil topic (<prefix>.{{{kinds}}})") from None


def read_jsonl(path: Path) -> list[ReplayEvent]:
    """Read a recording into replay events in timestamp order.

    Raises:
        ConfigError: The file cannot be read or a line is not a recorded message; the
            message names the file and the line.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: unreadable: {exc}") from exc
    events: list[ReplayEvent] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            message = RecordedMessage.model_validate_json(line)
            kind = _kind(message.topic)
            key = message.key_bytes()
            value = message.value_bytes()
        except ValueError as exc:  # pydantic's ValidationError and bad base64 included
            raise ConfigError(f"{path.name}:{number}: {one_line(exc)}") from exc
        if value is None:
            continue
        at = datetime.fromtimestamp(message.timestamp / 1000, tz=UTC)
        patient_id = message.key if message.key_encoding == "utf-8" and message.key else ""
        events.append(ReplayEvent(at, patient_id, number, kind, value, key=key))
    events.sort()
    return events
