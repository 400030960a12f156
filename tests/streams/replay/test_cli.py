"""`vigil replay` and `vigil record` arguments, and a bad file among good ones, no Kafka."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from streams.core.events import ImagingEvent
from streams.core.imaging import decode_image
from streams.replay.event import ReplayEvent
from vigil.cli import main

ROOT = Path(__file__).resolve().parents[3]
PN2019 = ROOT / "data" / "physionet2019-demo"
BUNDLE = Path(__file__).parent / "data" / "vitals-bundle.json"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "data", "--format", "hl8"], "unsupported --format 'hl8'; supported: "),
        (["replay", "data", "--format", "fhir", "--outcomes", "x"], "--outcomes applies to"),
        (["replay", "data", "--seed", "3"], "--seed applies to --sample only"),
        (["replay", "data", "--sample", "0"], "Invalid value for '--sample'"),
        (["replay", "data", "--limit", "0"], "Invalid value for '--limit'"),
        (["replay", "data", "--speed", "-2"], "--speed must be a positive number or 'max'"),
        (["replay", "--format", "jsonl"], "Missing argument"),
        (["replay", "/no/such.jsonl", "--format", "jsonl"], "no such file or folder"),
        (["record", "vitals"], "Missing option '--out'"),
        (["record", "--out", "x.jsonl"], "Missing argument"),
        (["record", "vitals", "--out", "/no/such/dir/x.jsonl"], "no such folder: /no/such/dir"),
        (["record", "vitals", "--out", "x.jsonl", "--until-idle", "0"], "--until-idle must be"),
        (["record", "vitals", "--out", "x.jsonl", "--until-idle", "soon"], "'--until-idle'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vigil: error: ")
    assert message in err
    assert err.count("\n") == 1


@pytest.fixture
def produced(monkeypatch: pytest.MonkeyPatch) -> list[ReplayEvent]:
    sent: list[ReplayEvent] = []

    def fake_produce(events: Any, **options: Any) -> int:
        for event in events:
            sent.append(event)
            options["progress"](len(sent), event.event_time)
        return len(sent)

    monkeypatch.setattr("vigil.cli.produce", fake_produce)
    return sent


def test_bad_file_is_named_the_others_are_produced_and_exit_is_1(
    tmp_path: Path, produced: list[ReplayEvent], capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(PN2019 / "p000002.psv", tmp_path)
    shutil.copy(PN2019 / "p000003.psv", tmp_path)
    (tmp_path / "broken.psv").write_text("HR|ICULOS\n80\n")
    assert main(["replay", str(tmp_path), "--format", "physionet2019"]) == 1
    err = capsys.readouterr().err
    assert "skipped broken.psv:2: 1 fields, header has 2" in err
    assert "from 2 of 3 files" in err
    assert {e.patient_id for e in produced} == {"p000002", "p000003"}
    assert [e.event_time for e in produced] == sorted(e.event_time for e in produced)


def test_sample_draws_files_reproducibly_and_limit_caps(
    produced: list[ReplayEvent], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["replay", str(PN2019), "--format", "physionet2019", "--sample", "3", "--seed", "7"]
    assert main(argv) == 0
    first = {e.patient_id for e in produced}
    produced.clear()
    assert main(argv) == 0
    assert {e.patient_id for e in produced} == first
    assert len(first) == 3
    assert "from 3 of 3 files" in capsys.readouterr().err


def test_fhir_and_jsonl_files_found_in_folders(
    tmp_path: Path, produced: list[ReplayEvent], capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(BUNDLE, tmp_path)
    assert main(["replay", str(tmp_path), "--format", "fhir"]) == 0
    assert len(produced) == 4
    line = {
        "topic": "x.scores",
        "partition": 0,
        "offset": 0,
        "timestamp": 5,
        "key": "k",
        "value": "v",
    }
    (tmp_path / "r.jsonl").write_text(json.dumps(line) + "\n")
    produced.clear()
    assert main(["replay", str(tmp_path), "--format", "jsonl"]) == 0
    assert [(e.kind.value, e.payload) for e in produced] == [("scores", b"v")]


def test_imaging_fixture_adds_one_labelled_study_per_stay(
    tmp_path: Path, produced: list[ReplayEvent]
) -> None:
    images = tmp_path / "images"
    argv = ["replay", str(PN2019), "--format", "physionet2019", "--sample", "3", "--seed", "7"]
    assert main([*argv, "--imaging-fixture", str(images)]) == 0
    studies = [e for e in produced if e.kind.value == "imaging"]
    stays = {e.patient_id for e in produced if e.kind.value != "imaging"}
    assert sorted(e.patient_id for e in studies) == sorted(stays)
    assert [e.event_time for e in produced] == sorted(e.event_time for e in produced)
    for event in studies:
        study = ImagingEvent.model_validate_json(event.payload)
        assert study.source == "imaging-fixture"
        assert study.metadata["fixture"] is True
        assert event.key == study.patient_id.encode()
        path = Path(study.image_uri.removeprefix("file://")) if study.image_uri else None
        assert path is not None
        assert path.is_relative_to(images.resolve())
        assert decode_image(path.read_bytes()).ndim == 2
    first = [e.payload for e in studies]
    produced.clear()
    assert main([*argv, "--imaging-fixture", str(images)]) == 0
    assert [e.payload for e in produced if e.kind.value == "imaging"] == first  # seeded
