"""Stays sent through ``vigil gateway`` are scored exactly as the same stays replayed.

Three demo stays are replayed into one prefix (``vigil replay``'s events) and sent as HL7
v2 (ORU^R01, ADT^A01/A03) over MLLP to a gateway writing to another; a real worker (real
Triton, Kafka, Redis) scores each prefix. The scores and alerts must be the same records
apart from what names the route: event ids in provenance, offsets, and wall-clock times.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from streams.core.events import AdtEvent, ObservationEvent, TopicKind
from streams.gateway.hl7_write import adt_message, oru_message
from streams.replay import ReplayEvent, physionet2012_events, produce, read_length_of_stay
from vigil.stack.settings import StackSettings
from vigil.testing.gateway import MllpClient, fresh_topics, running_gateway
from vigil.testing.outputs import read_records, wait_until_accounted
from vigil.testing.workers import running_worker, worker_env

DEMO = Path(__file__).resolve().parents[2] / "data" / "physionet2012-demo"
N_STAYS = 3
_ROUTE_FIELDS = frozenset({"processing_time", "provenance"})


def _message(event: ReplayEvent, control_id: str) -> bytes:
    data = json.loads(event.payload)
    if event.kind is TopicKind.ADT:
        return adt_message(AdtEvent.model_validate(data), control_id)
    return oru_message(ObservationEvent.model_validate(data), control_id)


def _outputs(stack: StackSettings, prefix: str) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for kind in ("scores", "alerts"):
        grouped: dict[str, list[str]] = defaultdict(list)
        for record in read_records(stack.kafka_bootstrap, f"{prefix}.{kind}"):
            kept = {k: v for k, v in record.items() if k not in _ROUTE_FIELDS}
            grouped[record["patient_id"]].append(json.dumps(kept, sort_keys=True))
        out[kind] = {patient: sorted(values) for patient, values in grouped.items()}
    return out


def _score(stack: StackSettings, prefix: str, ids: set[str], tmp_path: Path) -> None:
    # Step scoring, the default (docs/replay.md, "Determinism of step scoring").
    env = worker_env(
        stack,
        prefix=prefix,
        app_id=prefix,
        data_dir=tmp_path / prefix,
        triton_ood_model="",
    )
    log = tmp_path / f"{prefix}.log"
    with running_worker(env, log) as worker:
        wait_until_accounted(stack.kafka_bootstrap, prefix, ids, worker, log, 300)


def test_gateway_fed_stays_score_as_replayed_ones(stack: StackSettings, tmp_path: Path) -> None:
    paths = sorted((DEMO / "set-a").glob("*.txt"))[:N_STAYS]
    events = list(
        physionet2012_events(paths, length_of_stay=read_length_of_stay(DEMO / "Outcomes-a.txt"))
    )
    replayed = fresh_topics(stack, "gws-replay", partitions=8)
    produce(events, bootstrap=stack.kafka_bootstrap, topic_prefix=replayed)

    through = fresh_topics(stack, "gws-hl7", partitions=8)
    with running_gateway(
        tmp_path / "gateway.log", bootstrap=stack.kafka_bootstrap, prefix=through
    ) as gateway:
        client = MllpClient(gateway.mllp_port)
        for index, event in enumerate(events):
            assert b"MSA|AA|" in client.send(_message(event, f"s{index}"))
        client.close()

    _score(stack, replayed, {json.loads(e.payload)["event_id"] for e in events}, tmp_path)
    _score(stack, through, {f"hl7-s{i}-0" for i in range(len(events))}, tmp_path)
    first, second = _outputs(stack, replayed), _outputs(stack, through)
    assert first["scores"], "no scores"
    assert first == second
