"""Simulated low-dose pairs of the MSD patches, split by patient (**simulated data**).

The patient split is the imaging model's (:func:`models.imaging.data.split_patients`, seed
2024, fold 0): test patients 7, 11, 12 are reported and never looked at while training or
choosing, validation patients 2 and 5 choose the epoch and the baseline's strength, the
other 8 train. The shipped segmentation was trained on the same 8 training patients, so
its scores on the test patients are held out too.

Simulation seeds: realisation ``k`` of dose index ``j`` uses seed
``base_seed + 1000 * j + k`` (:func:`models.ct_denoise.simulate.simulate_dose` then
spawns one stream per patch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from skimage.transform import iradon, radon

from models.ct_denoise.simulate import (
    BODY_WATER_MM,
    MU_WATER_PER_MM,
    PIXEL_MM,
    attenuation_from_window,
    simulate_dose,
)
from models.imaging.data import patient_ids, split_patients
from vigil.errors import ModelError

__all__ = [
    "SPLIT_SEED",
    "DosePairs",
    "load_patches",
    "patient_split",
    "poisson_weight",
    "simulate_pairs",
]

SPLIT_SEED: Final[int] = 2024


@dataclass(frozen=True, slots=True)
class DosePairs:
    """Low-dose inputs with their full-dose references.

    Attributes:
        noisy: ``[M,1,H,W]`` simulated images.
        clean: ``[M,1,H,W]`` the real patches (the full-dose reference).
        dose: ``[M]`` dose fraction of each row.
        patient: ``[M]`` inferred patient index.
        patch: ``[M]`` index of the patch in the file.
        weight: ``[M,1,H,W]`` Poisson inverse-variance weights (:func:`poisson_weight`).
    """

    noisy: npt.NDArray[np.float32]
    clean: npt.NDArray[np.float32]
    dose: npt.NDArray[np.float32]
    patient: npt.NDArray[np.int64]
    patch: npt.NDArray[np.int64]
    weight: npt.NDArray[np.float32]

    def where(self, keep: npt.NDArray[np.bool_]) -> DosePairs:
        """The rows where ``keep`` is true."""
        return DosePairs(
            self.noisy[keep],
            self.clean[keep],
            self.dose[keep],
            self.patient[keep],
            self.patch[keep],
            self.weight[keep],
        )


def load_patches(path: Path) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """``images [N,1,H,W]`` float32 and ``masks [N,1,H,W]`` bool of the MSD file.

    Raises:
        ModelError: A missing or malformed file.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            images = np.asarray(archive["images"], dtype=np.float32)
            masks = np.asarray(archive["masks"]) > 0
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"cannot read CT patches {path}: {exc}") from exc
    return images, masks


def poisson_weight(image: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    """Relative inverse noise variance of each pixel of a simulated ``[H,W]`` scan.

    A detector bin behind path ``p`` counts ``~Poisson(I0 d exp(-p))`` photons, so its log
    has variance ``exp(p) / (I0 d)``. Filtered back-projection spreads each ray's noise
    mostly onto the pixels it crosses, so a pixel's variance is close to the
    (unfiltered) back-projection of ``exp(p)``. The weight is its inverse, divided by its
    mean: the dose factor ``1 / d`` cancels, so every dose weighs as much as in the MSE
    loss and only the signal dependence remains.
    """
    side = image.shape[0]
    theta = np.linspace(0.0, 180.0, 90, endpoint=False)
    mu = attenuation_from_window(image)
    line = radon(mu, theta=theta, circle=False) * PIXEL_MM  # type: ignore[no-untyped-call]
    variance = iradon(  # type: ignore[no-untyped-call]
        np.exp(line + MU_WATER_PER_MM * BODY_WATER_MM),
        theta=theta,
        circle=False,
        output_size=side,
        filter_name=None,
    )
    inverse = 1.0 / np.maximum(variance, 1e-12)
    weight: npt.NDArray[np.float32] = (inverse / inverse.mean()).astype(np.float32)
    return weight


def simulate_pairs(
    images: npt.NDArray[np.float32],
    doses: tuple[float, ...],
    *,
    realisations: int,
    base_seed: int,
) -> DosePairs:
    """Every patch at every dose, ``realisations`` times (rows ordered dose, realisation, patch)."""
    n = images.shape[0]
    patients = patient_ids(n)
    weights = np.stack([poisson_weight(img[0])[None] for img in images])
    noisy, dose, patient, patch = [], [], [], []
    for j, d in enumerate(doses):
        for k in range(realisations):
            noisy.append(simulate_dose(images, d, base_seed + 1000 * j + k))
            dose.append(np.full(n, d, dtype=np.float32))
            patient.append(patients)
            patch.append(np.arange(n, dtype=np.int64))
    reps = len(doses) * realisations
    return DosePairs(
        noisy=np.concatenate(noisy),
        clean=np.tile(images, (reps, 1, 1, 1)),
        dose=np.concatenate(dose),
        patient=np.concatenate(patient),
        patch=np.concatenate(patch),
        weight=np.tile(weights, (reps, 1, 1, 1)),
    )


def patient_split() -> dict[str, tuple[int, ...]]:
    """The imaging model's split of the 13 inferred patients (fold 0)."""
    return split_patients(patient_ids(130), seed=SPLIT_SEED, test=3, validation=2)
