"""Segmentation metrics of the imaging model (pure numpy).

* Dice and IoU pooled over every pixel of a set (one number per set, so patches with
  small lesions weigh by their pixels), and the mean Dice over patches that hold lesion.
* Lesion-level recall: each 8-connected component of the reference mask is one lesion;
  it is found when a predicted component overlaps it, that is when at least one of its
  pixels is predicted. Predicted components that touch no lesion are false positives.
* Lesions of a single pixel are at the limit of a 2 mm grid; the recall is also given
  for lesions of at least :data:`LARGE_LESION_PIXELS` pixels (``large_*``).
* A predicted lesion is a component at the threshold whose highest probability reaches
  a peak threshold (:func:`lesion_masks`, hysteresis; 0 keeps every component).
* :func:`choose_threshold`: the operating point, chosen on validation patients: the
  middle of the thresholds whose lesion recall reaches a target (or the best recall
  reachable) and whose false-positive components per patch stay within a budget (or, when
  none does, the middle of those reaching the recall), so that it sits inside a flat
  region of the curves rather than on the edge of one.
* :func:`fit_platt` and :func:`threshold_for_sensitivity`: calibration and the
  operating point of the abnormality classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from streams.core.imaging_ops import label_components, lesion_mask

__all__ = [
    "LARGE_LESION_PIXELS",
    "SegmentationScores",
    "choose_threshold",
    "fit_platt",
    "lesion_counts",
    "lesion_masks",
    "segmentation_scores",
    "sensitivity_specificity",
    "threshold_for_sensitivity",
]

LARGE_LESION_PIXELS: Final[int] = 2
"""Lesions of at least this many pixels are counted in the ``large_*`` recall."""


@dataclass(frozen=True, slots=True)
class SegmentationScores:
    """Scores of a set of ``[N,H,W]`` predicted and reference masks at one threshold.

    Attributes:
        threshold: Probability threshold.
        peak_threshold: Components whose highest probability is below it were dropped.
        dice: Pooled Dice ``2|P∩R| / (|P| + |R|)``.
        iou: Pooled IoU ``|P∩R| / |P∪R|``.
        mean_patch_dice: Mean Dice over patches whose reference holds lesion.
        lesions: Reference lesions (components).
        lesions_found: Lesions overlapped by a prediction.
        lesion_recall: ``lesions_found / lesions``.
        false_positive_components: Predicted components touching no lesion.
        false_positives_per_patch: Their mean per patch.
        patches: ``N``.
        large_lesions: Lesions of at least :data:`LARGE_LESION_PIXELS` pixels.
        large_lesions_found: Those overlapped by a prediction.
        large_lesion_recall: ``large_lesions_found / large_lesions``.
    """

    threshold: float
    peak_threshold: float
    dice: float
    iou: float
    mean_patch_dice: float
    lesions: int
    lesions_found: int
    lesion_recall: float
    false_positive_components: int
    false_positives_per_patch: float
    patches: int
    large_lesions: int
    large_lesions_found: int
    large_lesion_recall: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, rounded to 4 decimals."""
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def lesion_counts(
    predicted: npt.ArrayLike, reference: npt.ArrayLike, min_pixels: int = 1
) -> tuple[int, int, int]:
    """``(lesions, lesions_found, false_positive_components)`` of one ``[H,W]`` pair.

    Only reference lesions of at least ``min_pixels`` pixels are counted; a predicted
    component touching any reference lesion is never a false positive.
    """
    pred = np.asarray(predicted).astype(bool)
    ref_labels, n_ref = label_components(np.asarray(reference).astype(bool))
    sizes = np.bincount(ref_labels.ravel(), minlength=n_ref + 1)
    counted = np.flatnonzero(sizes >= min_pixels)
    counted = counted[counted > 0]
    hit = np.unique(ref_labels[pred & (ref_labels > 0)])
    found = int(np.isin(hit, counted).sum())
    pred_labels, n_pred = label_components(pred)
    touching = int(np.unique(pred_labels[pred & (ref_labels > 0)]).size)
    return int(counted.size), found, n_pred - touching


def lesion_masks(
    probability: npt.ArrayLike, threshold: float, peak_threshold: float = 0.0
) -> npt.NDArray[np.bool_]:
    """``[N,H,W]`` lesion masks: :func:`streams.core.imaging_ops.lesion_mask` per patch."""
    prob = np.asarray(probability, dtype=np.float32)
    if peak_threshold <= threshold:
        return prob >= threshold
    return np.stack([lesion_mask(p, threshold, peak_threshold) for p in prob])


def segmentation_scores(
    probability: npt.ArrayLike,
    reference: npt.ArrayLike,
    threshold: float,
    peak_threshold: float = 0.0,
) -> SegmentationScores:
    """Scores of ``[N,H,W]`` probabilities against ``[N,H,W]`` binary references.

    The predicted lesions are the components at ``threshold`` whose highest probability
    reaches ``peak_threshold`` (:func:`lesion_masks`; 0 keeps every component).
    """
    prob = np.asarray(probability, dtype=np.float32)
    ref = np.asarray(reference).astype(bool)
    if prob.shape != ref.shape or prob.ndim != 3:
        raise ValueError(f"shapes differ or are not [N,H,W]: {prob.shape} vs {ref.shape}")
    pred = lesion_masks(prob, threshold, peak_threshold)
    inter = float((pred & ref).sum())
    total = float(pred.sum() + ref.sum())
    union = float((pred | ref).sum())
    patch_dice = [
        2.0 * float((p & r).sum()) / float(p.sum() + r.sum())
        for p, r in zip(pred, ref, strict=True)
        if r.any()
    ]
    lesions = found = false_pos = large = large_found = 0
    for p, r in zip(pred, ref, strict=True):
        n, f, fp = lesion_counts(p, r)
        lesions, found, false_pos = lesions + n, found + f, false_pos + fp
        n, f, _ = lesion_counts(p, r, LARGE_LESION_PIXELS)
        large, large_found = large + n, large_found + f
    n_patches = int(prob.shape[0])
    return SegmentationScores(
        threshold=float(threshold),
        peak_threshold=float(peak_threshold),
        dice=2.0 * inter / total if total > 0 else 1.0,
        iou=inter / union if union > 0 else 1.0,
        mean_patch_dice=float(np.mean(patch_dice)) if patch_dice else float("nan"),
        lesions=lesions,
        lesions_found=found,
        lesion_recall=found / lesions if lesions else float("nan"),
        false_positive_components=false_pos,
        false_positives_per_patch=false_pos / n_patches if n_patches else float("nan"),
        patches=n_patches,
        large_lesions=large,
        large_lesions_found=large_found,
        large_lesion_recall=large_found / large if large else float("nan"),
    )


def choose_threshold(
    probability: npt.ArrayLike,
    reference: npt.ArrayLike,
    target_recall: float,
    candidates: Sequence[float] | None = None,
    *,
    max_false_positives_per_patch: float = 0.15,
) -> float:
    """The operating point: the middle of the feasible thresholds.

    Lesion recall falls as the threshold rises (false positives mostly fall). The recall
    goal is ``target_recall``, or the best recall any candidate reaches when none reaches
    the target (on two validation patients, 0.95 means every lesion, and one faint lesion
    must not drag the threshold to the bottom of the grid). ``high`` is the highest
    candidate reaching the goal, ``low`` the lowest whose false-positive components per
    patch are within ``max_false_positives_per_patch``. When ``low <= high`` the candidate
    nearest the middle of ``[low, high]`` is returned; when no candidate meets both, the
    candidate nearest the middle of all candidates reaching the recall goal. Either way the
    threshold sits inside the flat part of the curves, not on the edge of one.

    Args:
        probability: ``[N,H,W]`` probabilities (validation patients).
        reference: ``[N,H,W]`` binary references.
        target_recall: Lesion recall to reach, in ``(0, 1]``.
        max_false_positives_per_patch: Budget of false-positive components per patch.
        candidates: Thresholds tried; by default 0.01, 0.02, ..., 0.95.

    Returns:
        That threshold; the lowest candidate when no candidate finds any lesion.
    """
    grid = sorted(candidates if candidates is not None else np.round(np.arange(1, 96) / 100, 2))
    prob = np.asarray(probability, dtype=np.float32)
    ref = np.asarray(reference).astype(bool)
    recalls: list[float] = []
    fp_ok: list[bool] = []
    for threshold in grid:
        lesions = found = false_pos = 0
        for p, r in zip(prob >= threshold, ref, strict=True):
            n, f, fp = lesion_counts(p, r)
            lesions, found, false_pos = lesions + n, found + f, false_pos + fp
        recalls.append(found / lesions if lesions else 1.0)
        fp_ok.append(false_pos / max(prob.shape[0], 1) <= max_false_positives_per_patch)
    goal = min(target_recall, max(recalls))
    if goal <= 0.0:
        return float(grid[0])
    reaching = [i for i, recall in enumerate(recalls) if recall >= goal - 1e-12]
    high = max(reaching)
    within = [i for i, ok in enumerate(fp_ok) if ok]
    low = min(within) if within and min(within) <= high else min(reaching)
    middle = 0.5 * (float(grid[low]) + float(grid[high]))
    best = min(range(low, high + 1), key=lambda i: (abs(float(grid[i]) - middle), -i))
    return float(grid[best])


def fit_platt(
    logits: npt.ArrayLike, labels: npt.ArrayLike, ridge: float = 1e-3, iterations: int = 100
) -> tuple[float, float]:
    """Platt scaling: ``(a, c)`` maximising the likelihood of ``sigmoid(a z + c)``.

    Damped Newton's method (step halved until the loss does not rise) on the mean
    log-loss with a small ridge on ``a`` and ``c`` (deterministic, pure numpy).

    Raises:
        ValueError: Empty input, mismatched shapes or a single class.
    """
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if z.size == 0 or z.shape != y.shape:
        raise ValueError("logits and labels must be non-empty and of one length")
    if y.min() == y.max():
        raise ValueError("Platt scaling needs both classes")
    design = np.stack([z, np.ones_like(z)], axis=1)

    def loss(t: npt.NDArray[np.float64]) -> float:
        margin = design @ t
        # log(1 + e^m) - y m, computed without overflow.
        value = np.mean(np.logaddexp(0.0, margin) - y * margin)
        return float(value + 0.5 * ridge * float(t @ t))

    theta = np.array([1.0, 0.0])
    current = loss(theta)
    for _ in range(iterations):
        p = 0.5 * (1.0 + np.tanh(0.5 * (design @ theta)))  # sigmoid without overflow
        gradient = design.T @ (p - y) / z.size + ridge * theta
        hessian = (design.T * (p * (1 - p))) @ design / z.size + ridge * np.eye(2)
        step = np.linalg.solve(hessian + 1e-12 * np.eye(2), gradient)
        scale = 1.0
        while scale > 1e-8 and loss(theta - scale * step) > current:
            scale *= 0.5  # damped Newton: never increase the loss (near-separable data)
        theta = theta - scale * step
        previous, current = current, loss(theta)
        if abs(previous - current) < 1e-12 or np.abs(scale * step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def threshold_for_sensitivity(
    probability: npt.ArrayLike, labels: npt.ArrayLike, target_sensitivity: float
) -> float:
    """The highest threshold (one of the probabilities) whose sensitivity reaches the target.

    Raises:
        ValueError: No positive label.
    """
    prob = np.asarray(probability, dtype=np.float64).ravel()
    positive = np.asarray(labels).ravel() > 0.5
    if not positive.any():
        raise ValueError("no positive label")
    scores = np.sort(prob[positive])[::-1]
    needed = int(np.ceil(target_sensitivity * scores.size - 1e-9))
    return float(scores[max(needed, 1) - 1])


def sensitivity_specificity(
    probability: npt.ArrayLike, labels: npt.ArrayLike, threshold: float
) -> tuple[float, float]:
    """``(sensitivity, specificity)`` of ``probability >= threshold``."""
    predicted = np.asarray(probability).ravel() >= threshold
    positive = np.asarray(labels).ravel() > 0.5
    sensitivity = float(predicted[positive].mean()) if positive.any() else float("nan")
    specificity = float((~predicted[~positive]).mean()) if (~positive).any() else float("nan")
    return sensitivity, specificity
