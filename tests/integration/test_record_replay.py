"""Record → replay (jsonl) → record on the real Kafka gives the same keys and values."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

from kafka import KafkaProducer

from streams.adapters.topics import create_topics
from streams.replay import merge, produce, read_files, read_physionet2019, record
from streams.settings import WorkerSettings
from vigil.cli import main
from vigil.stack.settings import StackSettings

PN2019 = Path(__file__).resolve().parents[2] / "data" / "physionet2019-demo"
INPUTS = ["vitals", "labs", "adt"]
Key = tuple[str, str | None, str | None]  # topic kind, key, key encoding
Value = tuple[str | None, str | None]  # value, value encoding


def _by_topic_and_key(path: Path) -> dict[Key, list[Value]]:
    """Values per (topic kind, key) in offset order: what a round trip must keep."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines.sort(key=lambda m: (m["topic"], m["partition"], m["offset"]))
    grouped: dict[Key, list[Value]] = defaultdict(list)
    for m in lines:
        kind = m["topic"].rsplit(".", 1)[-1]
        grouped[(kind, m["key"], m.get("key_encoding"))].append(
            (m["value"], m.get("value_encoding"))
        )
    return dict(grouped)


def _prefix(stack: StackSettings, name: str) -> str:
    create_topics(WorkerSettings(kafka_bootstrap=stack.kafka_bootstrap, topic_prefix=name))
    return name


def test_record_replay_record_keeps_keys_and_values(
    stack: StackSettings, unique: str, tmp_path: Path
) -> None:
    bootstrap = stack.kafka_bootstrap
    source = _prefix(stack, f"rec{unique}a")
    target = _prefix(stack, f"rec{unique}b")
    files = [PN2019 / "p000002.psv", PN2019 / "p000003.psv"]
    events = list(merge(read_files(files, read_physionet2019)))
    assert produce(events, bootstrap=bootstrap, topic_prefix=source) == len(events)
    raw = KafkaProducer(bootstrap_servers=bootstrap)
    raw.send(f"{source}.vitals", key=b"\xff\x01", value=b"\x00\xfe not utf-8")
    raw.flush()
    raw.close()

    first = tmp_path / "first.jsonl"
    common = ["--kafka-bootstrap", bootstrap, "--until-idle", "3", "--from-beginning"]
    assert main(["record", *INPUTS, "--out", str(first), "--topic-prefix", source, *common]) == 0
    assert len(first.read_text().splitlines()) == len(events) + 1

    replay = ["replay", str(first), "--format", "jsonl", "--kafka-bootstrap", bootstrap]
    assert main([*replay, "--topic-prefix", target]) == 0

    second = tmp_path / "second.jsonl"
    # Full topic names this time: the prefix option does not apply to them.
    names = [f"{target}.{kind}" for kind in INPUTS]
    assert main(["record", *names, "--out", str(second), *common]) == 0

    recorded, replayed = _by_topic_and_key(first), _by_topic_and_key(second)
    assert replayed == recorded
    assert ("vitals", "p000002", None) in recorded
    binary = recorded[("vitals", "/wE=", "base64")]
    assert binary == [("AP4gbm90IHV0Zi04", "base64")]


def test_recording_from_the_end_captures_only_later_records(
    stack: StackSettings, unique: str, tmp_path: Path
) -> None:
    bootstrap = stack.kafka_bootstrap
    prefix = _prefix(stack, f"rec{unique}c")
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    producer.send(f"{prefix}.adt", key=b"p1", value=b"before")
    producer.flush()
    started = threading.Event()
    out = tmp_path / "live.jsonl"
    counts: list[int] = []

    def progress(count: int) -> None:
        counts.append(count)
        started.set()

    recorder = threading.Thread(
        target=record,
        args=([f"{prefix}.adt"], out),
        kwargs={"bootstrap": bootstrap, "until_idle": timedelta(seconds=3), "progress": progress},
    )
    recorder.start()
    assert started.wait(30)
    producer.send(f"{prefix}.adt", key=b"p1", value=b"after")
    producer.flush()
    producer.close()
    recorder.join(60)
    assert not recorder.is_alive()
    assert [json.loads(line)["value"] for line in out.read_text().splitlines()] == ["after"]
    assert counts[0] == 0
