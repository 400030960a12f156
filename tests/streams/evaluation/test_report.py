"""``vigil evaluate`` end to end on small recorded files: report folder and CLI errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streams.evaluation.run import EvaluateRequest, run_evaluation
from vigil.cli import main

from .factory import alert, envelope, score

N_STAYS = 30


def _write_2012(tmp_path: Path) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(0)
    outcome_rows = ["RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"]
    score_lines: list[str] = []
    alert_lines: list[str] = []
    for i in range(N_STAYS):
        pid = str(140000 + i)
        died = int(i % 3 == 0)
        saps = -1 if i == 1 else int(rng.integers(5, 25))
        outcome_rows.append(f"{pid},{saps},{int(rng.integers(0, 12))},{3 + i % 4},-1,{died}")
        if i == N_STAYS - 1:
            continue  # an outcome without scores
        for hour in range(0, 49, 4):
            risk = float(np.clip(0.2 + 0.4 * died + rng.normal(0, 0.15), 0, 1))
            record = score(pid, hour + 0.5 * (i % 2), risk, news2=int(rng.integers(0, 9)))
            line = record.model_dump_json() if hour % 8 else envelope(record, hour)
            score_lines.append(line)
            if risk >= 0.6:
                alert_lines.append(alert(pid, hour + 0.5 * (i % 2)).model_dump_json())
    score_lines.insert(5, "this is not a record")
    (tmp_path / "Outcomes-a.txt").write_text("\n".join(outcome_rows) + "\n")
    (tmp_path / "scores.jsonl").write_text("\n".join(score_lines) + "\n")
    (tmp_path / "alerts.jsonl").write_text("\n".join(alert_lines) + "\n")
    return tmp_path / "scores.jsonl", tmp_path / "alerts.jsonl", tmp_path / "Outcomes-a.txt"


def _request(**overrides: object) -> EvaluateRequest:
    values: dict[str, object] = {
        "scores": None,
        "topic": None,
        "alerts": None,
        "alerts_topic": None,
        "outcomes": [],
        "data_format": "physionet2012",
        "report": None,
        "kafka_bootstrap": "127.0.0.1:9092",
        "n_resamples": 50,
    }
    values.update(overrides)
    return EvaluateRequest(**values)  # type: ignore[arg-type]


def _check_report(report: Path) -> dict[str, Any]:
    html = (report / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert {"roc.png", "precision_recall.png", "calibration.png", "burden.png"} <= set(images)
    assert any(name.startswith("timeline_") for name in images)
    for name in images:
        assert "/" not in name  # relative, next to the HTML
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<script" not in html  # opens from disk, no server
    assert "http" not in html
    text = (report / "metrics.json").read_text()
    assert "NaN" not in text
    metrics: dict[str, Any] = json.loads(text)
    return metrics


def test_physionet2012_report(tmp_path: Path) -> None:
    scores, alerts, outcomes = _write_2012(tmp_path)
    report = tmp_path / "report"
    summary = run_evaluation(
        _request(scores=scores, alerts=alerts, outcomes=[outcomes], report=report)
    )
    metrics = _check_report(report)
    assert summary["bad_lines"] == {"scores": 1, "alerts": 0}
    assert metrics["stays"] == {
        "scored": N_STAYS - 1,
        "evaluated": N_STAYS - 1,
        "positive": 10,
        "scored_without_outcome": 0,
        "outcome_without_scores": 1,
    }
    discrimination = metrics["discrimination"]
    assert set(discrimination) == {"48h", "24h"}
    assert set(discrimination["48h"]) == {"model", "news2", "saps_i", "sofa"}
    assert discrimination["48h"]["saps_i"]["n"] == N_STAYS - 2  # one SAPS-I is -1
    assert discrimination["48h"]["model"]["auroc"]["estimate"] > 0.8
    assert metrics["alerts"]["burden"]["alerts"] > 0
    assert metrics["calibration"]["48h"]["ece"] is not None
    assert metrics["utility"] is None
    again = tmp_path / "again"
    run_evaluation(_request(scores=scores, alerts=alerts, outcomes=[outcomes], report=again))
    assert (again / "metrics.json").read_text() == (report / "metrics.json").read_text()


def test_physionet2019_report(tmp_path: Path) -> None:
    psv = tmp_path / "psv"
    psv.mkdir()
    lines: list[str] = []
    for i in range(12):
        septic = i % 3 == 0
        labels = [0] * 20 + ([1] * 10 if septic else [0] * 10)
        rows = [f"80|{t + 1}|{label}" for t, label in enumerate(labels)]
        (psv / f"p{i:06d}.psv").write_text("HR|ICULOS|SepsisLabel\n" + "\n".join(rows) + "\n")
        for t in range(30):
            risk = 0.7 if septic and t >= 16 else 0.2 + 0.01 * i
            lines.append(
                score(f"p{i:06d}", t, risk, news2=5 if risk > 0.5 else 2).model_dump_json()
            )
    (psv / "broken.psv").write_text("HR|ICULOS\n1|1\n")
    (tmp_path / "scores.jsonl").write_text("\n".join(lines) + "\n")
    report = tmp_path / "report"
    run_evaluation(
        _request(
            scores=tmp_path / "scores.jsonl",
            outcomes=[psv],
            data_format="physionet2019",
            report=report,
        )
    )
    metrics = _check_report(report)
    assert set(metrics["discrimination"]) == {"hourly"}
    utility = metrics["utility"]
    # septic rows predicted from row 16 on: t_sepsis = 20 + 6 = 26, dt -10..3: early and
    # positive, so the model beats inaction.
    assert utility["model"]["normalised"] > 0.5
    assert metrics["inputs"]["outcome_files_skipped"] == ["broken.psv: no SepsisLabel column"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--outcomes", "o.txt", "--report", "r"], "give exactly one of --scores"),
        (
            ["evaluate", "--scores", "s", "--topic", "t", "--outcomes", "o", "--report", "r"],
            "give exactly one of --scores",
        ),
        (["evaluate", "--scores", "s", "--report", "r"], "--outcomes is required"),
        (["evaluate", "--scores", "s", "--outcomes", "o"], "--report DIR is required"),
        (
            ["evaluate", "--scores", "s", "--outcomes", "o", "--report", "r", "--format", "x"],
            "unsupported --format 'x'",
        ),
        (
            ["evaluate", "--scores", "s", "--outcomes", "o", "--report", "r", "--threshold", "2"],
            "--threshold must be in (0, 1]",
        ),
        (
            ["evaluate", "--scores", "s", "--outcomes", "o", "--report", "r", "--max-burden", "0"],
            "--max-burden must be a positive number",
        ),
        (
            [
                "evaluate",
                "--scores",
                "s",
                "--outcomes",
                "o",
                "--report",
                "r",
                "--admitted-at",
                "2025-01-01T00:00:00",
            ],
            "--admitted-at needs a zone offset",
        ),
        (
            [
                "evaluate",
                "--scores",
                "/no/such.jsonl",
                "--outcomes",
                "/no/such.txt",
                "--report",
                "r",
            ],
            "no such file: /no/such.txt",
        ),
        (["evaluate", "--bootstrap", "many"], "Invalid value"),
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


def test_cli_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scores, alerts, outcomes = _write_2012(tmp_path)
    argv = [
        "evaluate", "--scores", str(scores), "--alerts", str(alerts),
        "--outcomes", str(outcomes), "--report", str(tmp_path / "out"),
        "--bootstrap", "20", "--max-burden", "0.005", "--max-burden", "0.02",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["report"].endswith("report.html")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    limits = [
        e["max_alerts_per_patient_hour"] for e in metrics["simulated_alerts"]["model"]["at_burden"]
    ]
    assert limits == [0.005, 0.02]
