"""Settings of ``vigil validate`` (no torch import)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ValidateSettings"]


class ValidateSettings(BaseSettings):
    """Settings of ``vigil validate`` (environment prefix ``VIGIL_VALIDATE_``)."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_VALIDATE_", frozen=True, extra="forbid")

    out: Path = Field(
        Path("reports/validity"),
        description="Output folder (validity.json, report.html, SVG plots).",
    )
    federation_dir: Path = Field(
        Path("reports/federated"),
        description="Output folder of vigil federate (federation.json, predictions.npz).",
    )
    checkpoint: Path = Field(
        Path("models/weights/deterioration_step.pt"),
        description="Step checkpoint whose analytical validity is checked.",
    )
    recording_dir: Path = Field(
        Path("data/physionet2012-demo"),
        description="Stays replayed and perturbed (PhysioNet 2012 layout).",
    )
    replay_stays: int = Field(3, ge=1, le=100, description="Stays replayed twice, hour by hour.")
    noise_stays: int = Field(100, ge=5, description="Stays scored under measurement noise.")
    bootstrap_resamples: int = Field(1000, ge=0, description="Bootstrap resamples of stays.")
    seed: int = Field(0, ge=0, description="Seed of the noise and the bootstrap.")
    threads: int = Field(1, ge=1, le=64, description="torch intra-op threads.")
