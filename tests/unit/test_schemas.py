from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel

from streams.core.events import TopicKind, topic_name
from streams.core.schemas import json_schemas, render, write_json_schemas

CHECKED_IN = Path(__file__).resolve().parents[2] / "docs" / "schemas"
REGENERATE = "regenerate with: python -m streams.core.schemas docs/schemas"


def test_checked_in_schemas_match_the_models() -> None:
    generated = {f"{name}.schema.json": render(schema) for name, schema in json_schemas().items()}
    on_disk = {path.name: path.read_text(encoding="utf-8") for path in CHECKED_IN.glob("*.json")}
    assert sorted(on_disk) == sorted(generated), f"schema files differ; {REGENERATE}"
    for name, text in generated.items():
        assert on_disk[name] == text, f"{name} is stale; {REGENERATE}"


def test_every_topic_with_a_record_has_a_schema() -> None:
    assert set(json_schemas()) == {topic_name(kind) for kind in TopicKind}


def test_schemas_are_closed_and_versioned() -> None:
    for name, schema in json_schemas().items():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == f"{name}.schema.json"
        assert schema["additionalProperties"] is False
        assert schema["properties"]["schema_version"]["const"] == 1
        if name != "vigil.deadletter":
            assert schema["x-kafka-key"] == "patient_id"


def test_dead_letter_schema_enumerates_reasons() -> None:
    schema = json_schemas()["vigil.deadletter"]
    assert "unknown_unit" in schema["$defs"]["DeadLetterReason"]["enum"]


def test_write_json_schemas(tmp_path: Path) -> None:
    paths = write_json_schemas(tmp_path / "out")
    assert [path.name for path in paths] == sorted(f"{n}.schema.json" for n in json_schemas())
    vitals = json.loads((tmp_path / "out" / "vigil.vitals.schema.json").read_text())
    assert vitals == json_schemas()["vigil.vitals"]


def test_examples_in_events_doc_are_valid() -> None:
    from streams.core import events

    text = (CHECKED_IN.parent / "events.md").read_text(encoding="utf-8")
    examples = re.findall(r"```json\n(.*?)```", text, re.DOTALL)
    models: list[type[BaseModel]] = [
        events.ObservationEvent,
        events.AdtEvent,
        events.ImagingEvent,
        events.ScoreRecord,
        events.AlertRecord,
        events.FindingRecord,
        events.ExplanationRecord,
        events.DeadLetterRecord,
        events.AckEvent,
        events.AuditRecord,
    ]
    assert len(examples) == len(models)
    for example, model in zip(examples, models, strict=True):
        model.model_validate_json(example)
