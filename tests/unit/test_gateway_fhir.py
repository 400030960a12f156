"""FHIR R4 bodies to input events (streams.gateway.fhir_map): mapping and refusals that
name the element."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.observation import Observation

from streams.core.events import AdtEvent, IcuType, ObservationEvent, TopicKind
from streams.gateway.codemap import DEFAULT_CODE_MAP
from streams.gateway.fhir_map import (
    FhirError,
    bundle_entries,
    encounter_events,
    observation_events,
    parse,
)

LOINC = "http://loinc.org"


def observation(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "hr-1",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2025-01-01T12:00:00+01:00",
        "valueQuantity": {"value": 80, "unit": "beats/minute", "code": "/min"},
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def encounter(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "2025-01-01T10:00:00Z"},
        "location": [{"location": {"display": "MICU"}}],
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def raw(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def events_of(body: dict[str, Any]) -> list[Any]:
    resource = parse(raw(body), "Observation")
    assert isinstance(resource, Observation)
    return observation_events(resource, source="fhir-gateway")


def _map(body: dict[str, Any], expected: str) -> None:
    resource = parse(raw(body), expected)
    if isinstance(resource, Observation):
        observation_events(resource, source="s")
    elif isinstance(resource, Encounter):
        encounter_events(resource, source="s", codes=DEFAULT_CODE_MAP)


def problem(body: dict[str, Any], expected: str = "Observation") -> FhirError:
    with pytest.raises(FhirError) as caught:
        _map(body, expected)
    return caught.value


def test_observation_becomes_a_vitals_event_with_its_id() -> None:
    (event,) = events_of(observation())
    assert event.kind is TopicKind.VITALS
    assert isinstance(event.event, ObservationEvent)
    assert event.event.event_id == "fhir-obs-hr-1-vitals"
    assert event.event.patient_id == "p1"
    assert event.event.event_time == datetime(2025, 1, 1, 11, tzinfo=UTC)
    assert [(o.code, o.value, o.unit) for o in event.event.observations] == [("HR", 80.0, "/min")]


def test_blood_pressure_panel_components_are_one_event() -> None:
    panel = observation(
        code={"coding": [{"system": LOINC, "code": "85354-9"}]},
        valueQuantity=None,
        component=[
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": {"value": 120, "code": "mm[Hg]"},
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": {"value": 70, "code": "mm[Hg]"},
            },
        ],
    )
    (event,) = events_of(panel)
    assert [o.code for o in event.event.observations] == ["SysABP", "DiasABP"]


def test_without_an_id_the_event_id_is_a_hash_of_the_body() -> None:
    first = events_of(observation(id=None))[0].event.event_id
    assert first.startswith("fhir-obs-h")
    assert first == events_of(observation(id=None))[0].event.event_id
    assert (
        first
        != events_of(observation(id=None, valueQuantity={"value": 81, "code": "/min"}))[
            0
        ].event.event_id
    )


@pytest.mark.parametrize(
    ("body", "expression", "reason"),
    [
        (
            observation(valueQuantity={"value": "eighty"}),
            "Observation.valueQuantity.value",
            "invalid_field",
        ),
        (observation(status=None), "Observation.status", "missing_field"),
        (observation(status="entered-in-error"), "Observation.status", "invalid_field"),
        (
            observation(code={"coding": [{"system": LOINC, "code": "0000-0"}]}),
            "Observation.code",
            "unknown_code",
        ),
        (
            observation(valueQuantity={"value": 80, "code": "mm[Hg]"}),
            "Observation.valueQuantity",
            "unknown_unit",
        ),
        (observation(subject=None), "Observation.subject", "missing_field"),
        (
            observation(subject={"reference": "Patient/Jane Doe"}),
            "Observation.subject",
            "invalid_field",
        ),
        (
            observation(effectiveDateTime="2025-01-01"),
            "Observation.effectiveDateTime",
            "missing_field",
        ),
        (
            observation(effectiveDateTime="1960-01-01T00:00:00Z"),
            "Observation.effectiveDateTime",
            "invalid_field",
        ),
        ({"resourceType": "Patient"}, "Observation.resourceType", "invalid_field"),
    ],
)
def test_refusals_name_the_element(body: dict[str, Any], expression: str, reason: str) -> None:
    error = problem(body)
    assert error.expression == expression
    assert error.reason == reason
    assert "Jane" not in str(error)


def test_body_that_is_not_json() -> None:
    with pytest.raises(FhirError) as caught:
        parse(b"\xff{", "Observation")
    assert caught.value.reason == "invalid_json"


@pytest.mark.parametrize(
    ("changes", "action", "at"),
    [
        ({}, "admit", datetime(2025, 1, 1, 10, tzinfo=UTC)),
        (
            {
                "status": "finished",
                "period": {"start": "2025-01-01T10:00:00Z", "end": "2025-01-03T09:00:00Z"},
            },
            "discharge",
            datetime(2025, 1, 3, 9, tzinfo=UTC),
        ),
    ],
)
def test_encounter_admits_and_discharges(
    changes: dict[str, Any], action: str, at: datetime
) -> None:
    resource = parse(raw(encounter(**changes)), "Encounter")
    assert isinstance(resource, Encounter)
    (event,) = encounter_events(resource, source="s", codes=DEFAULT_CODE_MAP)
    adt = event.event
    assert isinstance(adt, AdtEvent)
    assert (adt.action, adt.event_time) == (action, at)
    assert adt.care_unit == "MICU"
    assert adt.icu_type is IcuType.MEDICAL
    assert adt.event_id == f"fhir-enc-e1-{resource.status}"


@pytest.mark.parametrize(
    ("changes", "expression"),
    [
        ({"status": "planned"}, "Encounter.status"),
        ({"status": "finished"}, "Encounter.period.end"),
        ({"class": None}, "Encounter.class"),
    ],
)
def test_bad_encounter(changes: dict[str, Any], expression: str) -> None:
    assert problem(encounter(**changes), "Encounter").expression == expression


def test_batch_bundle_maps_each_entry_and_reads_patients() -> None:
    patient = {"resourceType": "Patient", "id": "p9", "gender": "female", "birthDate": "1950-06-01"}
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"fullUrl": "urn:uuid:1", "resource": patient},
            {"resource": observation(subject={"reference": "urn:uuid:1"})},
            {"resource": observation(id="bad", valueQuantity={"value": 1, "code": "kg"})},
            {"resource": encounter(subject={"reference": "Patient/p9"})},
        ],
    }
    parsed = parse(raw(bundle), "Bundle")
    assert isinstance(parsed, Bundle)
    entries = bundle_entries(parsed, source="s", codes=DEFAULT_CODE_MAP)
    assert [len(e.events) for e in entries] == [0, 1, 0, 1]
    assert entries[1].events[0].event.patient_id == "p9"
    problem_ = entries[2].problem
    assert problem_ is not None
    assert problem_.expression == "Bundle.entry[2].resource.valueQuantity"
    adt = entries[3].events[0].event
    assert isinstance(adt, AdtEvent)
    assert (adt.sex, adt.age_years) == ("female", 74.0)


def test_bundle_must_be_batch_or_transaction() -> None:
    parsed = parse(raw({"resourceType": "Bundle", "type": "collection"}), "Bundle")
    assert isinstance(parsed, Bundle)
    with pytest.raises(FhirError, match=r"Bundle\.type"):
        bundle_entries(parsed, source="s", codes=DEFAULT_CODE_MAP)


def test_invalid_entry_is_named_by_index() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": observation()},
            {"resource": observation(valueQuantity={"value": "x"})},
        ],
    }
    with pytest.raises(FhirError) as caught:
        parse(raw(bundle), "Bundle")
    assert caught.value.expression == "Bundle.entry[1].resource.valueQuantity.value"
