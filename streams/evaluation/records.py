"""Decode recorded score and alert lines (pure: text in, records and counts out).

A line is either the bare record JSON (:class:`~streams.core.events.ScoreRecord` or
:class:`~streams.core.events.AlertRecord`) or the envelope ``vigil record`` writes,
``{"topic", "partition", "offset", "timestamp", "key", "value"}``, whose ``value`` is the
record's JSON as a string. A line that is neither is counted and skipped, never fatal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from streams.core.events import AlertRecord, ScoreRecord

__all__ = ["Decoded", "decode_alerts", "decode_lines", "decode_scores"]

_R = TypeVar("_R", bound=BaseModel)
_ENVELOPE_KEYS = frozenset({"topic", "partition", "offset", "value"})
_KEPT_ERRORS = 5


@dataclass(slots=True)
class Decoded(Generic[_R]):
    """What decoding produced.

    Attributes:
        records: The records, in input order.
        lines: Non-blank lines read.
        bad_lines: Lines that were not a valid record (skipped).
        errors: The first few bad lines as ``"line N: reason"`` (no field values).
    """

    records: list[_R] = field(default_factory=list)
    lines: int = 0
    bad_lines: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """Counts for ``metrics.json``."""
        return {
            "lines": self.lines,
            "records": len(self.records),
            "bad_lines": self.bad_lines,
            "first_errors": list(self.errors),
        }


def _payload(line: str) -> str | bytes:
    """The record JSON of a line, unwrapping a recording envelope."""
    try:
        outer = json.loads(line)
    except json.JSONDecodeError:
        return line  # let the model report it
    if isinstance(outer, dict) and outer.keys() >= _ENVELOPE_KEYS:
        value = outer["value"]
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            return json.dumps(value)
        raise ValueError("envelope value is not a JSON string")
    return line


def decode_lines(lines: Iterable[str | bytes], model: type[_R]) -> Decoded[_R]:
    """Decode JSON lines into ``model`` records; blank lines are ignored.

    Args:
        lines: One record (or envelope) per item, as read from a file or a topic.
        model: :class:`ScoreRecord` or :class:`AlertRecord`.
    """
    out: Decoded[_R] = Decoded()
    for number, raw in enumerate(lines, start=1):
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        out.lines += 1
        try:
            out.records.append(model.model_validate_json(_payload(text)))
        except (ValidationError, ValueError) as exc:
            out.bad_lines += 1
            if len(out.errors) < _KEPT_ERRORS:
                out.errors.append(f"line {number}: {_reason(exc)}")
    return out


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "record"
        return f"{where}: {first['msg']}"
    return str(exc)


def decode_scores(lines: Iterable[str | bytes]) -> Decoded[ScoreRecord]:
    """Decode score lines (see :func:`decode_lines`)."""
    return decode_lines(lines, ScoreRecord)


def decode_alerts(lines: Iterable[str | bytes]) -> Decoded[AlertRecord]:
    """Decode alert lines (see :func:`decode_lines`)."""
    return decode_lines(lines, AlertRecord)
