"""Segmentation metrics of the imaging model (pure numpy).

* Dice and IoU pooled over every pixel of a set (one number per set, so patches with
  small lesions weigh by their pixels), and the mean Dice over patches that hold lesion.
* Lesion-level recall: each 8-connected component of the reference mask is one lesion;
  it is found when a predicted component overlaps it, that is when at least one of its
  pixels is predicted. Predicted components that touch no lesion are false positives.
* :func:`choose_threshold`: the highest probability threshold whose lesion recall on a
  set reaches a target (the operating point, chosen on validation patients).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.core.imaging_ops import label_components

__all__ = ["SegmentationScores", "choose_threshold", "lesion_counts", "segmentation_scores"]


@dataclass(frozen=True, slots=True)
class SegmentationScores:
    """Scores of a set of ``[N,H,W]`` predicted and reference masks at one threshold.

    Attributes:
        threshold: Probability threshold.
        dice: Pooled Dice ``2|P∩R| / (|P| + |R|)``.
        iou: Pooled IoU ``|P∩R| / |P∪R|``.
        mean_patch_dice: Mean Dice over patches whose reference holds lesion.
        lesions: Reference lesions (components).
        lesions_found: Lesions overlapped by a prediction.
        lesion_recall: ``lesions_found / lesions``.
        false_positive_components: Predicted components touching no lesion.
        false_positives_per_patch: Their mean per patch.
        patches: ``N``.
    """

    threshold: float
    dice: float
    iou: float
    mean_patch_dice: float
    lesions: int
    lesions_found: int
    lesion_recall: float
    false_positive_components: int
    false_positives_per_patch: float
    patches: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, rounded to 4 decimals."""
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def lesion_counts(predicted: npt.ArrayLike, reference: npt.ArrayLike) -> tuple[int, int, int]:
    """``(lesions, lesions_found, false_positive_components)`` of one ``[H,W]`` pair."""
    pred = np.asarray(predicted).astype(bool)
    ref_labels, n_ref = label_components(np.asarray(reference).astype(bool))
    found = int(np.unique(ref_labels[pred & (ref_labels > 0)]).size)
    pred_labels, n_pred = label_components(pred)
    touching = int(np.unique(pred_labels[pred & (ref_labels > 0)]).size)
    return n_ref, found, n_pred - touching


def segmentation_scores(
    probability: npt.ArrayLike, reference: npt.ArrayLike, threshold: float
) -> SegmentationScores:
    """Scores of ``[N,H,W]`` probabilities against ``[N,H,W]`` binary references."""
    prob = np.asarray(probability, dtype=np.float32)
    ref = np.asarray(reference).astype(bool)
    if prob.shape != ref.shape or prob.ndim != 3:
        raise ValueError(f"shapes differ or are not [N,H,W]: {prob.shape} vs {ref.shape}")
    pred = prob >= threshold
    inter = float((pred & ref).sum())
    total = float(pred.sum() + ref.sum())
    union = float((pred | ref).sum())
    patch_dice = [
        2.0 * float((p & r).sum()) / float(p.sum() + r.sum())
        for p, r in zip(pred, ref, strict=True)
        if r.any()
    ]
    lesions = found = false_pos = 0
    for p, r in zip(pred, ref, strict=True):
        n, f, fp = lesion_counts(p, r)
        lesions, found, false_pos = lesions + n, found + f, false_pos + fp
    n_patches = int(prob.shape[0])
    return SegmentationScores(
        threshold=float(threshold),
        dice=2.0 * inter / total if total > 0 else 1.0,
        iou=inter / union if union > 0 else 1.0,
        mean_patch_dice=float(np.mean(patch_dice)) if patch_dice else float("nan"),
        lesions=lesions,
        lesions_found=found,
        lesion_recall=found / lesions if lesions else float("nan"),
        false_positive_components=false_pos,
        false_positives_per_patch=false_pos / n_patches if n_patches else float("nan"),
        patches=n_patches,
    )


def choose_threshold(
    probability: npt.ArrayLike,
    reference: npt.ArrayLike,
    target_recall: float,
    candidates: Sequence[float] | None = None,
) -> float:
    """The highest candidate threshold whose lesion recall reaches ``target_recall``.

    Args:
        probability: ``[N,H,W]`` probabilities (validation patients).
        reference: ``[N,H,W]`` binary references.
        target_recall: Lesion recall to reach, in ``(0, 1]``.
        candidates: Thresholds tried; by default 0.01, 0.02, ..., 0.95.

    Returns:
        That threshold, or the lowest candidate when none reaches the target.
    """
    grid = sorted(candidates if candidates is not None else np.round(np.arange(1, 96) / 100, 2))
    prob = np.asarray(probability, dtype=np.float32)
    ref = np.asarray(reference).astype(bool)
    for threshold in reversed(grid):
        lesions = found = 0
        for p, r in zip(prob >= threshold, ref, strict=True):
            n, f, _ = lesion_counts(p, r)
            lesions, found = lesions + n, found + f
        if lesions == 0 or found / lesions >= target_recall:
            return float(threshold)
    return float(grid[0])
