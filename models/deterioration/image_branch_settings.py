"""Settings of the image-branch fixture fine-tune (no torch import, so the CLI stays fast)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ImageBranchSettings"]


class ImageBranchSettings(BaseSettings):
    """Settings of ``vigil train image-branch`` (environment prefix ``VIGIL_IMAGE_BRANCH_``).

    The linkage of images to stays that these settings describe is a synthetic **test
    fixture** (PhysioNet stays have no images); see :mod:`models.deterioration.image_branch`.
    """

    model_config = SettingsConfigDict(env_prefix="VIGIL_IMAGE_BRANCH_", frozen=True, extra="forbid")

    data_dir: Path = Field(
        Path("../shared/data/physionet2012"),
        description="PhysioNet 2012 folder the deterioration checkpoint was trained on.",
    )
    checkpoint: Path = Field(
        Path("models/weights/deterioration.pt"),
        description="Deterioration checkpoint whose image branch is fine-tuned.",
    )
    output: Path = Field(
        Path("models/weights/deterioration.pt"),
        description="Checkpoint to write (may be the input: the branch is re-initialised).",
    )
    imaging_checkpoint: Path = Field(
        Path("models/weights/imaging.pt"),
        description="Imaging checkpoint whose embeddings feed the branch.",
    )
    xray_path: Path = Field(
        Path("../shared/data/imaging/pneumoniamnist/pneumoniamnist.npz"),
        description="PneumoniaMNIST (train/val images and labels).",
    )
    abnormal_probability: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="Fixture rule p: deaths draw a pneumonia X-ray, survivors a normal one, "
        "with probability p (otherwise the other class).",
    )
    seed: int = Field(7, ge=0, description="Seed of the linkage and of member i's branch (+ i).")
    hours_per_stay: int = Field(
        4, ge=1, le=43, description="Scoring hours sampled per training stay (after its study)."
    )
    min_hour: int = Field(6, ge=1, le=48, description="Earliest scoring hour sampled.")
    epochs: int = Field(10, ge=1, le=200, description="Fine-tuning epochs (no early stopping).")
    batch_size: int = Field(128, ge=1, le=4096, description="Windows per optimiser step.")
    learning_rate: float = Field(3e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="Adam L2 weight decay.")
    xray_limit: int | None = Field(
        None, ge=16, description="Use only the first N training and validation X-rays (tests)."
    )
    threads: int = Field(1, ge=1, le=64, description="torch intra-op threads.")
