"""Settings of ``vigil train imaging`` (no torch import, so the CLI stays fast)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ImagingEvalSettings", "ImagingSettings"]


class ImagingSettings(BaseSettings):
    """Settings of ``vigil train imaging`` (environment prefix ``VIGIL_IMAGING_``)."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_IMAGING_", frozen=True, extra="forbid")

    ct_path: Path = Field(
        Path("../shared/data/imaging/msd_lung_ct/msd_lung_ct_patches.npz"),
        description="MSD lung CT patches (images, masks).",
    )
    xray_path: Path = Field(
        Path("../shared/data/imaging/pneumoniamnist/pneumoniamnist.npz"),
        description="PneumoniaMNIST (train/val images and labels).",
    )
    checkpoint: Path = Field(
        Path("models/weights/imaging.pt"), description="Where the checkpoint is written."
    )
    base_channels: int = Field(8, ge=1, le=64, description="Width of the first encoder level.")
    decoder_dropout: float = Field(
        0.0, ge=0, lt=1, description="Channel dropout on the decoder levels' inputs (training)."
    )
    seed: int = Field(7, ge=0, description="Seed of initialisation, sampling and augmentation.")
    split_seed: int = Field(2024, ge=0, description="Seed of the patient and X-ray splits.")
    test_patients: int = Field(3, ge=1, description="CT patients held out for the report.")
    validation_patients: int = Field(
        2, ge=1, description="CT patients for early stopping and the threshold."
    )
    fold: int = Field(
        0, ge=0, description="Cross-validation fold: rotates which patients are held out."
    )
    pretrain_epochs: int = Field(
        3, ge=0, le=50, description="Epochs of X-ray classification before the joint training."
    )
    epochs: int = Field(30, ge=1, le=300, description="Joint training epochs.")
    ct_repeats: int = Field(
        4, ge=1, le=32, description="Augmented copies of each CT training patch per epoch."
    )
    xray_per_epoch: int = Field(
        640, ge=0, description="X-rays sampled per joint epoch (0: CT only)."
    )
    xray_limit: int | None = Field(
        None, ge=16, description="Use only the first N training and validation X-rays."
    )
    batch_size: int = Field(16, ge=1, le=512, description="CT patches per step.")
    learning_rate: float = Field(2e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="Adam L2 weight decay.")
    class_weight: float = Field(0.5, ge=0, description="Weight of the classification losses.")
    target_recall: float = Field(
        0.95, gt=0, le=1, description="Validation lesion recall the threshold must reach."
    )
    max_false_positives_per_patch: float = Field(
        0.15,
        ge=0,
        description="Validation false-positive components per patch the threshold may allow.",
    )
    min_threshold: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="Lowest lesion threshold the operating point may take.",
    )
    max_threshold: float = Field(
        0.7,
        gt=0,
        lt=1,
        description="Highest lesion threshold the operating point may take.",
    )
    lesion_peak_threshold: float = Field(
        0.9,
        ge=0,
        le=1,
        description=(
            "A lesion component at the threshold is kept only when its highest probability"
            " reaches this (issue 17, round 4: the lowest value that brought the validation"
            " patients' false positives within 0.15 per patch; 0 keeps every component)."
        ),
    )
    flip_average: bool = Field(
        True,
        description=(
            "Serve the lesion probability averaged over the image and its left-right mirror"
            " (switched on after the epoch is chosen; the threshold is chosen on it; issue"
            " 17, round 5: on the validation patients FP/patch 0.138 -> 0.075, recall 67 ->"
            " 68 of 71)."
        ),
    )
    ct_augment: bool = Field(
        True,
        description="Augment CT patches beyond flips and quarter turns (rotation, scale, "
        "contrast).",
    )
    dice_per_patch: bool = Field(
        True,
        description="Soft Dice per patch, averaged (False: pooled over the batch).",
    )
    cosine_schedule: bool = Field(
        True, description="Cosine learning-rate decay to 1 % over the joint epochs."
    )
    ema_decay: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Per-step decay of the weight average that is scored and kept (0: off).",
    )
    target_sensitivity: float = Field(
        0.95,
        gt=0,
        le=1,
        description="Sensitivity the pneumonia threshold must reach on the held-back X-rays.",
    )
    xray_augment: bool = Field(
        True,
        description="Augment training X-rays (small rotation, scale, shift, contrast).",
    )
    balance_classes: bool = Field(
        True, description="Weight the X-ray loss so that both classes weigh equally."
    )
    threads: int = Field(1, ge=1, le=64, description="torch intra-op threads.")

    @model_validator(mode="after")
    def _threshold_band(self) -> ImagingSettings:
        if self.min_threshold > self.max_threshold:
            raise ValueError(
                f"min_threshold {self.min_threshold} exceeds max_threshold {self.max_threshold}"
            )
        return self


class ImagingEvalSettings(BaseSettings):
    """Settings of ``vigil train imaging-eval`` (environment prefix ``VIGIL_IMAGING_EVAL_``)."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_IMAGING_EVAL_", frozen=True, extra="forbid")

    cv_dir: Path = Field(
        Path(".vigil/imaging-cv"),
        description="Folder of the fold checkpoints imaging_fold<k>.pt.",
    )
    folds: int = Field(4, ge=1, le=13, description="Folds 0 .. folds-1 are evaluated.")
    ct_path: Path = Field(
        Path("../shared/data/imaging/msd_lung_ct/msd_lung_ct_patches.npz"),
        description="MSD lung CT patches (images, masks).",
    )
    xray_path: Path = Field(
        Path("../shared/data/imaging/pneumoniamnist/pneumoniamnist.npz"),
        description="PneumoniaMNIST (train/val images and labels).",
    )
    report: Path = Field(
        Path(".vigil/imaging-cv/report.json"), description="Where the JSON report is written."
    )
    resamples: int = Field(2000, ge=10, le=100000, description="Bootstrap resamples.")
    seed: int = Field(0, ge=0, description="Seed of the bootstrap.")
