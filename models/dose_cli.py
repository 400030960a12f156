"""``vigil imaging ...``: low-dose CT simulation, the CT denoiser and SVF registration.

Commands (docs/imaging-dose-registration.md):

* ``simulate-dose --in PATCHES.npz --out OUT.npz --dose D --seed S``: simulated low-dose
  acquisitions of ``images [N,1,H,W]`` in ``[0, 1]`` (same shape and scaling out);
* ``train-denoiser``: train the denoiser on the training patients' simulated pairs;
* ``export-denoiser``: write ``triton_repo/ct_denoise/``;
* ``eval-dose``: PSNR/SSIM per dose and the shipped segmentation with and without it;
* ``eval-self-ensemble``: validation PSNR of the self-ensembles (the served size's choice);
* ``eval-registration``: SVF registration on known deformations and real pairs;
* ``registration-card``: the registration's model card;
* ``figures``: the doc's pictures.

Bad arguments print one line and exit 2 (``ConfigError``); failures exit 1. Torch and
scikit-image are imported only when a command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import typer

from vigil.errors import ConfigError

__all__ = ["imaging_app"]

imaging_app = typer.Typer(
    help="Low-dose CT simulation, CT denoiser and registration to the prior study.",
    no_args_is_help=True,
    add_completion=False,
)

_PATCHES = Path("../shared/data/imaging/msd_lung_ct/msd_lung_ct_patches.npz")
_CACHE = Path(".vigil/ct_dose_pairs.npz")
Patches = Annotated[Path, typer.Option("--patches", help="MSD lung CT patches (.npz).")]
Cache = Annotated[Path, typer.Option(help="Cache of the simulated pairs (.npz).")]
_DEFAULT = "Default: register_pair's (models/imaging/registration.py)."


@imaging_app.callback()
def _group() -> None:
    """Low-dose CT simulation, CT denoiser and registration to the prior study."""


@imaging_app.command("simulate-dose")
def simulate_dose_command(
    source: Annotated[Path, typer.Option("--in", help="Input .npz with images [N,1,H,W].")],
    out: Annotated[Path, typer.Option("--out", help="Output .npz.")],
    dose: Annotated[float, typer.Option("--dose", help="Dose fraction in (0, 1].")],
    seed: Annotated[int, typer.Option("--seed", help="Seed of the Poisson draws.")] = 0,
) -> None:
    """Simulate a low-dose acquisition (radon -> Poisson counts -> log -> FBP); SIMULATED."""
    from models.ct_denoise.simulate import SimulationConstants, simulate_dose

    try:
        with np.load(source, allow_pickle=False) as archive:
            images = np.asarray(archive["images"])
            extra = {k: archive[k] for k in archive.files if k != "images"}
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"cannot read images from {source}: {exc}") from exc
    if not np.issubdtype(images.dtype, np.floating):
        raise ConfigError(f"images must be float in [0, 1], got {images.dtype}")
    simulated = simulate_dose(images, dose, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    passthrough = {k: v for k, v in extra.items() if k == "masks"}
    np.savez_compressed(
        out,
        images=simulated,
        dose_fraction=np.float32(dose),
        seed=np.int64(seed),
        simulated=np.bool_(True),
        constants=np.array(json.dumps(SimulationConstants().to_dict())),
        **passthrough,
    )
    typer.echo(f"wrote {out}: {simulated.shape[0]} SIMULATED images at dose {dose:g}")


@imaging_app.command("train-denoiser")
def train_denoiser_command(
    loss: Annotated[str, typer.Option(help="poisson or mse.")] = "poisson",
    out: Annotated[Path, typer.Option(help="Checkpoint written.")] = Path(
        "models/weights/ct_denoise.pt"
    ),
    epochs: Annotated[int, typer.Option(min=1)] = 75,
    batch_size: Annotated[int, typer.Option(min=1, help="Pairs per Adam step.")] = 8,
    channels: Annotated[int, typer.Option(min=1)] = 32,
    levels: Annotated[int, typer.Option(min=0, max=4, help="U-Net levels; 0 plain.")] = 0,
    realisations: Annotated[
        int,
        typer.Option(
            min=1,
            max=16,
            help="Noise realisations per training patch and dose (the first is the cached one).",
        ),
    ] = 4,
    noise_map: Annotated[
        bool,
        typer.Option(
            "--noise-map/--no-noise-map",
            help="Give the network each pixel's Poisson noise level as a third channel.",
        ),
    ] = False,
    patches: Patches = _PATCHES,
    cache: Cache = _CACHE,
    seed: int = 7,
) -> None:
    """Train the CT denoiser on the training patients' simulated pairs."""
    from models.ct_denoise.network import DenoiseConfig
    from models.ct_denoise.run import train_and_save

    if loss not in ("poisson", "mse"):
        raise ConfigError(f"--loss must be poisson or mse, got {loss!r}")
    kind: Literal["poisson", "mse"] = "poisson" if loss == "poisson" else "mse"
    meta = train_and_save(
        patches,
        out,
        loss=kind,
        epochs=epochs,
        batch_size=batch_size,
        cache=cache,
        config=DenoiseConfig(channels=channels, levels=levels, noise_map=noise_map),
        seed=seed,
        realisations=realisations,
    )
    typer.echo(f"{out}: best epoch {meta['best_epoch']}, {meta['train_seconds']} s")


@imaging_app.command("export-denoiser")
def export_denoiser_command(
    checkpoint: Annotated[Path, typer.Option()] = Path("models/weights/ct_denoise.pt"),
    repo_dir: Annotated[Path, typer.Option()] = Path("triton_repo"),
    metrics: Annotated[
        Path | None, typer.Option(help="eval-dose JSON whose test rows go into the card.")
    ] = None,
) -> None:
    """Export the denoiser to <repo-dir>/ct_denoise/1/."""
    from models.ct_denoise.export import export_ct_denoise

    rows = []
    if metrics is not None:
        report = json.loads(metrics.read_text())
        rows = [
            {
                "dose": float(dose),
                "input_psnr_db": entry["input"]["psnr_db"][0],
                "denoised_psnr_db": entry["denoiser"]["psnr_db"][0],
                "denoised_ssim": entry["denoiser"]["ssim"][0],
            }
            for dose, entry in report["doses"].items()
        ]
    result = export_ct_denoise(checkpoint, repo_dir, test_metrics=rows)
    typer.echo(f"wrote {result.model} (parity {result.max_abs_diff:.2e})")


@imaging_app.command("eval-dose")
def eval_dose_command(
    out: Annotated[Path, typer.Option(help="JSON report.")],
    denoiser: Annotated[Path, typer.Option()] = Path("models/weights/ct_denoise.pt"),
    mse_denoiser: Annotated[Path | None, typer.Option()] = Path("models/weights/ct_denoise_mse.pt"),
    segmentation: Annotated[Path, typer.Option()] = Path("models/weights/imaging.pt"),
    patches: Patches = _PATCHES,
    cache: Cache = _CACHE,
) -> None:
    """Held-out PSNR/SSIM per dose and the segmentation with and without the denoiser."""
    from models.ct_denoise.evaluate import evaluate_dose

    report = evaluate_dose(
        patches,
        cache=cache,
        denoiser=denoiser,
        mse_denoiser=mse_denoiser,
        segmentation=segmentation,
        log=typer.echo,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    typer.echo(f"wrote {out}")


@imaging_app.command("eval-registration")
def eval_registration_command(
    out: Annotated[Path, typer.Option(help="JSON report.")],
    patches: Patches = _PATCHES,
    split: Annotated[
        str,
        typer.Option(
            help="test (reported figures), or validation or train (choosing settings: the "
            "registration learns nothing, so the training patients are unseen by it too)."
        ),
    ] = "test",
    seed: Annotated[int, typer.Option(help="Seed of the known deformations.")] = 19,
    deformations_per_patch: Annotated[int, typer.Option(min=1)] = 1,
    iterations: Annotated[int | None, typer.Option(min=1, help=_DEFAULT)] = None,
    smoothness: Annotated[float | None, typer.Option(min=0.0, help=_DEFAULT)] = None,
    learning_rate: Annotated[float | None, typer.Option(min=0.0, help=_DEFAULT)] = None,
    control_stride: Annotated[int | None, typer.Option(min=1, help=_DEFAULT)] = None,
    levels: Annotated[int | None, typer.Option(min=1, help=_DEFAULT)] = None,
    schedule: Annotated[str | None, typer.Option(help="constant or cosine; " + _DEFAULT)] = None,
    pyramid: Annotated[
        bool | None,
        typer.Option("--pyramid/--no-pyramid", help="Coarse levels on smaller images; " + _DEFAULT),
    ] = None,
) -> None:
    """SVF registration: known deformations (synthetic) and real same-patient pairs."""
    from models.registration.evaluate import summarise_registration

    splits: dict[str, Literal["test", "validation", "train"]] = {
        "test": "test",
        "validation": "validation",
        "train": "train",
    }
    if split not in splits:
        raise ConfigError(f"--split must be test, validation or train, got {split!r}")
    if schedule not in (None, "constant", "cosine"):
        raise ConfigError(f"--schedule must be constant or cosine, got {schedule!r}")
    chosen = {
        "iterations": iterations,
        "smoothness": smoothness,
        "learning_rate": learning_rate,
        "control_stride": control_stride,
        "levels": levels,
        "schedule": schedule,
        "pyramid": pyramid,
    }
    report = summarise_registration(
        patches,
        seed=seed,
        split=splits[split],
        deformations_per_patch=deformations_per_patch,
        **{name: value for name, value in chosen.items() if value is not None},
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    typer.echo(f"wrote {out}")


@imaging_app.command("eval-self-ensemble")
def eval_self_ensemble_command(
    out: Annotated[Path, typer.Option(help="JSON report.")],
    denoiser: Annotated[Path, typer.Option()] = Path("models/weights/ct_denoise.pt"),
    mse_denoiser: Annotated[Path, typer.Option()] = Path("models/weights/ct_denoise_mse.pt"),
    patches: Patches = _PATCHES,
    cache: Cache = _CACHE,
) -> None:
    """Validation PSNR of each denoiser as a self-ensemble of 1, 2, 4 and 8 transforms."""
    from models.ct_denoise.evaluate import ensemble_validation

    report = ensemble_validation(patches, cache, {"poisson": denoiser, "mse": mse_denoiser})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    typer.echo(f"wrote {out}")


@imaging_app.command("registration-card")
def registration_card_command(
    report: Annotated[
        Path, typer.Option(help="Test-split eval-registration report with the default settings.")
    ] = Path(".vigil/ct_registration.json"),
    out_dir: Annotated[Path, typer.Option(help="Where model_card.json/.md go.")] = Path(
        "models/registration"
    ),
    patches: Patches = _PATCHES,
) -> None:
    """Write the registration's model card (settings, code, data, test figures, a check)."""
    from models.registration.card import write_registration_card

    try:
        loaded = json.loads(report.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the report {report}: {exc}") from exc
    try:
        paths = write_registration_card(loaded, patches, out_dir)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    for path in paths:
        typer.echo(f"wrote {path}")


@imaging_app.command("figures")
def figures_command(
    out_dir: Annotated[Path, typer.Option(help="Where the PNGs go.")] = Path("docs"),
    denoiser: Annotated[Path, typer.Option()] = Path("models/weights/ct_denoise.pt"),
    patches: Patches = _PATCHES,
    cache: Cache = _CACHE,
) -> None:
    """The pictures of docs/imaging-dose-registration.md (noise per dose, denoised, grid)."""
    from models.ct_denoise.figures import write_figures

    for path in write_figures(patches, denoiser, out_dir, cache):
        typer.echo(f"wrote {path}")
