"""Command-line entry points: ``vigil train|export deterioration|ood|imaging`` and
``vigil train image-branch``.

The lead mounts :data:`train_app` and :data:`export_app` under the ``vigil`` command. Every
training flag mirrors a field of :class:`models.deterioration.settings.TrainSettings`
(environment prefix ``VIGIL_TRAIN_``); flags left out fall back to the environment, then to
the defaults.
Bad arguments print one line and exit with status 2; a failed run exits with status 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import typer
from rich.console import Console

from models.deterioration.settings import TrainSettings
from vigil.errors import VigilError

__all__ = ["export_app", "train_app"]

train_app = typer.Typer(help="Train models.", no_args_is_help=True, add_completion=False)
export_app = typer.Typer(
    help="Export trained models to the Triton repository.",
    no_args_is_help=True,
    add_completion=False,
)
_console = Console(stderr=True)
_ENV = "VIGIL_TRAIN_"


@train_app.callback()
def _train_group() -> None:
    """Train models."""


@export_app.callback()
def _export_group() -> None:
    """Export trained models to the Triton repository."""


def _fail(message: str, code: int) -> typer.Exit:
    _console.print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(code)


@train_app.command("deterioration")
def train_deterioration(
    data_dir: Annotated[
        Path | None, typer.Option(help="PhysioNet 2012 folder.", envvar=f"{_ENV}DATA_DIR")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint to write.", envvar=f"{_ENV}CHECKPOINT")
    ] = None,
    encoder: Annotated[
        str | None, typer.Option(help="grud or gru.", envvar=f"{_ENV}ENCODER")
    ] = None,
    hidden: Annotated[
        int | None, typer.Option(help="Hidden width.", envvar=f"{_ENV}HIDDEN")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the first member.", envvar=f"{_ENV}SEED")
    ] = None,
    members: Annotated[
        int | None, typer.Option(help="Networks averaged.", envvar=f"{_ENV}MEMBERS")
    ] = None,
    wide: Annotated[
        str | None, typer.Option(help="Wide branch: none or joint.", envvar=f"{_ENV}WIDE")
    ] = None,
    split_seed: Annotated[
        int | None, typer.Option(help="Split seed.", envvar=f"{_ENV}SPLIT_SEED")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Most epochs.", envvar=f"{_ENV}EPOCHS")] = None,
    patience: Annotated[
        int | None, typer.Option(help="Early-stopping patience.", envvar=f"{_ENV}PATIENCE")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size.", envvar=f"{_ENV}BATCH_SIZE")
    ] = None,
    learning_rate: Annotated[
        float | None, typer.Option(help="Adam learning rate.", envvar=f"{_ENV}LEARNING_RATE")
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help="Adam weight decay.", envvar=f"{_ENV}WEIGHT_DECAY")
    ] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout.", envvar=f"{_ENV}DROPOUT")] = None,
    hours_per_stay: Annotated[
        int | None, typer.Option(help="Hours sampled per stay.", envvar=f"{_ENV}HOURS_PER_STAY")
    ] = None,
    min_hour: Annotated[
        int | None, typer.Option(help="Earliest hour sampled.", envvar=f"{_ENV}MIN_HOUR")
    ] = None,
    max_stays: Annotated[
        int | None, typer.Option(help="Use only N stays.", envvar=f"{_ENV}MAX_STAYS")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch threads.", envvar=f"{_ENV}THREADS")
    ] = None,
    baselines: Annotated[
        bool | None,
        typer.Option(
            "--baselines/--no-baselines", help="Fit baselines.", envvar=f"{_ENV}BASELINES"
        ),
    ] = None,
) -> None:
    """Train the deterioration model on PhysioNet 2012 set A and write a checkpoint."""
    given: dict[str, Any] = {
        k: v for k, v in locals().items() if v is not None and k in TrainSettings.model_fields
    }
    try:
        settings = TrainSettings(**given)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise _fail(f"--{where.replace('_', '-')}: {first['msg']}", 2) from None
    try:
        from models.deterioration.train import train  # torch is imported only when training

        result = train(settings)
    except VigilError as exc:
        raise _fail(str(exc), 1) from None
    test = result.metrics["test"]["model"]
    typer.echo(
        f"checkpoint {result.checkpoint} (epochs {list(result.best_epochs)}, "
        f"{result.train_seconds:.0f} s); test AUROC 24 h {test['24h']['auroc']:.3f}, "
        f"48 h {test['48h']['auroc']:.3f}"
    )


@export_app.command("deterioration")
def export_deterioration(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint from training.")] = Path(
        "models/weights/deterioration.pt"
    ),
    repo_dir: Annotated[Path, typer.Option(help="Triton model repository.")] = Path("triton_repo"),
    version: Annotated[int, typer.Option(help="Model version folder.", min=1)] = 1,
    max_batch_size: Annotated[
        int, typer.Option(help="Triton max_batch_size of deterioration.", min=1)
    ] = 64,
    explain_max_batch_size: Annotated[
        int, typer.Option(help="Triton max_batch_size of deterioration_explain.", min=1)
    ] = 64,
    instance_kind: Annotated[str, typer.Option(help="KIND_CPU or KIND_GPU.")] = "KIND_CPU",
) -> None:
    """Export a checkpoint to triton_repo/deterioration{,_explain}/<version>/."""
    kind: Literal["KIND_CPU", "KIND_GPU"]
    if instance_kind == "KIND_CPU":
        kind = "KIND_CPU"
    elif instance_kind == "KIND_GPU":
        kind = "KIND_GPU"
    else:
        raise _fail(f"--instance-kind must be KIND_CPU or KIND_GPU, got {instance_kind!r}", 2)
    try:
        from models.deterioration.export import export  # torch is imported only when exporting

        result = export(
            checkpoint,
            repo_dir,
            version=version,
            max_batch_size=max_batch_size,
            explain_max_batch_size=explain_max_batch_size,
            instance_kind=kind,
        )
    except VigilError as exc:
        raise _fail(str(exc), 1) from None
    paths = ", ".join(str(path) for path in result.models.values())
    typer.echo(f"exported {paths} (parity {result.max_abs_diff:.2e})")


_BRANCH_ENV = "VIGIL_IMAGE_BRANCH_"


@train_app.command("image-branch")
def train_image_branch(
    data_dir: Annotated[
        Path | None, typer.Option(help="PhysioNet 2012 folder.", envvar=f"{_BRANCH_ENV}DATA_DIR")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Deterioration checkpoint to start from.", envvar=f"{_BRANCH_ENV}CHECKPOINT"
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Checkpoint to write.", envvar=f"{_BRANCH_ENV}OUTPUT")
    ] = None,
    imaging_checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Imaging checkpoint (embeddings).", envvar=f"{_BRANCH_ENV}IMAGING_CHECKPOINT"
        ),
    ] = None,
    xray_path: Annotated[
        Path | None, typer.Option(help="PneumoniaMNIST npz.", envvar=f"{_BRANCH_ENV}XRAY_PATH")
    ] = None,
    abnormal_probability: Annotated[
        float | None,
        typer.Option(
            help="Fixture rule p (study agrees with the outcome).",
            envvar=f"{_BRANCH_ENV}ABNORMAL_PROBABILITY",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.", envvar=f"{_BRANCH_ENV}SEED")] = None,
    hours_per_stay: Annotated[
        int | None,
        typer.Option(help="Scoring hours per stay.", envvar=f"{_BRANCH_ENV}HOURS_PER_STAY"),
    ] = None,
    min_hour: Annotated[
        int | None, typer.Option(help="Earliest hour sampled.", envvar=f"{_BRANCH_ENV}MIN_HOUR")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs.", envvar=f"{_BRANCH_ENV}EPOCHS")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size.", envvar=f"{_BRANCH_ENV}BATCH_SIZE")
    ] = None,
    learning_rate: Annotated[
        float | None,
        typer.Option(help="Adam learning rate.", envvar=f"{_BRANCH_ENV}LEARNING_RATE"),
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(help="Adam weight decay.", envvar=f"{_BRANCH_ENV}WEIGHT_DECAY"),
    ] = None,
    xray_limit: Annotated[
        int | None, typer.Option(help="Use only N X-rays.", envvar=f"{_BRANCH_ENV}XRAY_LIMIT")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch threads.", envvar=f"{_BRANCH_ENV}THREADS")
    ] = None,
) -> None:
    """Fine-tune only the image branch on a synthetic TEST-FIXTURE linkage of X-rays to stays."""
    from models.deterioration.image_branch_settings import ImageBranchSettings

    given: dict[str, Any] = {
        k: v for k, v in locals().items() if v is not None and k in ImageBranchSettings.model_fields
    }
    try:
        settings = ImageBranchSettings(**given)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise _fail(f"--{where.replace('_', '-')}: {first['msg']}", 2) from None
    try:
        from models.deterioration.image_branch import (
            finetune_image_branch,
        )  # torch only when training

        result = finetune_image_branch(settings)
    except VigilError as exc:
        raise _fail(str(exc), 1) from None
    check = result.metrics["validation_check"]["48h"]
    typer.echo(
        f"checkpoint {result.checkpoint} ({result.seconds:.0f} s; image branch fine-tuned on "
        f"a synthetic test-fixture linkage); validation 48 h AUROC without images "
        f"{check['auroc_without_images']:.3f}, with fixture studies "
        f"{check['auroc_with_images']:.3f}"
    )


_OOD_ENV = "VIGIL_OOD_"


@train_app.command("ood")
def train_ood(
    data_dir: Annotated[
        Path | None, typer.Option(help="PhysioNet 2012 folder.", envvar=f"{_OOD_ENV}DATA_DIR")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Deterioration checkpoint.", envvar=f"{_OOD_ENV}CHECKPOINT"),
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="OOD checkpoint to write.", envvar=f"{_OOD_ENV}OUTPUT")
    ] = None,
    percentile: Annotated[
        float | None,
        typer.Option(help="Validation percentile as threshold.", envvar=f"{_OOD_ENV}PERCENTILE"),
    ] = None,
    eval_hour: Annotated[
        int | None, typer.Option(help="Scoring hour of the shifts.", envvar=f"{_OOD_ENV}EVAL_HOUR")
    ] = None,
    onset_hours: Annotated[
        int | None,
        typer.Option(help="Onset of stuck HR and dropout.", envvar=f"{_OOD_ENV}ONSET_HOURS"),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch threads.", envvar=f"{_OOD_ENV}THREADS")
    ] = None,
) -> None:
    """Fit the OOD detector on the deterioration model's features and evaluate shifts."""
    from models.ood.settings import OODSettings

    given: dict[str, Any] = {
        k: v for k, v in locals().items() if v is not None and k in OODSettings.model_fields
    }
    try:
        settings = OODSettings(**given)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise _fail(f"--{where.replace('_', '-')}: {first['msg']}", 2) from None
    try:
        from models.ood.train import fit_ood  # torch is imported only when fitting

        result = fit_ood(settings)
    except VigilError as exc:
        raise _fail(str(exc), 1) from None
    aurocs = ", ".join(
        f"{name} {entry['combined']['auroc']:.3f}"
        for name, entry in {
            **result.metrics["shifts"],
            **result.metrics["left_out_icu_type"],
        }.items()
    )
    typer.echo(
        f"ood checkpoint {result.path} (representation threshold "
        f"{result.representation_threshold:.3f}, input thresholds "
        f"{', '.join(f'{t:.2f}' for t in result.input_thresholds)}; {result.seconds:.0f} s); "
        f"OOD AUROC (combined): {aurocs}"
    )


@export_app.command("ood")
def export_ood_command(
    checkpoint: Annotated[Path, typer.Option(help="Deterioration checkpoint.")] = Path(
        "models/weights/deterioration.pt"
    ),
    ood_checkpoint: Annotated[Path, typer.Option(help="OOD checkpoint.")] = Path(
        "models/weights/ood.pt"
    ),
    repo_dir: Annotated[Path, typer.Option(help="Triton model repository.")] = Path("triton_repo"),
    version: Annotated[int, typer.Option(help="Model version folder.", min=1)] = 1,
    max_batch_size: Annotated[int, typer.Option(help="Triton max_batch_size.", min=1)] = 64,
    instance_kind: Annotated[str, typer.Option(help="KIND_CPU or KIND_GPU.")] = "KIND_CPU",
) -> None:
    """Export the OOD detector to triton_repo/ood/<version>/."""
    kind: Literal["KIND_CPU", "KIND_GPU"]
    if instance_kind == "KIND_CPU":
        kind = "KIND_CPU"
    elif instance_kind == "KIND_GPU":
        kind = "KIND_GPU"
    else:
        raise _fail(f"--instance-kind must be KIND_CPU or KIND_GPU, got {instance_kind!r}", 2)
    try:
        from models.ood.export import export_ood

        result = export_ood(
            checkpoint,
            ood_checkpoint,
            repo_dir,
            version=version,
            max_batch_size=max_batch_size,
            instance_kind=kind,
        )
    except VigilError as exc:
        raise _fail(str(exc), 1) from None
    typer.echo(f"exported {result.model} (parity {result.max_abs_diff:.2e})")


_IMAGING_ENV = "VIGIL_IMAGING_"


@train_app.command("imaging")
def train_imaging_command(
    ct_path: Annotated[
        Path | None, typer.Option(help="MSD lung CT patches.", envvar=f"{_IMAGING_ENV}CT_PATH")
    ] = None,
    xray_path: Annotated[
        Path | None,
        typer.Option(help="PneumoniaMNIST npz.", envvar=f"{_IMAGING_ENV}XRAY_PATH"),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Checkpoint to write.", envvar=f"{_IMAGING_ENV}CHECKPOINT"),
    ] = None,
    base_channels: Annotated[
        int | None,
        typer.Option(help="First encoder width.", envvar=f"{_IMAGING_ENV}BASE_CHANNELS"),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.", envvar=f"{_IMAGING_ENV}SEED")] = None,
    split_seed: Annotated[
        int | None, typer.Option(help="Split seed.", envvar=f"{_IMAGING_ENV}SPLIT_SEED")
    ] = None,
    fold: Annotated[
        int | None, typer.Option(help="Cross-validation fold.", envvar=f"{_IMAGING_ENV}FOLD")
    ] = None,
    pretrain_epochs: Annotated[
        int | None,
        typer.Option(help="X-ray pretraining epochs.", envvar=f"{_IMAGING_ENV}PRETRAIN_EPOCHS"),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Joint epochs.", envvar=f"{_IMAGING_ENV}EPOCHS")
    ] = None,
    xray_per_epoch: Annotated[
        int | None,
        typer.Option(help="X-rays per joint epoch.", envvar=f"{_IMAGING_ENV}XRAY_PER_EPOCH"),
    ] = None,
    target_recall: Annotated[
        float | None,
        typer.Option(
            help="Validation lesion recall of the threshold.",
            envvar=f"{_IMAGING_ENV}TARGET_RECALL",
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch threads.", envvar=f"{_IMAGING_ENV}THREADS")
    ] = None,
) -> None:
    """Train the multi-task imaging network (MSD lung CT, PneumoniaMNIST)."""
    from models.imaging.settings import ImagingSettings

    given: dict[str, Any] = {
        k: v for k, v in locals().items() if v is not None and k in ImagingSettings.model_fields
    }
    try:
        settings = ImagingSettings(**given)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise _fail(f"--{where.replace('_', '-')}: {first['msg']}", 2) from None
    try:
        from models.imaging.train import train_imaging  # torch only when training

        result = train_imaging(settings)
    except VigilError as exc:
        raise _fail(str(exc), 1) from None
    test = result.metrics["test"]["operating_point"]
    typer.echo(
        f"imaging checkpoint {result.checkpoint} (epoch {result.best_epoch}, "
        f"{result.train_seconds:.0f} s); threshold {result.threshold:.2f}: test Dice "
        f"{test['dice']:.3f}, lesion recall {test['lesion_recall']:.3f}; pneumonia AUROC "
        f"{result.metrics['pneumonia']['official_val_auroc']:.3f}"
    )


@export_app.command("imaging")
def export_imaging_command(
    checkpoint: Annotated[Path, typer.Option(help="Imaging checkpoint.")] = Path(
        "models/weights/imaging.pt"
    ),
    repo_dir: Annotated[Path, typer.Option(help="Triton model repository.")] = Path("triton_repo"),
    version: Annotated[int, typer.Option(help="Model version folder.", min=1)] = 1,
    max_batch_size: Annotated[int, typer.Option(help="Triton max_batch_size.", min=1)] = 16,
    instance_kind: Annotated[str, typer.Option(help="KIND_CPU or KIND_GPU.")] = "KIND_CPU",
) -> None:
    """Export the imaging network to triton_repo/imaging/<version>/."""
    kind: Literal["KIND_CPU", "KIND_GPU"]
    if instance_kind == "KIND_CPU":
        kind = "KIND_CPU"
    elif instance_kind == "KIND_GPU":
        kind = "KIND_GPU"
    else:
        raise _fail(f"--instance-kind must be KIND_CPU or KIND_GPU, got {instance_kind!r}", 2)
    try:
        from models.imaging.export import export_imaging

        result = export_imaging(
            checkpoint, repo_dir, version=version, max_batch_size=max_batch_size, instance_kind=kind
        )
    except VigilError as exc:
        raise _fail(str(exc), 1) from None
    typer.echo(f"exported {result.model} (parity {result.max_abs_diff:.2e})")
