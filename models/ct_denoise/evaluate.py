"""Held-out evaluation of the denoisers and their effect on segmentation
(``vigil imaging eval-dose``; **simulated** low-dose data).

On the test patients only (never used for training or any choice):

* PSNR and SSIM against the real patch, per dose, for the low-dose input, the classical
  baseline (scikit-image non-local means, strength chosen per dose on the validation
  patients), the network trained on the Poisson-aware loss and the same network trained on
  MSE, both as served (self-ensemble of ``SELF_ENSEMBLE_TURNS`` quarter turns); means
  with 95 % patient-bootstrap intervals (patients resampled with replacement).
* The shipped segmentation (its checkpoint and lesion threshold) on the real patch and on
  each dose with and without the denoiser: pooled Dice and lesion recall, with
  patient-bootstrap intervals of the recall.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch
from scipy.ndimage import convolve
from skimage.metrics import structural_similarity
from skimage.restoration import denoise_nl_means

from models.ct_denoise.data import DosePairs, load_patches, patient_split
from models.ct_denoise.export import load_denoiser
from models.ct_denoise.network import SELF_ENSEMBLE_TURNS
from models.ct_denoise.run import load_or_simulate_pairs
from models.ct_denoise.simulate import DOSES
from models.ct_denoise.train import denoise, psnr
from models.imaging.export import load_imaging_checkpoint
from models.imaging.metrics import lesion_counts, lesion_masks
from models.imaging.train import predict
from streams.core.imaging_ops import preprocess_image, resize

__all__ = [
    "ENSEMBLE_SIZES",
    "NLM_STRENGTHS",
    "bootstrap_mean",
    "ensemble_validation",
    "evaluate_dose",
    "nlm",
    "nlm_strength",
    "noise_sigma",
    "segment",
]

NLM_STRENGTHS: Final[tuple[float, ...]] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5)
_BOOTSTRAP: Final[int] = 2000
#: The self-ensembles compared on the validation patients (docs/imaging-dose-registration.md,
#: "Self-ensemble"): by size, the (quarter turns, flips) of :class:`SelfEnsemble`.
ENSEMBLE_SIZES: Final[dict[int, tuple[int, bool]]] = {
    1: (1, False),
    2: (1, True),
    4: (4, False),
    8: (4, True),
}


def noise_sigma(image: npt.NDArray[np.float32]) -> float:
    """Noise standard deviation of an ``[H,W]`` image (Immerkaer 1996: the mean absolute
    response to a Laplacian difference mask, which cancels smooth structure)."""
    mask = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
    response = convolve(image.astype(np.float64), mask)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2.0) * np.abs(response).mean() / 6.0)


def nlm(image: npt.NDArray[np.float32], strength: float) -> npt.NDArray[np.float32]:
    """Non-local means of an ``[H,W]`` image, ``h = strength * sigma`` (sigma estimated by
    :func:`noise_sigma`)."""
    sigma = noise_sigma(image)
    out = denoise_nl_means(
        image, h=strength * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True
    )
    clipped: npt.NDArray[np.float32] = np.clip(out, 0.0, 1.0).astype(np.float32)
    return clipped


def nlm_strength(validation: DosePairs) -> float:
    """The :data:`NLM_STRENGTHS` entry with the best mean PSNR on ``validation`` (one
    dose's validation pairs)."""
    return max(
        NLM_STRENGTHS,
        key=lambda k: float(
            np.mean(
                [
                    psnr(nlm(n[0], k), c[0])
                    for n, c in zip(validation.noisy, validation.clean, strict=True)
                ]
            )
        ),
    )


def ensemble_validation(
    patches: Path, cache: Path | None, denoisers: dict[str, Path]
) -> dict[str, dict[str, float]]:
    """Mean PSNR (dB) over the validation patients' low doses of each denoiser as each
    self-ensemble of :data:`ENSEMBLE_SIZES` (the choice of the served size)."""
    torch.set_num_threads(1)
    pairs = load_or_simulate_pairs(patches, cache)
    low = pairs.where(np.isin(pairs.patient, patient_split()["validation"]) & (pairs.dose < 1.0))
    result: dict[str, dict[str, float]] = {}
    for name, path in denoisers.items():
        net, _ = load_denoiser(path)
        result[name] = {
            str(size): float(
                np.mean(
                    [
                        psnr(o[0], c[0])
                        for o, c in zip(
                            denoise(net, low.noisy, low.dose, turns, flips),
                            low.clean,
                            strict=True,
                        )
                    ]
                )
            )
            for size, (turns, flips) in ENSEMBLE_SIZES.items()
        }
    return result


def bootstrap_mean(
    values: npt.NDArray[np.float64], patients: npt.NDArray[np.int64], seed: int = 0
) -> tuple[float, float, float]:
    """Mean of per-patch ``values`` and its 95 % patient-bootstrap interval."""
    rng = np.random.default_rng(seed)
    unique = np.unique(patients)
    groups = [values[patients == p] for p in unique]
    means = [
        float(
            np.concatenate([groups[i] for i in rng.integers(unique.size, size=unique.size)]).mean()
        )
        for _ in range(_BOOTSTRAP)
    ]
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


def segment(net: torch.nn.Module, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Lesion probabilities ``[N,H,W]`` at the native size of ``images [N,1,H,W]``."""
    inputs = np.stack([preprocess_image(image[0]) for image in images]).astype(np.float32)
    masks, _, _ = predict(net, inputs)  # type: ignore[arg-type]
    side = images.shape[2:]
    return np.stack([resize(m, side[0], side[1]) for m in masks])


def _recall_rows(
    prob: npt.NDArray[np.float32], ref: npt.NDArray[np.bool_], threshold: float, peak: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    lesions, found, inter_sum = [], [], []
    for p, r in zip(lesion_masks(prob, threshold, peak), ref, strict=True):
        n, f, _ = lesion_counts(p, r)
        lesions.append(n)
        found.append(f)
        inter_sum.append((2.0 * float((p & r).sum()), float(p.sum() + r.sum())))
    return np.array(lesions), np.array(found), np.array(inter_sum)


def _seg_entry(
    prob: npt.NDArray[np.float32],
    ref: npt.NDArray[np.bool_],
    patients: npt.NDArray[np.int64],
    threshold: float,
    peak: float,
) -> dict[str, Any]:
    lesions, found, dice_parts = _recall_rows(prob, ref, threshold, peak)
    rng = np.random.default_rng(0)
    unique = np.unique(patients)
    draws = []
    for _ in range(_BOOTSTRAP):
        pick = np.concatenate(
            [
                np.flatnonzero(patients == unique[i])
                for i in rng.integers(unique.size, size=unique.size)
            ]
        )
        draws.append(found[pick].sum() / max(lesions[pick].sum(), 1))
    low, high = np.percentile(draws, [2.5, 97.5])
    return {
        "lesions": int(lesions.sum()),
        "lesions_found": int(found.sum()),
        "lesion_recall": float(found.sum() / max(lesions.sum(), 1)),
        "lesion_recall_ci": [float(low), float(high)],
        "dice": float(dice_parts[:, 0].sum() / max(dice_parts[:, 1].sum(), 1e-9)),
    }


def _metric_block(
    outputs: npt.NDArray[np.float32], rows: DosePairs, base_psnr: npt.NDArray[np.float64]
) -> dict[str, Any]:
    p = np.array([psnr(o[0], c[0]) for o, c in zip(outputs, rows.clean, strict=True)])
    s = np.array(
        [
            structural_similarity(o[0], c[0], data_range=1.0)  # type: ignore[no-untyped-call]
            for o, c in zip(outputs, rows.clean, strict=True)
        ]
    )
    return {
        "psnr_db": bootstrap_mean(p, rows.patient),
        "ssim": bootstrap_mean(s, rows.patient),
        "psnr_gain_db": bootstrap_mean(p - base_psnr, rows.patient),
    }


def evaluate_dose(
    patches: Path,
    *,
    cache: Path | None,
    denoiser: Path,
    mse_denoiser: Path | None,
    segmentation: Path,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Every figure of the module docstring, as a JSON-ready dictionary."""
    torch.set_num_threads(1)
    pairs = load_or_simulate_pairs(patches, cache)
    split = patient_split()
    test = pairs.where(np.isin(pairs.patient, split["test"]))
    val = pairs.where(np.isin(pairs.patient, split["validation"]))
    net, meta = load_denoiser(denoiser)
    mse_net = load_denoiser(mse_denoiser)[0] if mse_denoiser is not None else None
    seg_net, seg_meta = load_imaging_checkpoint(segmentation)
    threshold = float(seg_meta["threshold"])
    peak = float(seg_meta.get("lesion_peak_threshold", 0.0))
    _, masks = load_patches(patches)
    result: dict[str, Any] = {
        "simulated": True,
        "test_patients": list(split["test"]),
        "denoiser_loss": meta["loss"],
        "self_ensemble_turns": SELF_ENSEMBLE_TURNS,
        "segmentation_checkpoint": str(segmentation),
        "mask_threshold": threshold,
        "lesion_peak_threshold": peak,
        "doses": {},
    }
    first = test.where(test.dose == DOSES[0])
    reference = segment(seg_net, first.clean)
    ref_masks = masks[first.patch, 0]
    result["segmentation_real_patch"] = _seg_entry(
        reference, ref_masks, first.patient, threshold, peak
    )
    for dose in DOSES:
        rows = test.where(test.dose == dose)
        vrows = val.where(val.dose == dose)
        log(f"dose {dose}")
        base = np.array([psnr(n[0], c[0]) for n, c in zip(rows.noisy, rows.clean, strict=True)])
        strength = nlm_strength(vrows)
        classical = np.stack([nlm(n[0], strength)[None] for n in rows.noisy])
        denoised = denoise(net, rows.noisy, rows.dose, SELF_ENSEMBLE_TURNS)
        entry: dict[str, Any] = {
            "patches": int(rows.noisy.shape[0]),
            "input": _metric_block(rows.noisy, rows, base),
            "nlm": {**_metric_block(classical, rows, base), "strength": strength},
            "denoiser": _metric_block(denoised, rows, base),
        }
        if mse_net is not None:
            entry["mse_denoiser"] = _metric_block(
                denoise(mse_net, rows.noisy, rows.dose, SELF_ENSEMBLE_TURNS), rows, base
            )
        row_masks = masks[rows.patch, 0]
        entry["segmentation_raw"] = _seg_entry(
            segment(seg_net, rows.noisy), row_masks, rows.patient, threshold, peak
        )
        entry["segmentation_denoised"] = _seg_entry(
            segment(seg_net, denoised), row_masks, rows.patient, threshold, peak
        )
        result["doses"][f"{dose:g}"] = entry
    return result
