"""Settings of the step deterioration model's training (no torch import)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["StepTrainSettings"]


class StepTrainSettings(BaseSettings):
    """Settings of ``python -m models.deterioration.step_train`` (environment prefix
    ``VIGIL_STEP_TRAIN_``). Split, seeds and optimiser follow ``vigil train
    deterioration`` (:class:`models.deterioration.settings.TrainSettings`)."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_STEP_TRAIN_", frozen=True, extra="forbid")

    data_dir: Path = Field(
        Path("../shared/data/physionet2012"),
        description="PhysioNet 2012 folder holding set-a/ and Outcomes-a.txt.",
    )
    checkpoint: Path = Field(
        Path("models/weights/deterioration_step.pt"), description="Where the checkpoint goes."
    )
    shipped_checkpoint: Path | None = Field(
        Path("models/weights/deterioration.pt"),
        description="Window model compared against (None: no comparison).",
    )
    hidden: int = Field(64, ge=2, le=512, description="Recurrent state width H.")
    seed: int = Field(7, ge=0, description="Seed of the first member (member i: seed + i).")
    members: int = Field(5, ge=1, le=10, description="Members trained (candidates 1..M).")
    min_ensemble_gain: float = Field(
        0.005,
        ge=0,
        description="Validation AUROC gain over the mean single member that keeps the "
        "whole ensemble; otherwise one member is shipped.",
    )
    split_seed: int = Field(2012, ge=0, description="Seed of the train/val/test split.")
    epochs: int = Field(20, ge=1, le=200, description="Most training epochs.")
    patience: int = Field(4, ge=1, description="Epochs without validation gain before stop.")
    batch_size: int = Field(32, ge=1, le=4096, description="Stays per optimiser step.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(1e-3, ge=0, description="Adam L2 weight decay.")
    dropout: float = Field(0.3, ge=0, lt=1, description="Dropout on encoder outputs and fused.")
    min_hour: int = Field(6, ge=0, le=48, description="Earliest scoring hour in the loss.")
    max_hour: int = Field(48, ge=1, le=48, description="Latest scoring hour (set A: 48).")
    max_stays: int | None = Field(None, ge=10, description="Use only the first N stays.")
    threads: int = Field(1, ge=1, le=64, description="torch intra-op threads.")
    baselines: bool = Field(True, description="Also score the LR and the shipped model.")
    bootstrap_resamples: int = Field(2000, ge=0, description="Bootstrap resamples of stays.")
