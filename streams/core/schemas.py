"""JSON Schemas of every topic's record, generated from :mod:`streams.core.events`.

The checked-in copies under ``docs/schemas`` are kept equal to these by a unit test.
Regenerate them with::

    python -m streams.core.schemas docs/schemas
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel

from streams.core.events import (
    DEFAULT_PREFIX,
    AckEvent,
    AdtEvent,
    AlertRecord,
    AuditRecord,
    DeadLetterRecord,
    ExplanationRecord,
    FindingRecord,
    ImagingEvent,
    ObservationEvent,
    ScoreRecord,
    TopicKind,
    topic_name,
)

__all__ = ["json_schemas", "render", "write_json_schemas"]

_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
_RECORDS: Final[dict[TopicKind, tuple[type[BaseModel], str | None]]] = {
    TopicKind.VITALS: (ObservationEvent, "patient_id"),
    TopicKind.LABS: (ObservationEvent, "patient_id"),
    TopicKind.IMAGING: (ImagingEvent, "patient_id"),
    TopicKind.ADT: (AdtEvent, "patient_id"),
    TopicKind.SCORES: (ScoreRecord, "patient_id"),
    TopicKind.ALERTS: (AlertRecord, "patient_id"),
    TopicKind.DEADLETTER: (DeadLetterRecord, None),
    TopicKind.ACKS: (AckEvent, "patient_id"),
    TopicKind.AUDIT: (AuditRecord, "patient_id"),
    TopicKind.FINDINGS: (FindingRecord, "patient_id"),
    TopicKind.EXPLANATIONS: (ExplanationRecord, "patient_id"),
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """Return the JSON Schema (draft 2020-12) of each topic's record.

    Returns:
        Schemas keyed by topic name with the default prefix (``vigil.vitals`` …).
        ``x-kafka-key`` names the field used as the Kafka key; the dead-letter topic has
        none (it reuses the failed record's key, whatever it was).
    """
    schemas: dict[str, dict[str, Any]] = {}
    for kind, (model, key) in _RECORDS.items():
        name = topic_name(kind, DEFAULT_PREFIX)
        schema: dict[str, Any] = {"$schema": _DIALECT, "$id": f"{name}.schema.json"}
        if key is not None:
            schema["x-kafka-key"] = key
        schemas[name] = schema | model.model_json_schema(mode="validation")
    return schemas


def render(schema: dict[str, Any]) -> str:
    """Return the canonical text of a schema file (sorted keys, 2-space indent)."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json_schemas(directory: Path) -> list[Path]:
    """Write ``<topic>.schema.json`` for every topic into ``directory``.

    Returns:
        The paths written, sorted.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in json_schemas().items():
        path = directory / f"{name}.schema.json"
        path.write_text(render(schema), encoding="utf-8")
        paths.append(path)
    return sorted(paths)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m streams.core.schemas DIRECTORY")
    for written in write_json_schemas(Path(sys.argv[1])):
        sys.stdout.write(f"{written}\n")
