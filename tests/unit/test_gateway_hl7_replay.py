"""``vigil replay --format hl7``: recorded HL7 v2 logs read as the gateway maps them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.core.events import AdtEvent, ObservationEvent, TopicKind
from streams.gateway.hl7_replay import read_hl7, split_messages
from streams.gateway.hl7_write import adt_message, frame, oru_message
from streams.replay import read_physionet2012
from vigil.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
STAY = sorted((REPO / "data" / "physionet2012-demo" / "set-a").glob("*.txt"))[0]


def stay_messages() -> list[bytes]:
    out = []
    for index, event in enumerate(read_physionet2012(STAY)):
        data = json.loads(event.payload)
        if event.kind is TopicKind.ADT:
            out.append(adt_message(AdtEvent.model_validate(data), f"m{index}"))
        else:
            out.append(oru_message(ObservationEvent.model_validate(data), f"m{index}"))
    return out


@pytest.mark.parametrize("layout", ["mllp", "lines", "crlf"])
def test_a_log_replays_as_the_stay(tmp_path: Path, layout: str) -> None:
    messages = stay_messages()
    if layout == "mllp":
        data = b"".join(frame(m) + b"\n" for m in messages)
    elif layout == "lines":
        data = b"\n".join(m.replace(b"\r", b"\n") for m in messages)
    else:
        data = b"\r\n".join(m.replace(b"\r", b"\r\n") for m in messages)
    path = tmp_path / "feed.hl7"
    path.write_bytes(data)
    assert len(split_messages(data)) == len(messages)
    events = read_hl7(path)
    replayed = read_physionet2012(STAY)
    assert len(events) == len(replayed)
    assert [e.event_time for e in events] == sorted(e.event_time for e in replayed)
    ids = {json.loads(e.payload)["event_id"] for e in events}
    assert ids == {f"hl7-m{i}-0" for i in range(len(messages))}
    assert {e.key for e in events} == {replayed[0].key}


def test_a_bad_message_names_its_position(tmp_path: Path) -> None:
    messages = stay_messages()[:3]
    messages[1] = messages[1].replace(b"/min", b"furlongs")
    path = tmp_path / "bad.hl7"
    path.write_bytes(b"".join(frame(m) for m in messages))
    with pytest.raises(ConfigError, match=r"bad\.hl7: message 2: unknown_unit"):
        read_hl7(path)


def test_empty_or_missing_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.hl7"
    empty.write_bytes(b"\n\n")
    with pytest.raises(ConfigError, match="no HL7 v2 message"):
        read_hl7(empty)
    with pytest.raises(ConfigError, match="unreadable"):
        read_hl7(tmp_path / "missing.hl7")
