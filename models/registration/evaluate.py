"""Evaluation of the SVF registration on real patches (``vigil imaging eval-registration``).

Two kinds of pairs, both from the MSD patches of one split's patients: the held-out test
patients for the reported figures, the validation patients (another seed, several known
deformations per patch) for choosing the registration settings:

* **Known deformations (synthetic).** A real patch (the prior) is warped by a known
  diffeomorphism ``exp(v_true)``: a random smooth field (Gaussian values on a 4 x 4 grid,
  bicubically upsampled) plus a radial field centred on the lesion that makes it grow
  (:func:`known_velocity`). The warped patch is the new study and its warped mask the new
  lesion, so the true field and the true area change are known. Registration then sees
  only the two images; the end-point error (EPE) of the recovered field and the recovered
  area change are compared with the truth.
* **Real pairs.** The file has no slice positions, so each patch is paired with the most
  correlated other patch of the same (inferred) patient, which is most likely a
  neighbouring or overlapping slice: real anatomy, no ground-truth field. Reported:
  NCC before and after, lesion Dice of the warped prior mask with the new mask, folding.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias

from models.imaging.registration import integrate_velocity, ncc, register_pair, warp

__all__ = [
    "SyntheticPair",
    "evaluate_real_pairs",
    "evaluate_synthetic",
    "known_velocity",
    "make_synthetic",
    "register_settings",
    "summarise_registration",
]


@dataclass(frozen=True, slots=True)
class SyntheticPair:
    """A prior patch, its known deformation, and the resulting new study.

    Attributes:
        prior: ``[H,W]`` image.
        prior_mask: ``[H,W]`` bool.
        new: ``[H,W]`` the prior warped by ``displacement``.
        new_mask: ``[H,W]`` bool, the prior mask warped likewise (bilinear, >= 0.5).
        displacement: ``[2,H,W]`` the true field in pixels.
        new_mask_area_px: The known lesion area of the new study: the sum of the prior
            mask's bilinear warp, not thresholded (fractional pixels).
    """

    prior: npt.NDArray[np.float32]
    prior_mask: npt.NDArray[np.bool_]
    new: npt.NDArray[np.float32]
    new_mask: npt.NDArray[np.bool_]
    displacement: npt.NDArray[np.float32]
    new_mask_area_px: float


def known_velocity(
    shape: tuple[int, int],
    centre: tuple[float, float],
    rng: np.random.Generator,
    *,
    random_px: float = 1.5,
    growth: float = 0.25,
    radius_px: float = 6.0,
) -> npt.NDArray[np.float32]:
    """A smooth ``[2,H,W]`` velocity: random smooth part plus growth about ``centre``.

    ``growth`` > 0 pulls the sampling positions towards ``centre``, so the structure there
    grows in the new study (``warped(x) = prior(x + u(x))``).
    """
    height, width = shape
    coarse = torch.from_numpy(rng.normal(0.0, random_px, size=(1, 2, 4, 4)).astype(np.float32))
    smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)[0]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = ys - centre[0], xs - centre[1]
    bump = np.exp(-(dy**2 + dx**2) / (2.0 * radius_px**2))
    radial = -growth * np.stack([dy, dx]) * bump
    velocity: npt.NDArray[np.float32] = (smooth.numpy() + radial).astype(np.float32)
    return velocity


def make_synthetic(
    prior: npt.NDArray[np.float32], prior_mask: npt.NDArray[np.bool_], rng: np.random.Generator
) -> SyntheticPair:
    """The new study of ``prior`` under a random known deformation (:func:`known_velocity`)."""
    ys, xs = np.nonzero(prior_mask)
    centre = (float(ys.mean()), float(xs.mean())) if ys.size else (prior.shape[0] / 2.0,) * 2
    velocity = known_velocity(prior.shape, centre, rng)  # type: ignore[arg-type]
    with torch.no_grad():
        u = integrate_velocity(torch.from_numpy(velocity)[None])
        new = warp(torch.from_numpy(prior)[None, None], u)[0, 0].numpy()
        new_mask = warp(torch.from_numpy(prior_mask.astype(np.float32))[None, None], u)[0, 0]
    return SyntheticPair(
        prior=prior,
        prior_mask=prior_mask,
        new=new.astype(np.float32),
        new_mask=np.asarray(new_mask.numpy() >= 0.5),
        displacement=u[0].numpy().astype(np.float32),
        new_mask_area_px=float(new_mask.numpy().sum(dtype=np.float64)),
    )


def evaluate_synthetic(
    images: npt.NDArray[np.float32],
    masks: npt.NDArray[np.bool_],
    *,
    seed: int,
    pixel_mm: float = 2.0,
    deformations_per_patch: int = 1,
    **register: Any,
) -> list[dict[str, float]]:
    """One row per (patch with lesion, known deformation): EPE, folding, NCC, area change.

    ``cpu_seconds`` is the process CPU time of the registration alone (``register_pair``).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for image, mask in zip(images, masks, strict=True):
        if not mask.any():
            continue
        for _ in range(deformations_per_patch):
            rows.append(_synthetic_row(image, mask, rng, pixel_mm, register))
    return rows


def _synthetic_row(
    image: npt.NDArray[np.float32],
    mask: npt.NDArray[np.bool_],
    rng: np.random.Generator,
    pixel_mm: float,
    register: dict[str, Any],
) -> dict[str, float]:
    pair = make_synthetic(image, mask, rng)
    started = time.process_time()
    result = register_pair(pair.new, pair.prior, **register)
    cpu_seconds = time.process_time() - started
    error = np.linalg.norm(result.displacement - pair.displacement, axis=0)
    true_area = float(pair.new_mask.sum())
    est_area = float(result.warp_mask(pair.prior_mask).sum())
    prior_area = float(pair.prior_mask.sum())
    est_soft = result.warped_mask_area(pair.prior_mask)
    return {
        "epe_mm": float(error.mean()) * pixel_mm,
        "epe_lesion_mm": float(error[pair.new_mask].mean()) * pixel_mm
        if pair.new_mask.any()
        else float("nan"),
        "true_displacement_mm": float(np.linalg.norm(pair.displacement, axis=0).mean() * pixel_mm),
        "folding_fraction": result.folding_fraction,
        "min_jacobian": result.min_jacobian,
        "attempts": float(result.attempts),
        "ncc_before": result.ncc_before,
        "ncc_after": result.ncc_after,
        "prior_area_px": prior_area,
        "true_area_px": true_area,
        "estimated_area_px": est_area,
        "true_change_px": true_area - prior_area,
        "estimated_change_px": est_area - prior_area,
        "true_area_fractional_px": pair.new_mask_area_px,
        "estimated_area_fractional_px": est_soft,
        "true_change_fractional_px": pair.new_mask_area_px - prior_area,
        "estimated_change_fractional_px": est_soft - prior_area,
        "cpu_seconds": cpu_seconds,
    }


def _relative_change_errors(rows: list[dict[str, float]], unit: str) -> list[float]:
    """``|estimated - true| / |true|`` area change per row with a non-zero true change;
    ``unit`` is ``px`` (re-binarised masks) or ``fractional_px`` (bilinear warps)."""
    return [
        abs(r[f"estimated_change_{unit}"] - r[f"true_change_{unit}"])
        / abs(r[f"true_change_{unit}"])
        for r in rows
        if r[f"true_change_{unit}"] != 0
    ]


def _dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    total = float(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / total if total > 0 else 1.0


def evaluate_real_pairs(
    images: npt.NDArray[np.float32],
    masks: npt.NDArray[np.bool_],
    patients: npt.NDArray[np.int64],
    **register: Any,
) -> list[dict[str, float]]:
    """One row per patch: registered to its most correlated same-patient patch."""
    rows = []
    for i in range(images.shape[0]):
        same = np.flatnonzero((patients == patients[i]) & (np.arange(images.shape[0]) != i))
        if same.size == 0:
            continue
        j = int(same[np.argmax([ncc(images[i], images[k]) for k in same])])
        started = time.process_time()
        result = register_pair(images[i], images[j], **register)
        cpu_seconds = time.process_time() - started
        warped_mask = result.warp_mask(masks[j])
        rows.append(
            {
                "new": float(i),
                "prior": float(j),
                "ncc_before": result.ncc_before,
                "ncc_after": result.ncc_after,
                "folding_fraction": result.folding_fraction,
                "min_jacobian": result.min_jacobian,
                "lesion_dice_before": _dice(masks[j], masks[i]),
                "lesion_dice_after": _dice(warped_mask, masks[i]),
                "attempts": float(result.attempts),
                "cpu_seconds": cpu_seconds,
            }
        )
    return rows


def register_settings(register: dict[str, Any]) -> dict[str, Any]:
    """Every keyword setting of :func:`register_pair` in effect (defaults included)."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(register_pair).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    return defaults | register


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return float(np.mean([row[key] for row in rows])) if rows else float("nan")


def summarise_registration(
    patches: Path,
    *,
    seed: int,
    split: Literal["test", "validation", "train"] = "test",
    deformations_per_patch: int = 1,
    **register: Any,
) -> dict[str, Any]:
    """Both evaluations on one split's patients, with per-pair rows and summaries.

    Args:
        patches: The MSD patch file.
        seed: Seed of the known deformations.
        split: ``"test"`` (reported figures), or ``"validation"`` or ``"train"`` (choosing
            settings; the registration is optimised per pair and learns nothing, so the
            training patients are as unseen by it as the validation patients).
        deformations_per_patch: Known deformations drawn per patch with lesion.
        **register: Keyword arguments of :func:`register_pair` (``iterations``, ...).
    """
    from models.ct_denoise.data import load_patches, patient_split
    from models.imaging.data import patient_ids

    torch.set_num_threads(1)
    images, masks = load_patches(patches)
    patients = patient_ids(images.shape[0])
    keep = np.isin(patients, patient_split()[split])
    imgs, msks, pats = images[keep, 0], masks[keep, 0], patients[keep]
    synthetic = evaluate_synthetic(
        imgs, msks, seed=seed, deformations_per_patch=deformations_per_patch, **register
    )
    real = evaluate_real_pairs(imgs, msks, pats, **register)
    relative = _relative_change_errors(synthetic, "fractional_px")
    relative_binary = _relative_change_errors(synthetic, "px")
    area_error = [
        abs(r["estimated_area_px"] - r["true_area_px"]) / r["true_area_px"]
        for r in synthetic
        if r["true_area_px"] > 0
    ]
    return {
        "synthetic_label": "SYNTHETIC: real patches warped by known smooth deformations",
        "split": split,
        "patients": [int(p) for p in patient_split()[split]],
        "register": register_settings(register),
        "seed": seed,
        "deformations_per_patch": deformations_per_patch,
        "synthetic_summary": {
            "pairs": len(synthetic),
            "epe_mm_mean": _mean(synthetic, "epe_mm"),
            "epe_lesion_mm_mean": _mean(synthetic, "epe_lesion_mm"),
            "true_displacement_mm_mean": _mean(synthetic, "true_displacement_mm"),
            "folding_pixels_total": float(
                sum(r["folding_fraction"] for r in synthetic) * imgs.shape[1] * imgs.shape[2]
            ),
            "min_jacobian": min((r["min_jacobian"] for r in synthetic), default=float("nan")),
            "ncc_before_mean": _mean(synthetic, "ncc_before"),
            "ncc_after_mean": _mean(synthetic, "ncc_after"),
            "true_change_px_mean": _mean(synthetic, "true_change_px"),
            "estimated_change_px_mean": _mean(synthetic, "estimated_change_px"),
            "change_measure": "fractional lesion areas (bilinear warp, not thresholded)",
            "change_relative_error_median": float(np.median(relative)) if relative else None,
            "change_within_10pct_fraction": float(np.mean(np.array(relative) <= 0.10))
            if relative
            else None,
            "change_within_10pct_pairs": int(np.sum(np.array(relative) <= 0.10)),
            "change_pairs": len(relative),
            "binary_change_relative_error_median": float(np.median(relative_binary))
            if relative_binary
            else None,
            "binary_change_within_10pct_fraction": float(np.mean(np.array(relative_binary) <= 0.10))
            if relative_binary
            else None,
            "total_change_relative_error": abs(
                sum(r["estimated_change_px"] for r in synthetic)
                - sum(r["true_change_px"] for r in synthetic)
            )
            / max(abs(sum(r["true_change_px"] for r in synthetic)), 1e-9),
            "area_relative_error_median": float(np.median(area_error)) if area_error else None,
            "pairs_retried": int(sum(r["attempts"] > 1 for r in synthetic)),
            "cpu_seconds_mean": _mean(synthetic, "cpu_seconds"),
        },
        "real_summary": {
            "pairs": len(real),
            "ncc_before_mean": _mean(real, "ncc_before"),
            "ncc_after_mean": _mean(real, "ncc_after"),
            "lesion_dice_before_mean": _mean(real, "lesion_dice_before"),
            "lesion_dice_after_mean": _mean(real, "lesion_dice_after"),
            "folding_pixels_total": float(
                sum(r["folding_fraction"] for r in real) * imgs.shape[1] * imgs.shape[2]
            ),
            "min_jacobian": min((r["min_jacobian"] for r in real), default=float("nan")),
            "pairs_retried": int(sum(r["attempts"] > 1 for r in real)),
            "cpu_seconds_mean": _mean(real, "cpu_seconds"),
        },
        "synthetic": synthetic,
        "real": real,
    }
