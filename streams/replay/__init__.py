"""Replay recorded ICU data into Vigil's topics, and record topics for replay.

Each format has a reader that turns one file into events in event-time order
(:class:`ReplayEvent`); the files' events are merged in event time and produced to
``<prefix>.<kind>`` keyed by patient id. Formats:

- ``physionet2012``: :mod:`streams.replay.physionet2012` (``Time,Parameter,Value`` files);
- ``physionet2019``: :mod:`streams.replay.physionet2019` (``.psv`` hourly rows);
- ``jsonl``: :mod:`streams.replay.jsonl` (Vigil's own recordings, :func:`record`);
- ``fhir``: :mod:`streams.replay.fhir` (R4 Bundles of Observations).

Event ids are derived from the input, so replaying twice produces the same ids (and the
worker ignores the second copy as duplicates). See ``docs/replay.md``.
"""

from __future__ import annotations

from streams.replay.event import DEFAULT_ANCHOR, ReplayEvent, ReplayReport, merge, read_files
from streams.replay.fhir import read_fhir
from streams.replay.jsonl import RecordedMessage, read_jsonl
from streams.replay.physionet2012 import (
    physionet2012_events,
    read_length_of_stay,
    read_physionet2012,
)
from streams.replay.physionet2019 import read_physionet2019
from streams.replay.producer import produce
from streams.replay.record import record, resolve_topics

__all__ = [
    "DEFAULT_ANCHOR",
    "RecordedMessage",
    "ReplayEvent",
    "ReplayReport",
    "merge",
    "physionet2012_events",
    "produce",
    "read_fhir",
    "read_files",
    "read_jsonl",
    "read_length_of_stay",
    "read_physionet2012",
    "read_physionet2019",
    "record",
    "resolve_topics",
]
