"""Command-line entry points: ``vigil train
deterioration|deterioration-window|step-ood|image-branch|ood|imaging`` and ``vigil export
deterioration|deterioration-window|ood|imaging``. ``deterioration`` is the step model that
scores by default; ``deterioration-window`` the whole-window model (patients with an imaging
study, and everyone when step scoring is off).

The lead mounts :data:`train_app` and :data:`export_app` under the ``vigil`` command. A
training command's options are built from its settings class
(:func:`models.common.settings_cli.settings_command`): every flag mirrors a field, with
the field's environment variable, and flags left out fall back to the environment, then
to the defaults. Bad arguments print one line and exit with status 2; a failed run exits
with status 1. Torch is imported only when a command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from models.common.settings_cli import fail, settings_command
from models.deterioration.image_branch_settings import ImageBranchSettings
from models.deterioration.settings import TrainSettings
from models.deterioration.step_settings import StepTrainSettings
from models.federated.settings import FederateSettings
from models.imaging.settings import ImagingEvalSettings, ImagingSettings
from models.ood.settings import OODSettings
from models.ood.step_settings import StepOODSettings
from models.validity.settings import ValidateSettings
from vigil.errors import ConfigError, VigilError

if TYPE_CHECKING:
    from models.common.export import ExportResult
    from models.common.triton_config import InstanceKind

__all__ = ["export_app", "run_federate_command", "run_validate_command", "train_app"]

train_app = typer.Typer(help="Train models.", no_args_is_help=True, add_completion=False)
export_app = typer.Typer(
    help="Export trained models to the Triton repository.",
    no_args_is_help=True,
    add_completion=False,
)


@train_app.callback()
def _train_group() -> None:
    """Train models."""


@export_app.callback()
def _export_group() -> None:
    """Export trained models to the Triton repository."""


# --- vigil train ---


def _train_deterioration(settings: TrainSettings) -> str:
    from models.deterioration.train import train

    result = train(settings)
    test = result.metrics["test"]["model"]
    return (
        f"checkpoint {result.checkpoint} (epochs {list(result.best_epochs)}, "
        f"{result.train_seconds:.0f} s); test AUROC 24 h {test['24h']['auroc']:.3f}, "
        f"48 h {test['48h']['auroc']:.3f}"
    )


def _train_deterioration_step(settings: StepTrainSettings) -> str:
    from models.deterioration.step_train import train_step

    result = train_step(settings)
    test = result.metrics["test"]
    return (
        f"checkpoint {result.checkpoint} ({result.train_seconds:.0f} s); test AUROC 24 h "
        f"{test['24h']['step']['auroc']:.3f}, 48 h {test['48h']['step']['auroc']:.3f}; next: "
        "vigil train step-ood, then vigil export deterioration"
    )


def _train_step_ood(settings: StepOODSettings) -> str:
    from models.ood.step_train import fit_step_ood

    meta = fit_step_ood(settings)
    m = meta["metrics"]
    aurocs = ", ".join(
        f"{name} {entry['combined']['auroc']:.3f}" for name, entry in m["shifts"].items()
    )
    return (
        f"step OOD fit {settings.output} ({meta['seconds']:.0f} s); test flag rate "
        f"{m['test']['combined']['flagged_fraction']:.4f}; OOD AUROC (combined, synthetic "
        f"shifts): {aurocs}"
    )


def _train_image_branch(settings: ImageBranchSettings) -> str:
    from models.deterioration.image_branch import finetune_image_branch

    result = finetune_image_branch(settings)
    check = result.metrics["validation_check"]["48h"]
    return (
        f"checkpoint {result.checkpoint} ({result.seconds:.0f} s; image branch fine-tuned on "
        f"a synthetic test-fixture linkage); validation 48 h AUROC without images "
        f"{check['auroc_without_images']:.3f}, with fixture studies "
        f"{check['auroc_with_images']:.3f}"
    )


def _train_ood(settings: OODSettings) -> str:
    from models.ood.train import fit_ood

    result = fit_ood(settings)
    aurocs = ", ".join(
        f"{name} {entry['combined']['auroc']:.3f}"
        for name, entry in {
            **result.metrics["shifts"],
            **result.metrics["left_out_icu_type"],
        }.items()
    )
    return (
        f"ood checkpoint {result.path} (representation threshold "
        f"{result.representation_threshold:.3f}, input thresholds "
        f"{', '.join(f'{t:.2f}' for t in result.input_thresholds)}; {result.seconds:.0f} s); "
        f"OOD AUROC (combined): {aurocs}"
    )


def _train_imaging(settings: ImagingSettings) -> str:
    from models.imaging.train import train_imaging

    result = train_imaging(settings)
    test = result.metrics["test"]["operating_point"]
    return (
        f"imaging checkpoint {result.checkpoint} (epoch {result.best_epoch}, "
        f"{result.train_seconds:.0f} s); threshold {result.threshold:.2f}: test Dice "
        f"{test['dice']:.3f}, lesion recall {test['lesion_recall']:.3f}; pneumonia AUROC "
        f"{result.metrics['pneumonia']['official_val_auroc']:.3f}"
    )


def _evaluate_imaging(settings: ImagingEvalSettings) -> str:
    from models.imaging.evaluate import evaluate_imaging

    ct = evaluate_imaging(settings)["ct"]["operating_point"]
    return (
        f"imaging cross-validation report {settings.report}: {ct['patients']} test patients, "
        f"lesion recall {ct['lesion_recall']:.3f} (>= 2 px {ct['large_lesion_recall']:.3f}), "
        f"Dice {ct['dice']:.3f}, {ct['false_positives_per_patch']:.2f} false positives/patch"
    )


settings_command(
    train_app,
    "deterioration",
    StepTrainSettings,
    _train_deterioration_step,
    help_text="Train the deterioration model that scores by default: the step model, over "
    "whole stays (docs/deterioration.md, 'Step model').",
)
settings_command(
    train_app,
    "deterioration-window",
    TrainSettings,
    _train_deterioration,
    help_text="Train the whole-window deterioration model (patients with an imaging study; "
    "everyone when step scoring is off) and write a checkpoint.",
)
settings_command(
    train_app,
    "step-ood",
    StepOODSettings,
    _train_step_ood,
    help_text="Fit the step model's own OOD verdict on its checkpoint (docs/ood.md).",
)
settings_command(
    train_app,
    "image-branch",
    ImageBranchSettings,
    _train_image_branch,
    help_text="Fine-tune only the image branch on a synthetic TEST-FIXTURE linkage of "
    "X-rays to stays.",
)
settings_command(
    train_app,
    "ood",
    OODSettings,
    _train_ood,
    help_text="Fit the OOD detector on the deterioration model's features and evaluate shifts.",
)
settings_command(
    train_app,
    "imaging",
    ImagingSettings,
    _train_imaging,
    help_text="Train the multi-task imaging network (MSD lung CT, PneumoniaMNIST).",
)
settings_command(
    train_app,
    "imaging-eval",
    ImagingEvalSettings,
    _evaluate_imaging,
    help_text="Cross-validated imaging figures (fold checkpoints) with patient-bootstrap "
    "intervals.",
)


# --- vigil export ---

RepoDir = Annotated[Path, typer.Option(help="Triton model repository.")]
Version = Annotated[int, typer.Option(help="Model version folder.", min=1)]
Kind = Annotated[str, typer.Option(help="KIND_CPU or KIND_GPU.")]


def _instance_kind(value: str) -> InstanceKind:
    if value == "KIND_CPU":
        return "KIND_CPU"
    if value == "KIND_GPU":
        return "KIND_GPU"
    raise fail(f"--instance-kind must be KIND_CPU or KIND_GPU, got {value!r}", 2)


def _report(export: Callable[[], ExportResult]) -> None:
    """Runs an export (torch is imported inside it) and prints what it wrote."""
    try:
        result = export()
    except VigilError as exc:
        raise fail(str(exc), 1) from None
    paths = ", ".join(str(path) for path in result.models.values())
    typer.echo(f"exported {paths} (parity {result.max_abs_diff:.2e})")


@export_app.command("deterioration-window")
def export_deterioration(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint from training.")] = Path(
        "models/weights/deterioration.pt"
    ),
    repo_dir: RepoDir = Path("triton_repo"),
    version: Version = 1,
    max_batch_size: Annotated[
        int, typer.Option(help="Triton max_batch_size of deterioration.", min=1)
    ] = 64,
    explain_max_batch_size: Annotated[
        int, typer.Option(help="Triton max_batch_size of deterioration_explain.", min=1)
    ] = 64,
    instance_kind: Kind = "KIND_CPU",
) -> None:
    """Export a checkpoint to triton_repo/deterioration{,_explain}/<version>/."""
    kind = _instance_kind(instance_kind)

    def run() -> ExportResult:
        from models.deterioration.export import export

        return export(
            checkpoint,
            repo_dir,
            version=version,
            max_batch_size=max_batch_size,
            explain_max_batch_size=explain_max_batch_size,
            instance_kind=kind,
        )

    _report(run)


@export_app.command("deterioration")
def export_deterioration_step(
    checkpoint: Annotated[Path, typer.Option(help="Step checkpoint from training.")] = Path(
        "models/weights/deterioration_step.pt"
    ),
    ood_fit: Annotated[Path, typer.Option(help="OOD fit of that checkpoint.")] = Path(
        "models/weights/deterioration_step_ood.pt"
    ),
    repo_dir: RepoDir = Path("triton_repo"),
    version: Version = 1,
    max_batch_size: Annotated[
        int, typer.Option(help="Triton max_batch_size of deterioration_step.", min=1)
    ] = 1024,
    instance_kind: Kind = "KIND_CPU",
) -> None:
    """Export the step model to triton_repo/deterioration_step{,_explain}/<version>/."""
    kind = _instance_kind(instance_kind)

    def run() -> ExportResult:
        from models.deterioration.step_export import export_step

        return export_step(
            checkpoint,
            repo_dir,
            version=version,
            max_batch_size=max_batch_size,
            instance_kind=kind,
            ood_fit=ood_fit,
        )

    _report(run)


@export_app.command("ood")
def export_ood_command(
    checkpoint: Annotated[Path, typer.Option(help="Deterioration checkpoint.")] = Path(
        "models/weights/deterioration.pt"
    ),
    ood_checkpoint: Annotated[Path, typer.Option(help="OOD checkpoint.")] = Path(
        "models/weights/ood.pt"
    ),
    repo_dir: RepoDir = Path("triton_repo"),
    version: Version = 1,
    max_batch_size: Annotated[int, typer.Option(help="Triton max_batch_size.", min=1)] = 64,
    instance_kind: Kind = "KIND_CPU",
) -> None:
    """Export the OOD detector to triton_repo/ood/<version>/."""
    kind = _instance_kind(instance_kind)

    def run() -> ExportResult:
        from models.ood.export import export_ood

        return export_ood(
            checkpoint,
            ood_checkpoint,
            repo_dir,
            version=version,
            max_batch_size=max_batch_size,
            instance_kind=kind,
        )

    _report(run)


@export_app.command("imaging")
def export_imaging_command(
    checkpoint: Annotated[Path, typer.Option(help="Imaging checkpoint.")] = Path(
        "models/weights/imaging.pt"
    ),
    repo_dir: RepoDir = Path("triton_repo"),
    version: Version = 1,
    max_batch_size: Annotated[int, typer.Option(help="Triton max_batch_size.", min=1)] = 16,
    instance_kind: Kind = "KIND_CPU",
) -> None:
    """Export the imaging network to triton_repo/imaging/<version>/."""
    kind = _instance_kind(instance_kind)

    def run() -> ExportResult:
        from models.imaging.export import export_imaging

        return export_imaging(
            checkpoint, repo_dir, version=version, max_batch_size=max_batch_size, instance_kind=kind
        )

    _report(run)


def run_federate_command(settings: FederateSettings) -> str:
    """``vigil federate``: the federation and its comparison arms (progress on stderr)."""
    import logging

    from models.federated.experiment import run_federate

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    report = run_federate(settings)
    timing = report["federation_timing"]
    return (
        f"{settings.out / 'federation.json'}: SIMULATED sites (set A's ICU types); "
        f"{report['strategy']} x {report['rounds']} rounds, secure aggregation "
        f"{report['secure_aggregation']}; pooled test AUROC at 48 h federated "
        f"{report['pooled_test_auroc_federated']}, central {report['pooled_test_auroc_central']}; "
        f"federation wall time {timing['wall_seconds']:.0f} s"
    )


def run_validate_command(settings: ValidateSettings) -> str:
    """``vigil validate``: analytical and clinical validity report."""
    federation = settings.federation_dir / "federation.json"
    if not federation.is_file():  # before importing torch: a mistyped path fails at once
        raise ConfigError(
            f"{federation} not found; run vigil federate --out {settings.federation_dir} first"
        )
    from models.validity.run import run_validate

    report = run_validate(settings)
    replay = report["analytical"]["replay"]
    return (
        f"{settings.out / 'report.html'} and validity.json: replay identical "
        f"{replay['identical']}, unit round trips max rel. error "
        f"{report['analytical']['unit_round_trips']['max_rel_error']:.2g}"
    )
