"""The registration's model card: it describes the settings the worker runs, its
reproduction check still comes out the same with today's code, and its sources exist."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from models.common.provenance import REPO_ROOT, current_source
from models.registration.card import CARD_DIR, reproduction_check
from models.registration.evaluate import register_settings
from vigil.cli import main

CARD = json.loads((CARD_DIR / "model_card.json").read_text())


def test_the_card_describes_the_settings_the_worker_runs() -> None:
    assert CARD["settings"] == register_settings({})
    assert CARD["evaluation"]["synthetic_summary"]["folding_pixels_total"] == 0.0
    assert "SYNTHETIC" in CARD["evaluation"]["label"]


def test_the_reproduction_check_comes_out_the_same_today() -> None:
    again = reproduction_check(CARD["settings"])
    recorded = CARD["reproduction_check"]
    assert again.keys() == recorded.keys()
    for key, value in recorded.items():
        assert again[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key


def test_every_source_the_card_names_exists() -> None:
    files = CARD["code_version"]["source_files"]
    assert "models/imaging/registration.py" in files
    for path in files:
        assert (REPO_ROOT / current_source(path)).is_file(), path


def _report(tmp_path: Path, **changes: Any) -> Path:
    report = {
        "split": "test",
        "register": register_settings({}),
        "synthetic_label": "SYNTHETIC",
        "patients": [7, 11, 12],
        "seed": 19,
        "synthetic_summary": {},
        "real_summary": {},
        **changes,
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"split": "validation"}, "test-split"),
        ({"register": register_settings({"iterations": 100})}, "not the defaults"),
    ],
)
def test_a_card_from_the_wrong_report_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, Any], message: str
) -> None:
    report = _report(tmp_path, **changes)
    out = tmp_path / "card"
    assert (
        main(["imaging", "registration-card", "--report", str(report), "--out-dir", str(out)]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert message in err
    assert not out.exists()


def test_an_unreadable_report_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["imaging", "registration-card", "--report", str(tmp_path / "missing.json")]
    assert main(argv) == 2
    assert "cannot read the report" in capsys.readouterr().err
