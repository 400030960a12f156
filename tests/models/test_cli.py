"""CLI: bad arguments fail with one line and a non-zero status."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from models.cli import export_app, train_app


def test_train_rejects_bad_argument():
    result = CliRunner().invoke(train_app, ["deterioration", "--hidden", "0"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "hidden" in lines[0]


def test_train_rejects_bad_encoder():
    result = CliRunner().invoke(train_app, ["deterioration", "--encoder", "lstm"])
    assert result.exit_code == 2


def test_export_missing_checkpoint_fails_cleanly(tmp_path: Path):
    result = CliRunner().invoke(
        export_app,
        ["deterioration", "--checkpoint", str(tmp_path / "none.pt"), "--repo-dir", str(tmp_path)],
    )
    assert result.exit_code == 1
    assert "cannot load" in result.output


def test_export_rejects_bad_instance_kind(tmp_path: Path):
    result = CliRunner().invoke(export_app, ["deterioration", "--instance-kind", "KIND_TPU"])
    assert result.exit_code == 2
