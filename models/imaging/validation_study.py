"""Post-processing choices of the imaging model, on validation patients only.

Issue 17's fourth and fifth rounds chose two things after training, with no test figure:
the lesion peak threshold (``lesion_peak_threshold``) and the mirror average of the mask
(``flip_average``). Both were chosen on the **validation** patients of the four
cross-validation folds (8 patients, 80 patches), each fold at its own operating point.
This module reruns those studies from the fold checkpoints::

    python -m models.imaging.validation_study peak --cv-dir DIR [--folds 4]
    python -m models.imaging.validation_study mirror --cv-dir DIR [--folds 4]

``peak`` sweeps the peak threshold at each fold's ``mask_threshold``; ``mirror`` compares
the single view with the mirror average, each fold's threshold re-chosen by the training
rule on the served probabilities. Both print one line per candidate and never read a test
patient. ``figure --out PNG`` draws the validation patch of fold 0 where the peak filter
drops the most components (docs/imaging.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import typer

from models.imaging.data import load_ct
from models.imaging.evaluate import patient_counts
from models.imaging.export import load_imaging_checkpoint
from models.imaging.metrics import choose_threshold, lesion_masks
from models.imaging.settings import ImagingSettings
from models.imaging.train import _threshold_grid, native_maps, predict
from vigil.errors import ModelError

__all__ = ["PEAK_CANDIDATES", "Pooled", "ValidationFold", "pool", "validation_folds"]

PEAK_CANDIDATES: Final[tuple[float, ...]] = (
    0.0,
    0.55,
    0.6,
    0.65,
    0.7,
    0.75,
    0.8,
    0.85,
    0.9,
    0.95,
    0.99,
)
"""Peak thresholds swept (0 keeps every component)."""


@dataclass(frozen=True, slots=True)
class ValidationFold:
    """One fold's validation patches: native images, served probabilities, references,
    and the checkpoint's operating point and peak threshold."""

    images: npt.NDArray[np.float32]
    probability: npt.NDArray[np.float32]
    reference: npt.NDArray[np.bool_]
    threshold: float
    peak_threshold: float


@dataclass(frozen=True, slots=True)
class Pooled:
    """Figures pooled over folds: Dice over all pixels, lesions found, FP per patch."""

    dice: float
    found: int
    lesions: int
    false_positives_per_patch: float


def pool(folds: Sequence[ValidationFold], peak_threshold: float) -> Pooled:
    """Pooled figures of ``folds`` at their own thresholds with ``peak_threshold``
    (:func:`models.imaging.evaluate.patient_counts` per fold, summed)."""
    counts = [
        patient_counts(fold.probability, fold.reference, fold.threshold, peak_threshold)
        for fold in folds
    ]
    intersection = sum(c.intersection for c in counts)
    total = sum(c.predicted + c.reference for c in counts)
    patches = sum(c.patches for c in counts)
    return Pooled(
        dice=2.0 * intersection / total if total else 1.0,
        found=sum(c.found for c in counts),
        lesions=sum(c.lesions for c in counts),
        false_positives_per_patch=(
            sum(c.false_positives for c in counts) / patches if patches else float("nan")
        ),
    )


def validation_folds(
    cv_dir: Path, folds: int, ct_path: Path, *, flip_average: bool | None = None
) -> list[ValidationFold]:
    """Each fold's validation patches as served.

    Args:
        cv_dir: Folder of ``imaging_fold<k>.pt``.
        folds: Number of folds.
        ct_path: The MSD CT patches.
        flip_average: None serves each checkpoint as saved, keeping its threshold;
            True/False forces the single view or the mirror average and re-chooses the
            threshold by the training rule (:func:`models.imaging.metrics.choose_threshold`)
            on the validation patients.
    """
    out = []
    ct = None
    for k in range(folds):
        net, meta = load_imaging_checkpoint(cv_dir / f"imaging_fold{k}.pt")
        if ct is None:
            ct = load_ct(ct_path, int(meta["config"]["image_size"]))
        part = ct.subset(tuple(int(p) for p in meta["split"]["validation"]))
        threshold = float(meta["threshold"])
        if flip_average is not None:
            net.flip_average = flip_average
        probability = native_maps(predict(net, part.images)[0], part.native_masks.shape[1:])
        reference = part.native_masks.astype(bool)
        if flip_average is not None:
            band = ImagingSettings(
                min_threshold=float(meta["settings"]["min_threshold"]),
                max_threshold=float(meta["settings"]["max_threshold"]),
            )
            threshold = choose_threshold(
                probability,
                reference,
                float(meta.get("target_recall", 0.95)),
                _threshold_grid(band),
                max_false_positives_per_patch=float(
                    meta.get("max_false_positives_per_patch", 0.15)
                ),
            )
        peak = float(meta.get("lesion_peak_threshold", 0.0))
        out.append(ValidationFold(part.native_images, probability, reference, threshold, peak))
    return out


def draw_peak_filter(cv_dir: Path, ct_path: Path, out: Path) -> None:
    """A picture of the peak filter on two of fold 0's validation patches: the one where
    it drops the most components and the one with the largest lesion. Per row: the
    image, the served probability, the outline at ``mask_threshold`` with the kept and
    dropped components, and the reference."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from streams.core.imaging_ops import label_components

    fold = validation_folds(cv_dir, 1, ct_path)[0]
    peak = fold.peak_threshold
    outlines = fold.probability >= fold.threshold
    kept = lesion_masks(fold.probability, fold.threshold, peak)
    dropped = [label_components(o & ~k)[1] for o, k in zip(outlines, kept, strict=True)]
    rows = [int(np.argmax(dropped)), int(np.argmax(fold.reference.sum(axis=(1, 2))))]
    figure = Figure(figsize=(10, 5.6), dpi=100)
    FigureCanvasAgg(figure)
    grid = figure.subplots(2, 4)
    titles = (
        "CT patch (validation patient)",
        "served lesion probability",
        f"outline at {fold.threshold:.2f}: kept (peak >= {peak:g})\ngreen, dropped red",
        "reference lesion mask",
    )
    for axes, index in zip(grid, rows, strict=True):
        overlay = np.zeros((*fold.probability[index].shape, 3), dtype=np.float32)
        overlay[outlines[index] & ~kept[index]] = (0.9, 0.2, 0.2)
        overlay[kept[index]] = (0.2, 0.8, 0.3)
        axes[0].imshow(fold.images[index], cmap="gray", vmin=0.0, vmax=1.0)
        axes[1].imshow(fold.probability[index], cmap="magma", vmin=0.0, vmax=1.0)
        axes[2].imshow(overlay)
        axes[3].imshow(fold.reference[index], cmap="gray", vmin=0, vmax=1)
        for axis, title in zip(axes, titles, strict=True):
            axis.set_title(title, fontsize=8)
            axis.set_axis_off()
    figure.suptitle(
        "Lesion peak threshold: a component counts only if its highest probability reaches "
        f"{peak:g} (fold 0, validation patients only)",
        fontsize=9,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, bbox_inches="tight")


def _line(label: str, figures: Pooled) -> str:
    return (
        f"{label}: Dice {figures.dice:.3f}, lesions found {figures.found}/{figures.lesions}, "
        f"false positives {figures.false_positives_per_patch:.3f} per patch"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=("peak", "mirror", "figure"))
    parser.add_argument("--out", type=Path, default=Path("docs/imaging_peak_filter.png"))
    parser.add_argument("--cv-dir", type=Path, required=True)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument(
        "--ct-path",
        type=Path,
        default=Path("../shared/data/imaging/msd_lung_ct/msd_lung_ct_patches.npz"),
    )
    args = parser.parse_args(argv)
    try:
        if args.study == "figure":
            draw_peak_filter(args.cv_dir, args.ct_path, args.out)
            typer.echo(f"wrote {args.out}")
            return
        _run(args.study, args.cv_dir, args.folds, args.ct_path)
    except ModelError as exc:
        raise SystemExit(f"validation_study: {exc}") from exc


def _run(study: str, cv_dir: Path, n_folds: int, ct_path: Path) -> None:
    if study == "peak":
        folds = validation_folds(cv_dir, n_folds, ct_path)
        typer.echo(f"thresholds {[f.threshold for f in folds]}")
        for peak in PEAK_CANDIDATES:
            typer.echo(_line(f"peak threshold {peak:.2f}", pool(folds, peak)))
        return
    peak = ImagingSettings.model_fields["lesion_peak_threshold"].default
    for flip in (False, True):
        folds = validation_folds(cv_dir, n_folds, ct_path, flip_average=flip)
        label = "mirror average" if flip else "single view"
        typer.echo(f"{label}, thresholds {[f.threshold for f in folds]}")
        typer.echo(_line(f"  {label}, peak {peak}", pool(folds, peak)))


if __name__ == "__main__":
    main()
