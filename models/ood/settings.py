"""Settings of the OOD detector fit (no torch import, so the CLI stays fast)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["OODSettings"]


class OODSettings(BaseSettings):
    """Settings of ``vigil train ood`` (environment prefix ``VIGIL_OOD_``)."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_OOD_", frozen=True, extra="forbid")

    data_dir: Path = Field(
        Path("../shared/data/physionet2012"),
        description="PhysioNet 2012 folder holding set-a/ and Outcomes-a.txt.",
    )
    checkpoint: Path = Field(
        Path("models/weights/deterioration.pt"),
        description="Deterioration checkpoint whose features are modelled.",
    )
    output: Path = Field(Path("models/weights/ood.pt"), description="OOD checkpoint to write.")
    percentile: float = Field(
        99.0, gt=50, lt=100, description="Validation percentile used as the threshold."
    )
    eval_hour: int = Field(48, ge=6, le=48, description="Scoring hour of the shift evaluation.")
    onset_hours: int = Field(
        24, ge=1, le=47, description="Hour when the stuck-HR and dropout shifts start."
    )
    timeline_stays: int = Field(
        200, ge=1, description="Test stays sampled for the flag rate at every scoring time."
    )
    timeline_seed: int = Field(0, ge=0, description="Seed of that sample.")
    threads: int = Field(1, ge=1, le=64, description="torch intra-op threads.")
