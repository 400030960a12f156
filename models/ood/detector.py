"""Out-of-distribution score: class-conditional Gaussians with a tied covariance.

Mahalanobis detector (Lee et al., NeurIPS 2018) on the deterioration ensemble's fused
representation. Shapes: ``N`` windows, ``D`` feature width, ``C`` classes.

* Features (:func:`ensemble_features`): the fused vectors ``[N,F]`` of every member,
  concatenated to ``[N, members·F]``. Not averaged: independently trained networks do
  not share a coordinate system (any permutation of a member's hidden units is the same
  network), so a mean of their vectors is not a representation; concatenation keeps each
  member's geometry, and the tied covariance also models how members co-vary.
* Fit (:func:`fit_gaussians`): per class ``c`` the mean ``mu_c``; one pooled within-class
  covariance ``Sigma`` (plus a small ridge so it is invertible). Stored as a whitening
  matrix ``W = L^-1`` (``Sigma = L L^T``), so ``d_c(x) = ||W x - W mu_c||``.
* Score (:func:`min_distance`): ``min_c d_c(x)``, the Mahalanobis distance (not squared)
  to the nearest class.
* Threshold (:func:`percentile_threshold`): a percentile of the distances of
  in-distribution (validation) windows; a window is out of distribution when its distance
  is strictly above it.
* Serving (:class:`OODDetector`): this representation channel and the input-space
  channel of :mod:`models.ood.inputs` as one TorchScript module with the deterioration
  model's eight inputs; outputs in :data:`OUTPUT_NAMES` (a window is flagged when either
  channel is above its threshold).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from models.common.torchscript import normal_float32
from models.deterioration.network import DeteriorationEnsemble, NetInputs

__all__ = [
    "OUTPUT_NAMES",
    "GaussianFit",
    "OODDetector",
    "ensemble_features",
    "fit_gaussians",
    "fit_summary",
    "min_distance",
    "percentile_threshold",
]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class GaussianFit:
    """Class means and a tied covariance, float64.

    Attributes:
        classes: ``[C]`` class labels in the order of ``means``.
        means: ``[C,D]`` per-class means.
        covariance: ``[D,D]`` pooled within-class covariance (ridge included).
        whitening: ``[D,D]`` ``W`` with ``W Sigma W^T = I`` (inverse Cholesky factor).
        ridge: The value added to the covariance diagonal.
        counts: ``[C]`` samples per class.
    """

    classes: tuple[int, ...]
    means: FloatArray
    covariance: FloatArray
    whitening: FloatArray
    ridge: float
    counts: tuple[int, ...]


def fit_gaussians(
    features: npt.ArrayLike, labels: npt.ArrayLike, *, ridge_fraction: float = 1e-4
) -> GaussianFit:
    """Fits class means and one shared covariance (maximum likelihood, plus a ridge).

    Args:
        features: ``[N,D]`` feature vectors.
        labels: ``[N]`` integer class labels (at least one sample per class present).
        ridge_fraction: Ridge added to the diagonal, as a fraction of the mean variance.

    Returns:
        The fit.

    Raises:
        ValueError: Shapes disagree, or fewer than two samples.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] < 2:
        raise ValueError(f"need [N,D] features and [N] labels, got {x.shape} and {y.shape}")
    classes = tuple(int(c) for c in np.unique(y))
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(np.array(classes), y)]
    covariance = centred.T @ centred / x.shape[0]
    ridge = ridge_fraction * float(np.trace(covariance)) / x.shape[1] + 1e-12
    covariance = covariance + ridge * np.eye(x.shape[1])
    whitening = np.linalg.inv(np.linalg.cholesky(covariance))
    counts = tuple(int((y == c).sum()) for c in classes)
    return GaussianFit(classes, means, covariance, whitening, ridge, counts)


def min_distance(fit: GaussianFit, features: npt.ArrayLike) -> FloatArray:
    """``[N]`` Mahalanobis distance of each row of ``features [N,D]`` to the nearest class."""
    x = np.asarray(features, dtype=np.float64)
    white = x @ fit.whitening.T  # [N,D]
    centres = fit.means @ fit.whitening.T  # [C,D]
    sq = ((white[:, None, :] - centres[None, :, :]) ** 2).sum(-1)  # [N,C]
    return np.asarray(np.sqrt(sq.min(axis=1)), dtype=np.float64)


def percentile_threshold(distances: npt.ArrayLike, percentile: float) -> float:
    """The ``percentile`` (0-100) of in-distribution ``distances`` (linear interpolation).

    With threshold ``t``, a window is flagged when ``distance > t``, so about
    ``100 - percentile`` % of in-distribution windows are flagged.
    """
    if not 0.0 < percentile < 100.0:
        raise ValueError(f"percentile must be in (0, 100), got {percentile}")
    d = np.asarray(distances, dtype=np.float64)
    if d.size == 0 or not np.isfinite(d).all():
        raise ValueError("need finite distances")
    return float(np.percentile(d, percentile))


def ensemble_features(net: DeteriorationEnsemble, inputs: NetInputs) -> Tensor:
    """``[B, members·F]`` fused vectors of every member, concatenated (eval mode)."""
    parts: list[Tensor] = []
    for member in net.members:
        fused, _, _ = member.encode(inputs)  # type: ignore[operator]
        parts.append(fused)
    return torch.cat(parts, dim=1)


OUTPUT_NAMES: tuple[str, ...] = (
    "distance",
    "ood",
    "representation_distance",
    "input_distance",
    "input_threshold",
    "representation_ood",
    "input_ood",
)
"""Names of :class:`OODDetector`'s outputs, in order."""


class OODDetector(nn.Module):
    """Two channels on the deterioration model's inputs; a window is flagged when either
    exceeds its threshold.

    * Representation: the ensemble's concatenated fused vectors against ``fit`` (one
      threshold).
    * Input: :class:`models.ood.inputs.InputChannel` (window statistics, one threshold per
      bucket of hours observed).

    Args:
        net: The trained ensemble (its weights are kept; it is not modified).
        fit: The Gaussians, fitted on ``ensemble_features`` of ``net``.
        threshold: Representation distance above which a window is out of distribution.
        input_channel: The fitted input channel.
    """

    if TYPE_CHECKING:  # buffers; TorchScript must not see these annotations
        whitening: Tensor
        white_means: Tensor
        threshold: Tensor

    def __init__(
        self,
        net: DeteriorationEnsemble,
        fit: GaussianFit,
        threshold: float,
        input_channel: nn.Module,
    ) -> None:
        super().__init__()
        self.net = net
        self.input_channel = input_channel
        self.register_buffer("whitening", normal_float32(fit.whitening))
        self.register_buffer("white_means", normal_float32(fit.means @ fit.whitening.T))
        self.register_buffer("threshold", torch.tensor([threshold], dtype=torch.float32))

    def forward(
        self,
        values: Tensor,
        mask: Tensor,
        delta_hours: Tensor,
        statics: Tensor,
        static_mask: Tensor,
        image_embeddings: Tensor,
        image_age_hours: Tensor,
        image_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Scores a batch: the fields of :class:`~models.deterioration.network.NetInputs`
        one by one, as Triton passes them.

        Returns:
            ``[B,1]`` each, in :data:`OUTPUT_NAMES` order: ``distance`` (the larger of
            the two channels' distances, each divided by its threshold; float32),
            ``ood`` (bool, either channel above its threshold), the representation
            distance, the input distance, the input threshold of the window's hour
            bucket, and each channel's own flag (bool).
        """
        inputs = NetInputs(
            values,
            mask,
            delta_hours,
            statics,
            static_mask,
            image_embeddings,
            image_age_hours,
            image_mask,
        )
        parts: list[Tensor] = []
        for member in self.net.members:
            # TorchScript needs the ModuleList iterated directly; mypy sees plain Modules.
            fused, _, _ = member.encode(inputs)  # type: ignore[operator]
            parts.append(fused)
        white = torch.cat(parts, dim=1) @ self.whitening.t()  # [B,D]
        diff = white.unsqueeze(1) - self.white_means.unsqueeze(0)  # [B,C,D]
        rep = torch.sqrt((diff * diff).sum(-1).min(dim=1).values).unsqueeze(1)
        inp, inp_threshold = self.input_channel(inputs)
        inp, inp_threshold = inp.unsqueeze(1), inp_threshold.unsqueeze(1)
        rep_ood, inp_ood = rep > self.threshold, inp > inp_threshold
        distance = torch.maximum(rep / self.threshold, inp / inp_threshold)
        return distance, rep_ood | inp_ood, rep, inp, inp_threshold, rep_ood, inp_ood


def fit_summary(fit: GaussianFit) -> dict[str, Any]:
    """JSON-ready description of a fit (no matrices)."""
    return {
        "classes": list(fit.classes),
        "counts": list(fit.counts),
        "dim": int(fit.means.shape[1]),
        "ridge": fit.ridge,
        "covariance_condition_number": float(np.linalg.cond(fit.covariance)),
    }
