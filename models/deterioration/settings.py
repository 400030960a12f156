"""Settings of deterioration training (no torch import, so the CLI stays fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["TrainSettings"]


class TrainSettings(BaseSettings):
    """Settings of ``vigil train deterioration-window`` (environment prefix ``VIGIL_TRAIN_``)."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_TRAIN_", frozen=True, extra="forbid")

    data_dir: Path = Field(
        Path("../shared/data/physionet2012"),
        description="PhysioNet 2012 folder holding set-a/ and Outcomes-a.txt.",
    )
    checkpoint: Path = Field(
        Path("models/weights/deterioration.pt"), description="Where the checkpoint is written."
    )
    encoder: Literal["grud", "gru"] = Field("gru", description="Series encoder.")
    hidden: int = Field(64, ge=2, le=512, description="Recurrent state width H.")
    seed: int = Field(7, ge=0, description="Seed of the first member (member i: seed + i).")
    members: int = Field(5, ge=1, le=10, description="Networks whose logits are averaged.")
    split_seed: int = Field(2012, ge=0, description="Seed of the train/val/test split.")
    epochs: int = Field(20, ge=1, le=200, description="Most training epochs.")
    patience: int = Field(4, ge=1, description="Epochs without validation gain before stop.")
    batch_size: int = Field(128, ge=1, le=4096, description="Windows per optimiser step.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(1e-3, ge=0, description="Adam L2 weight decay.")
    dropout: float = Field(0.3, ge=0, lt=1, description="Dropout on the fused vector.")
    hours_per_stay: int = Field(3, ge=1, le=43, description="Scoring hours sampled per stay.")
    min_hour: int = Field(6, ge=1, le=48, description="Earliest scoring hour sampled.")
    max_stays: int | None = Field(None, ge=10, description="Use only the first N stays.")
    threads: int = Field(1, ge=1, le=64, description="torch intra-op threads.")
    summary: bool = Field(True, description="Add the window-summary branch.")
    wide: Literal["none", "joint"] = Field(
        "none", description="Linear branch on window statistics: none, or trained jointly."
    )
    baselines: bool = Field(True, description="Also fit and evaluate the baselines.")
