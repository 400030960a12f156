"""Pictures of docs/imaging-dose-registration.md (``vigil imaging figures``), all labelled
SIMULATED or SYNTHETIC where they are.

* ``ct_dose_noise.png``: one held-out test patch, real and simulated at every dose, the
  non-local-means baseline and the denoiser's output at each dose.
* ``ct_registration_grid.png``: a known (synthetic) deformation of a real test patch, the
  recovered SVF deformation drawn as a warped grid, its Jacobian determinant, and the
  prior's lesion contour carried into the new frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from models.ct_denoise.data import load_patches, patient_split
from models.ct_denoise.evaluate import nlm, nlm_strength
from models.ct_denoise.export import load_denoiser
from models.ct_denoise.network import SELF_ENSEMBLE_TURNS
from models.ct_denoise.run import load_or_simulate_pairs
from models.ct_denoise.simulate import DOSES, simulate_dose
from models.ct_denoise.train import denoise, psnr
from models.imaging.data import patient_ids
from models.imaging.registration import jacobian_determinant, register_pair
from models.registration.evaluate import make_synthetic

__all__ = ["write_figures"]


def _show(ax: Axes, image: npt.NDArray[np.float32], title: str) -> None:
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_title(title, fontsize=7)
    ax.set_axis_off()


def _grid(ax: Axes, displacement: npt.NDArray[np.float32], step: int = 3) -> None:
    height, width = displacement.shape[1:]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    py, px = ys + displacement[0], xs + displacement[1]
    for i in range(0, height, step):
        ax.plot(px[i, :], py[i, :], color="tab:orange", linewidth=0.5)
    for j in range(0, width, step):
        ax.plot(px[:, j], py[:, j], color="tab:orange", linewidth=0.5)


def _dose_figure(patches: Path, denoiser: Path, target: Path, cache: Path | None) -> Path:
    images, _ = load_patches(patches)
    pairs = load_or_simulate_pairs(patches, cache)
    validation = pairs.where(np.isin(pairs.patient, patient_split()["validation"]))
    index = int(np.flatnonzero(np.isin(patient_ids(images.shape[0]), patient_split()["test"]))[3])
    patch = images[index : index + 1]
    net, _ = load_denoiser(denoiser)
    figure = Figure(figsize=(2.0 * len(DOSES), 6.4))
    axes = figure.subplots(3, len(DOSES) + 1)
    _show(axes[0, 0], patch[0, 0], "real patch (reference)")
    axes[1, 0].set_axis_off()
    axes[2, 0].set_axis_off()
    for j, dose in enumerate(DOSES, start=1):
        noisy = simulate_dose(patch, dose, seed=19)
        clean = denoise(net, noisy, np.array([dose], dtype=np.float32), SELF_ENSEMBLE_TURNS)
        strength = nlm_strength(validation.where(validation.dose == dose))
        classical = nlm(noisy[0, 0], strength)
        _show(
            axes[0, j],
            noisy[0, 0],
            f"SIMULATED {dose:.0%} dose\n{psnr(noisy[0, 0], patch[0, 0]):.1f} dB",
        )
        _show(
            axes[1, j],
            classical,
            f"non-local means (k {strength:g})\n{psnr(classical, patch[0, 0]):.1f} dB",
        )
        _show(
            axes[2, j], clean[0, 0], f"denoiser (shipped)\n{psnr(clean[0, 0], patch[0, 0]):.1f} dB"
        )
    figure.suptitle(
        "Low-dose CT (SIMULATED), held-out test patient; PSNR vs the real patch", fontsize=8
    )
    figure.tight_layout()
    FigureCanvasAgg(figure).print_png(str(target))  # type: ignore[no-untyped-call]
    return target


def _registration_figure(patches: Path, target: Path) -> Path:
    images, masks = load_patches(patches)
    test = np.flatnonzero(np.isin(patient_ids(images.shape[0]), patient_split()["test"]))
    index = int(next(i for i in test if masks[i, 0].sum() > 30))
    pair = make_synthetic(images[index, 0], masks[index, 0], np.random.default_rng(19))
    torch.set_num_threads(1)
    result = register_pair(pair.new, pair.prior)
    figure = Figure(figsize=(10.0, 2.6))
    axes = figure.subplots(1, 4)
    _show(axes[0], pair.prior, "prior (real patch)")
    _show(axes[1], pair.new, "new = prior warped by a\nKNOWN SYNTHETIC deformation")
    _show(axes[2], result.warped, "prior registered to new;\nrecovered deformation grid")
    _grid(axes[2], result.displacement)
    det = jacobian_determinant(result.displacement)
    shown = axes[3].imshow(det, cmap="coolwarm", vmin=0.0, vmax=2.0)
    axes[3].contour(pair.new_mask, levels=[0.5], colors="black", linewidths=0.8)
    axes[3].contour(result.warp_mask(pair.prior_mask), levels=[0.5], colors="lime", linewidths=0.8)
    axes[3].set_title(
        f"Jacobian determinant (min {det.min():.2f});\nlesion: true (black), warped prior (green)",
        fontsize=7,
    )
    axes[3].set_axis_off()
    figure.colorbar(shown, ax=axes[3], fraction=0.046)
    figure.tight_layout()
    FigureCanvasAgg(figure).print_png(str(target))  # type: ignore[no-untyped-call]
    return target


def write_figures(
    patches: Path, denoiser: Path, out_dir: Path, cache: Path | None = None
) -> list[Path]:
    """Writes both PNGs into ``out_dir``; returns their paths. ``cache``: the simulated
    pairs (:func:`models.ct_denoise.run.load_or_simulate_pairs`), whose validation
    patients choose the non-local-means strength at each dose as the evaluation does."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        _dose_figure(patches, denoiser, out_dir / "ct_dose_noise.png", cache),
        _registration_figure(patches, out_dir / "ct_registration_grid.png"),
    ]
