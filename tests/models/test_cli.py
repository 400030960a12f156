"""CLI: bad arguments fail with one line and a non-zero status."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from typer.testing import CliRunner

from models.cli import export_app, train_app
from models.common.settings_cli import settings_command
from models.deterioration.image_branch_settings import ImageBranchSettings
from models.deterioration.settings import TrainSettings
from models.deterioration.step_settings import StepTrainSettings
from models.imaging.settings import ImagingSettings
from models.ood.settings import OODSettings


@pytest.mark.parametrize("command", ["deterioration", "deterioration-window"])
def test_train_rejects_bad_argument(command):
    result = CliRunner().invoke(train_app, [command, "--hidden", "0"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "hidden" in lines[0]


def test_train_rejects_bad_encoder():
    result = CliRunner().invoke(train_app, ["deterioration-window", "--encoder", "lstm"])
    assert result.exit_code == 2


@pytest.mark.parametrize("command", ["deterioration", "deterioration-window"])
def test_export_missing_checkpoint_fails_cleanly(command, tmp_path: Path):
    result = CliRunner().invoke(
        export_app,
        [command, "--checkpoint", str(tmp_path / "none.pt"), "--repo-dir", str(tmp_path)],
    )
    assert result.exit_code == 1
    assert "cannot load" in result.output


def test_export_rejects_bad_instance_kind(tmp_path: Path):
    result = CliRunner().invoke(export_app, ["deterioration-window", "--instance-kind", "KIND_TPU"])
    assert result.exit_code == 2


@pytest.mark.parametrize(
    ("command", "settings_class"),
    [
        ("deterioration", StepTrainSettings),
        ("deterioration-window", TrainSettings),
        ("image-branch", ImageBranchSettings),
        ("ood", OODSettings),
        ("imaging", ImagingSettings),
    ],
)
def test_every_setting_is_an_option_with_its_environment_variable(command, settings_class):
    result = CliRunner().invoke(train_app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    prefix = settings_class.model_config["env_prefix"]
    for name in settings_class.model_fields:
        assert f"--{name.replace('_', '-')}" in result.output
        assert f"{prefix}{name.upper()}" in result.output


def test_a_new_setting_appears_without_being_written_twice():
    class Toy(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="VIGIL_TOY_", frozen=True)

        size: int = Field(3, ge=1, description="How many.")
        loud: bool = Field(False, description="Shout.")

    app = typer.Typer()
    seen: list[Toy] = []

    def run(settings: Toy) -> str:
        seen.append(settings)
        return f"size {settings.size}"

    settings_command(app, "toy", Toy, run, help_text="A toy.")
    app.command("other")(lambda: None)  # a group, so the command is addressed by name
    done = CliRunner().invoke(app, ["toy", "--size", "5", "--loud"])
    assert done.exit_code == 0, done.output
    assert done.output.strip() == "size 5"
    assert seen == [Toy(size=5, loud=True)]
    bad = CliRunner().invoke(app, ["toy", "--size", "0"])
    assert bad.exit_code == 2
    assert "--size" in bad.output
    from_env = CliRunner().invoke(app, ["toy"], env={"VIGIL_TOY_SIZE": "7"})
    assert from_env.output.strip() == "size 7"
