"""Settings of the step model's OOD fit (no torch import, so ``vigil --help`` stays fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["StepOODSettings"]

_WINDOW_OOD: Final[Path] = Path("triton_repo/ood/1/model.pt")


class StepOODSettings(BaseSettings):
    """Settings of ``python -m models.ood.step_train`` (prefix ``VIGIL_STEP_OOD_``)."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_STEP_OOD_", frozen=True, extra="forbid")

    data_dir: Path = Field(
        Path("../shared/data/physionet2012"),
        description="PhysioNet 2012 folder holding set-a/ and Outcomes-a.txt.",
    )
    checkpoint: Path = Field(
        Path("models/weights/deterioration_step.pt"), description="Step checkpoint modelled."
    )
    output: Path = Field(
        Path("models/weights/deterioration_step_ood.pt"), description="Fit to write."
    )
    window_ood: Path | None = Field(
        _WINDOW_OOD, description="Served window detector compared against (None: skip)."
    )
    percentile: float = Field(99.0, gt=50, lt=100, description="Validation threshold percentile.")
    eval_hour: int = Field(48, ge=6, le=48, description="Scoring hour of the shift evaluation.")
    onset_hours: int = Field(24, ge=1, le=47, description="Onset of stuck HR and dropout.")
    timeline_stays: int = Field(200, ge=1, description="Test stays sampled for the timeline.")
    timeline_seed: int = Field(0, ge=0, description="Seed of that sample.")
    bootstrap_resamples: int = Field(1000, ge=0, description="Bootstrap resamples of stays.")
    threads: int = Field(1, ge=1, le=64, description="torch intra-op threads.")
