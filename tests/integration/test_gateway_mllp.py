"""The real ``vigil gateway`` process over MLLP sockets with the real local Kafka.

PhysioNet demo stays converted to ORU^R01 and ADT^A01 land on the input topics as the same
events as ``vigil replay`` writes; a resend repeats the event ids; hostile input is
answered (AE, dead-lettered) or cut off, and the gateway keeps serving; with Kafka
unreachable every message is answered AR.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.core.events import AdtEvent, ObservationEvent, TopicKind
from streams.gateway.hl7_write import adt_message, oru_message
from streams.replay import ReplayEvent, read_physionet2012
from vigil.stack.settings import StackSettings
from vigil.testing.gateway import Gateway, MllpClient, fresh_topics, health, running_gateway
from vigil.testing.outputs import read_records
from vigil.testing.workers import free_port

REPO = Path(__file__).resolve().parents[2]
STAYS = sorted((REPO / "data" / "physionet2012-demo" / "set-a").glob("*.txt"))[:3]
MAX_BYTES = 65_536
_INPUTS = (TopicKind.VITALS, TopicKind.LABS, TopicKind.ADT)


@pytest.fixture(scope="module")
def prefix(stack: StackSettings) -> str:
    return fresh_topics(stack, "gw")


@pytest.fixture(scope="module")
def gateway(
    stack: StackSettings, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with running_gateway(
        log,
        bootstrap=stack.kafka_bootstrap,
        prefix=prefix,
        max_message_bytes=str(MAX_BYTES),
        frame_timeout_seconds="1",
        max_connections="6",
    ) as running:
        yield running
    print(log.read_text()[-4000:])


def _message(event: ReplayEvent, control_id: str) -> bytes:
    data = json.loads(event.payload)
    if event.kind is TopicKind.ADT:
        return adt_message(AdtEvent.model_validate(data), control_id)
    return oru_message(ObservationEvent.model_validate(data), control_id)


def _msa(ack: bytes) -> tuple[str, str, str]:
    message = hl7.parse(ack.decode())
    msa = message.segment("MSA")
    text = message.unescape(str(msa(3))) if len(msa) > 3 else ""
    return str(msa(1)), str(msa(2)), text


def _comparable(kind: str, record: dict[str, Any]) -> tuple[str, str]:
    kept = {k: v for k, v in record.items() if k not in ("event_id", "source")}
    return kind, json.dumps(kept, sort_keys=True)


def _inputs(bootstrap: str, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (kind.value, record)
        for kind in _INPUTS
        for record in read_records(bootstrap, f"{prefix}.{kind.value}")
    ]


def test_demo_stays_land_as_replay_would_write_them_and_resends_repeat_ids(
    gateway: Gateway, stack: StackSettings, prefix: str
) -> None:
    replayed = [event for path in STAYS for event in read_physionet2012(path)]
    client = MllpClient(gateway.mllp_port)
    sent: list[tuple[bytes, str]] = []
    for index, event in enumerate(replayed):
        control_id = f"{event.patient_id}-{index}"
        message = _message(event, control_id)
        code, acked, text = _msa(client.send(message))
        assert (code, acked, text) == ("AA", control_id, "")
        sent.append((message, control_id))

    landed = _inputs(stack.kafka_bootstrap, prefix)
    assert Counter(_comparable(kind, record) for kind, record in landed) == Counter(
        _comparable(event.kind.value, json.loads(event.payload)) for event in replayed
    )
    ids = Counter(record["event_id"] for _, record in landed)
    assert set(ids) == {f"hl7-{control_id}-0" for _, control_id in sent}
    assert {record["source"] for _, record in landed} == {"hl7-gateway"}

    for message, control_id in sent[:5]:  # the sender did not see these ACKs: it resends
        assert _msa(client.send(message))[:2] == ("AA", control_id)
    client.close()
    again = Counter(record["event_id"] for _, record in _inputs(stack.kafka_bootstrap, prefix))
    assert sum(again.values()) == sum(ids.values()) + 5
    assert set(again) == set(ids)  # duplicates by id, which the worker drops


GOOD = (
    b"MSH|^~\\&|MON|ICU|VIGIL|HOSP|20250101120005+0000||ORU^R01|{cid}|P|2.5\r"
    b"PID|1||9001\rOBR|1|||P|||20250101120000+0000\r"
    b"OBX|1|NM|8867-4^Heart rate^LN||80|/min|||||F\r"
)


def good(control_id: str) -> bytes:
    return GOOD.replace(b"{cid}", control_id.encode())


@pytest.mark.parametrize(
    ("message", "reason", "detail"),
    [
        (b"this is not HL7", "invalid_field", "first segment is not MSH"),
        (good("H1").replace(b"8867-4", b"0000-0"), "unknown_code", "OBX 4-3"),
        (good("H2").replace(b"/min", b"mm[Hg]"), "unknown_unit", "OBX 4-6"),
        (good("H3").replace(b"PID|1||9001", b"PID|1||\xff\xfe\xfd"), "invalid_field", "UTF-8"),
        (good("H4").replace(b"PID|1||9001\r", b""), "invalid_field", "comes before PID"),
        (good("H5").replace(b"ORU^R01", b"ORM^O01"), "invalid_field", "MSH-9"),
        (good("H6")[:52], "missing_field", "MSH-10"),
    ],
    ids=["garbage", "unknown-code", "wrong-unit", "non-utf8", "order", "type", "truncated"],
)
def test_unusable_message_gets_ae_and_goes_to_dead_letter(
    gateway: Gateway, stack: StackSettings, prefix: str, message: bytes, reason: str, detail: str
) -> None:
    client = MllpClient(gateway.mllp_port)
    code, _, text = _msa(client.send(message))
    assert code == "AE"
    assert detail in text
    assert _msa(client.send(good(f"ok-{reason}")))[0] == "AA"  # the connection carries on
    client.close()
    dead = read_records(stack.kafka_bootstrap, f"{prefix}.deadletter")
    mine = [d for d in dead if d["payload_size_bytes"] == len(message) and detail in d["detail"]]
    assert mine, dead
    record = mine[-1]
    assert record["reason"] == reason
    assert record["source_topic"] == "mllp"
    assert "MLLP from 127.0.0.1:" in record["detail"]
    if record["payload_encoding"] == "utf-8":
        assert record["payload"].encode() == message
    assert record["key"] is None


def test_oversized_frame_gets_ae_and_the_connection_closes(
    gateway: Gateway, stack: StackSettings, prefix: str
) -> None:
    huge = good("BIG") + b"OBX|2|NM|8867-4^HR^LN||81|/min\r" * (MAX_BYTES // 30)
    client = MllpClient(gateway.mllp_port)
    code, control_id, text = _msa(client.send(huge))
    assert (code, control_id) == ("AE", "BIG")
    assert "limit" in text
    assert client.closed_by_server()
    client.close()
    dead = read_records(stack.kafka_bootstrap, f"{prefix}.deadletter")
    assert any(d["reason"] == "payload_too_large" and d["payload_truncated"] for d in dead)


def test_slow_loris_truncated_and_unframed_connections_are_cut_off(gateway: Gateway) -> None:
    slow = MllpClient(gateway.mllp_port)
    slow.sock.sendall(b"\x0bMSH|^~\\&|")  # then nothing: the 1 s frame deadline passes
    time.sleep(1.5)
    assert slow.closed_by_server()
    slow.close()

    unframed = MllpClient(gateway.mllp_port)
    unframed.sock.sendall(good("NOSTART"))
    assert unframed.closed_by_server()
    unframed.close()

    truncated = MllpClient(gateway.mllp_port)
    truncated.sock.sendall(b"\x0b" + good("HALF")[:40])
    truncated.close()  # closed mid-frame: no ACK was sent, the sender resends

    client = MllpClient(gateway.mllp_port)
    assert _msa(client.send(good("after-hostile")))[0] == "AA"
    client.close()
    assert gateway.alive()


def test_pipelined_messages_are_answered_in_their_order(
    gateway: Gateway, stack: StackSettings, prefix: str
) -> None:
    # 40 messages in one write, before any ACK: handled together (different patients, so
    # different partitions acknowledge in any order), answered in the order sent; the 18th
    # is unusable (AE); bytes without a start byte after them close the connection, once
    # every message before them is answered.
    ids = [f"pipe-{n}" for n in range(40)]
    frames = []
    for n, control_id in enumerate(ids):
        message = good(control_id).replace(b"PID|1||9001", f"PID|1||pipe{n}".encode())
        if n == 17:
            message = message.replace(b"8867-4^Heart rate^LN", b"99999-9^Unknown^LN")
        frames.append(b"\x0b" + message + b"\x1c\r")
    client = MllpClient(gateway.mllp_port)
    client.sock.sendall(b"".join(frames) + b"no start byte")
    answers = [_msa(client.read_ack())[:2] for _ in ids]
    assert answers == [("AE" if n == 17 else "AA", cid) for n, cid in enumerate(ids)]
    assert client.closed_by_server()
    client.close()
    landed = {
        record["event_id"]
        for record in read_records(stack.kafka_bootstrap, f"{prefix}.vitals")
        if record["event_id"].startswith("hl7-pipe-")
    }
    assert landed == {f"hl7-{cid}-0" for n, cid in enumerate(ids) if n != 17}


def _open_connections(gateway: Gateway) -> float:
    url = f"http://127.0.0.1:{gateway.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("vigil_gateway_connections "):
                return float(line.split()[1])
    raise AssertionError("no vigil_gateway_connections gauge")


def test_connections_beyond_the_limit_are_refused(gateway: Gateway) -> None:
    deadline = time.monotonic() + 10
    while _open_connections(gateway) and time.monotonic() < deadline:
        time.sleep(0.1)  # earlier tests' connections are still closing on the server side
    held = [MllpClient(gateway.mllp_port) for _ in range(6)]
    for client in held:  # each is accepted and served
        assert _msa(client.send(good("held")))[0] == "AA"
    extra = MllpClient(gateway.mllp_port)
    assert extra.closed_by_server()
    extra.close()
    for client in held:
        client.close()
    while _open_connections(gateway) and time.monotonic() < deadline + 10:
        time.sleep(0.1)
    client = MllpClient(gateway.mllp_port)
    assert _msa(client.send(good("after-limit")))[0] == "AA"
    client.close()


def test_metrics_count_answers_without_identifiers(gateway: Gateway) -> None:
    url = f"http://127.0.0.1:{gateway.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    assert 'vigil_gateway_messages_total{ack="AA",message_type="ORU^R01",protocol="mllp"}' in text
    assert "vigil_gateway_ack_seconds_bucket" in text
    # No patient id in any metric name or label value. Sample values are numbers (timestamps
    # among them), so a digit run such as the id may turn up there by chance.
    patient_ids = ("9001", "pipe")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            words = [sample.name, *sample.labels.keys(), *sample.labels.values()]
            assert not [w for w in words for pid in patient_ids if pid in w], sample
    assert health(gateway) == (200, {"status": "ok", "kafka": "up"})


def test_kafka_unreachable_answers_ar(tmp_path: Path, unique: str) -> None:
    with running_gateway(
        tmp_path / "gateway.log",
        bootstrap=f"127.0.0.1:{free_port()}",
        prefix=f"gw-{unique}",
        wait_healthy=False,
        kafka_delivery_timeout_seconds="1",
    ) as down:
        assert health(down) == (503, {"status": "degraded", "kafka": "down"})
        client = MllpClient(down.mllp_port)
        code, control_id, text = _msa(client.send(good("AR1")))
        assert (code, control_id) == ("AR", "AR1")
        assert "resend" in text
        assert _msa(client.send(b"garbage"))[0] == "AR"  # not even dead-letter is possible
        client.close()
        assert down.alive()
