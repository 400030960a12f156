"""FHIR R4 REST in and out, over HTTP against the real ``vigil gateway`` process, Kafka and
Redis."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import redis
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.riskassessment import RiskAssessment
from kafka import KafkaProducer

from tests.unit.test_gateway_fhir import encounter, observation
from tests.unit.test_gateway_fhir_out import alert, score
from vigil.stack.settings import StackSettings
from vigil.testing.gateway import Gateway, fresh_topics, running_gateway
from vigil.testing.outputs import read_records

FHIR = {"Content-Type": "application/fhir+json"}
MAX_BYTES = 65_536


@pytest.fixture(scope="module")
def prefix(stack: StackSettings) -> str:
    return fresh_topics(stack, "gwf")


@pytest.fixture(scope="module")
def gateway(
    stack: StackSettings, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with running_gateway(
        log, bootstrap=stack.kafka_bootstrap, prefix=prefix, max_message_bytes=str(MAX_BYTES)
    ) as running:
        yield running
    print(log.read_text()[-4000:])


@pytest.fixture
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.http_port}/fhir", timeout=30) as c:
        yield c


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(path, content=json.dumps(body), headers=FHIR)


def issue(response: httpx.Response) -> dict[str, Any]:
    OperationOutcome.model_validate(response.json())  # a valid FHIR resource
    assert response.headers["content-type"].startswith("application/fhir+json")
    first: dict[str, Any] = response.json()["issue"][0]
    return first


def ids(bootstrap: str, topic: str) -> list[str]:
    return [r["event_id"] for r in read_records(bootstrap, topic)]


def test_observation_post_lands_on_vitals_and_a_resend_is_a_duplicate(
    http: httpx.Client, stack: StackSettings, prefix: str
) -> None:
    body = observation(id=f"obs-{uuid.uuid4().hex[:8]}")
    first = post(http, "/Observation", body)
    assert first.status_code == 201, first.text
    event_id = f"fhir-obs-{body['id']}-vitals"
    assert first.headers["location"] == f"/fhir/Observation/{event_id}"
    assert post(http, "/Observation", body).status_code == 201
    landed = [
        r
        for r in read_records(stack.kafka_bootstrap, f"{prefix}.vitals")
        if r["event_id"] == event_id
    ]
    assert len(landed) == 2
    assert landed[0]["observations"] == [{"code": "HR", "value": 80.0, "unit": "/min"}]
    assert landed[0]["source"] == "fhir-gateway"


def test_encounter_post_lands_on_adt(http: httpx.Client, stack: StackSettings, prefix: str) -> None:
    response = post(http, "/Encounter", encounter(id="enc-7"))
    assert response.status_code == 201, response.text
    assert "fhir-enc-enc-7-in-progress" in ids(stack.kafka_bootstrap, f"{prefix}.adt")


@pytest.mark.parametrize(
    ("path", "body", "status", "expression"),
    [
        (
            "/Observation",
            observation(valueQuantity={"value": "x"}),
            400,
            "Observation.valueQuantity.value",
        ),
        ("/Observation", observation(status=None), 400, "Observation.status"),
        ("/Observation", {"resourceType": "Encounter"}, 400, "Observation.resourceType"),
        (
            "/Observation",
            observation(code={"coding": [{"system": "http://loinc.org", "code": "0000-0"}]}),
            422,
            "Observation.code",
        ),
        (
            "/Observation",
            observation(valueQuantity={"value": 1, "code": "kg"}),
            422,
            "Observation.valueQuantity",
        ),
        ("/Encounter", encounter(status="planned"), 422, "Encounter.status"),
    ],
)
def test_refused_resource_gets_an_operation_outcome_naming_the_field_and_is_dead_lettered(
    http: httpx.Client,
    stack: StackSettings,
    prefix: str,
    path: str,
    body: dict[str, Any],
    status: int,
    expression: str,
) -> None:
    response = post(http, path, body)
    assert response.status_code == status, response.text
    first = issue(response)
    assert first["expression"] == [expression]
    assert expression in first["diagnostics"]
    dead = read_records(stack.kafka_bootstrap, f"{prefix}.deadletter")
    assert any(
        d["source_topic"] == "fhir"
        and expression in d["detail"]
        and json.loads(d["payload"]) == body
        for d in dead
    )


def test_transaction_with_a_bad_entry_is_refused_whole(
    http: httpx.Client, stack: StackSettings, prefix: str
) -> None:
    good = observation(id=f"tx-{uuid.uuid4().hex[:8]}")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": good, "request": {"method": "POST", "url": "Observation"}},
            {"resource": observation(id="tx-bad", valueQuantity={"value": 1, "code": "kg"})},
        ],
    }
    response = post(http, "", bundle)
    assert response.status_code == 422
    assert issue(response)["expression"] == ["Bundle.entry[1].resource.valueQuantity"]
    assert f"fhir-obs-{good['id']}-vitals" not in ids(stack.kafka_bootstrap, f"{prefix}.vitals")


def test_batch_answers_each_entry(http: httpx.Client, stack: StackSettings, prefix: str) -> None:
    good = observation(id=f"batch-{uuid.uuid4().hex[:8]}")
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": good},
            {"resource": observation(id="batch-bad", valueQuantity={"value": 1, "code": "kg"})},
        ],
    }
    response = post(http, "", bundle)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in reply["entry"]]
    assert statuses == ["201 Created", "422 Unprocessable Entity"]
    assert f"fhir-obs-{good['id']}-vitals" in ids(stack.kafka_bootstrap, f"{prefix}.vitals")


def test_wrong_media_type_and_oversized_body(http: httpx.Client) -> None:
    response = http.post("/Observation", content=b"<xml/>", headers={"Content-Type": "text/xml"})
    assert response.status_code == 415
    assert issue(response)["code"] == "not-supported"
    huge = observation(note=[{"text": "x" * MAX_BYTES}])
    response = post(http, "/Observation", huge)
    assert response.status_code == 413
    assert issue(response)["code"] == "too-costly"


def test_risk_assessment_and_flag_read_the_worker_cache(
    http: httpx.Client, stack: StackSettings, prefix: str
) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    keys = [f"{prefix}:patient:p77:score", f"{prefix}:patient:p77:alerts"]
    record = alert()
    client.set(keys[0], score().model_dump_json(), ex=600)
    client.hset(keys[1], record.alert_id, record.model_dump_json())
    client.expire(keys[1], 600)
    try:
        response = http.get("/RiskAssessment", params={"subject": "Patient/p77"})
        assert response.status_code == 200, response.text
        Bundle.model_validate(response.json())
        (entry,) = response.json()["entry"]
        RiskAssessment.model_validate(entry["resource"])
        flags = http.get("/Flag", params={"subject": "p77", "status": "active"}).json()
        assert [e["resource"]["id"] for e in flags["entry"]] == [record.alert_id]
        assert (
            http.get("/Flag", params={"subject": "p77", "status": "inactive"}).json()["total"] == 0
        )
        assert (
            http.get("/RiskAssessment", params={"subject": "Patient/nobody"}).json()["total"] == 0
        )
        missing = http.get("/RiskAssessment")
        assert missing.status_code == 400
        assert issue(missing)["expression"] == ["RiskAssessment.subject"]
    finally:
        client.delete(*keys)
        client.close()


def test_risk_assessment_history_follows_the_scores_topic(
    http: httpx.Client, stack: StackSettings, prefix: str
) -> None:
    producer = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    for hours in range(3):
        record = score(0.1 * (hours + 1)).model_copy(
            update={
                "patient_id": "hist1",
                "event_time": score().event_time + timedelta(hours=hours),
            }
        )
        producer.send(f"{prefix}.scores", key=b"hist1", value=record.model_dump_json().encode())
    producer.flush()
    producer.close()
    deadline = time.monotonic() + 30
    while True:
        reply = http.get("/RiskAssessment", params={"subject": "Patient/hist1"}).json()
        if reply["total"] == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    Bundle.model_validate(reply)
    risks = [e["resource"]["prediction"][0]["probabilityDecimal"] for e in reply["entry"]]
    assert risks == pytest.approx([0.3, 0.2, 0.1])  # newest first
    limited = http.get("/RiskAssessment", params={"subject": "hist1", "_count": "2"}).json()
    assert limited["total"] == 2
    assert (
        http.get("/RiskAssessment", params={"subject": "hist1", "_count": "0"}).status_code == 400
    )
