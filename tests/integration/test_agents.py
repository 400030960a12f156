"""The worker's Faust agents under Faust's test context, with the real Triton and Redis.

``agent.test_context()`` feeds records straight into an agent's stream, without Kafka.
The agents' Kafka outputs (scores, alerts, dead letters) are replaced by in-memory Faust
channels, so the test reads exactly what the agents sent; everything else is the worker
as deployed: the Processor, the ``patients`` table (memory store) with its changelog on
the real Kafka, per-patient locks, acknowledgement after processing, Triton over gRPC
and Redis.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from streams.app import VigilWorker
from streams.core.events import TopicKind
from streams.settings import WorkerSettings
from streams.wiring import create_worker
from vigil.stack.settings import StackSettings

ADMIT = datetime(2025, 1, 1, tzinfo=UTC)


def _adt(patient: str) -> bytes:
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": f"{patient}-admit",
            "patient_id": patient,
            "event_time": ADMIT.isoformat(),
            "source": "agent-test",
            "action": "admit",
            "age_years": 71,
            "sex": "male",
            "icu_type": "medical",
        }
    ).encode()


def _vitals(patient: str, minutes: int, heart_rate: float) -> bytes:
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": f"{patient}-v{minutes}",
            "patient_id": patient,
            "event_time": (ADMIT + timedelta(minutes=minutes)).isoformat(),
            "source": "agent-test",
            "observations": [
                {"code": "HR", "value": heart_rate, "unit": "/min"},
                {"code": "RespRate", "value": 24, "unit": "/min"},
                {"code": "SysABP", "value": 95, "unit": "mm[Hg]"},
                {"code": "Temp", "value": 38.4, "unit": "Cel"},
            ],
        }
    ).encode()


def _drain(channel: Any) -> list[dict[str, Any]]:
    """Records sent to an in-memory channel so far, decoded."""
    out = []
    while not channel.queue.empty():
        event = channel.queue.get_nowait()
        out.append(json.loads(event.value) if event.value else {})
    return out


def _worker(stack: StackSettings, unique: str) -> VigilWorker:
    settings = WorkerSettings(
        kafka_bootstrap=stack.kafka_bootstrap,
        triton_url=stack.triton_grpc_url,
        redis_url=stack.redis_url,
        topic_prefix=f"agent{unique}",
        app_id=f"agent{unique}",
        metrics_port=0,
    )
    worker = create_worker(settings)
    app = worker.app
    app.finalize()
    app.flow_control.resume()
    worker.outputs = {kind: app.channel() for kind in worker.outputs}
    return worker


def _subscribe(worker: VigilWorker) -> dict[TopicKind, Any]:
    """A subscriber per output channel: what the agents send is queued there."""
    return {kind: channel.clone(is_iterator=True) for kind, channel in worker.outputs.items()}


async def _run(stack: StackSettings, unique: str) -> tuple[VigilWorker, dict[str, Any]]:
    worker = _worker(stack, unique)  # inside the loop: Faust binds to the running loop
    app = worker.app
    await app.producer.start()  # the table's changelog goes to the real Kafka
    await worker.tables.changelog_topic.maybe_declare()
    await worker.models.scorer.start()
    await worker.models.explainer.start()
    assert worker.models.ood_scorer is not None  # on by default
    await worker.models.ood_scorer.start()
    await worker.store.start()
    worker.ready.set()
    agents = {name.rsplit("-", 1)[-1]: agent for name, agent in app.agents.items()}
    received = _subscribe(worker)
    try:
        async with agents["adt"].test_context() as adt:
            await adt.put(key=b"alpha", value=_adt("alpha"))
            await adt.put(key=b"beta", value=_adt("beta"))
            await worker.drain()  # records are processed off the agent's loop
        async with agents["vitals"].test_context() as vitals:
            for minutes in (60, 120, 180):
                await vitals.put(key=b"alpha", value=_vitals("alpha", minutes, 118))
                await vitals.put(key=b"beta", value=_vitals("beta", minutes, 72))
            await vitals.put(key=b"beta", value=b'{"not": "an event"')  # malformed
            await vitals.put(key=b"alpha", value=_vitals("alpha", 60, 118))  # duplicate
            await vitals.put(key=b"beta", value=_vitals("beta", 240, 70))
            await worker.drain()
        await worker.store.flush()
        return worker, {
            "redis_keys": [worker.store.score_key(p) for p in ("alpha", "beta")],
            "scores": _drain(received[TopicKind.SCORES]),
            "deadletter": _drain(received[TopicKind.DEADLETTER]),
            "table": {key: worker.tables.get(key) for key in ("alpha", "beta")},
        }
    finally:
        await worker.store.close()
        await worker.models.ood_scorer.close()
        await worker.models.explainer.close()
        await worker.models.scorer.close()
        await app.producer.stop()
        # Iterating a stream makes Faust build its consumer, whose thread's event loop
        # exists from construction on; it is never started here, so close that loop.
        app.consumer._thread.thread_loop.close()  # type: ignore[attr-defined]


def test_agents_score_patients_and_isolate_a_bad_record(stack: StackSettings, unique: str) -> None:
    worker, result = asyncio.run(_run(stack, unique))

    scores = result["scores"]
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for score in scores:
        by_patient.setdefault(score["patient_id"], []).append(score)
    # Both patients are scored by the model on Triton, beta also after alpha's bad record.
    assert set(by_patient) == {"alpha", "beta"}
    assert all(not s["degraded"] and s["model"] == "deterioration" for s in scores)
    assert all(0.0 <= s["risk"] <= 1.0 for s in scores)
    # The OOD detector (on by default) answered for every score, with its channels.
    assert all(s["ood"] is not None and s["ood"]["threshold"] == 1.0 for s in scores)
    assert max(s["event_time"] for s in by_patient["beta"]).startswith("2025-01-01T04:00")
    # Every accepted record is cited by exactly one score; the duplicate by none.
    cited = [i for s in scores for i in s["provenance"]["event_ids"]]
    assert len(cited) == len(set(cited))
    assert set(cited) >= {f"alpha-v{m}" for m in (60, 120, 180)} | {"beta-v240"}
    # The malformed record is dead-lettered with its reason and origin.
    (dead,) = result["deadletter"]
    assert dead["reason"] == "invalid_json"
    assert dead["source_topic"] == worker.settings.topic("vitals")
    # The table holds both states (written after their changelog records reached Kafka).
    assert all(result["table"].values())
    # Redis holds each patient's latest score.
    client = redis.Redis.from_url(stack.redis_url)
    latest = [json.loads(client.get(key) or b"{}") for key in result["redis_keys"]]
    assert [r.get("patient_id") for r in latest] == ["alpha", "beta"]
    assert latest[1]["event_time"].startswith("2025-01-01T04:00")
