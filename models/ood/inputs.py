"""The OOD detector's input-space channel: window statistics scored per hour bucket.

Shapes: ``B`` windows, ``T`` hourly bins, ``P`` series parameters, ``S`` statics, ``K``
hour buckets, ``C`` classes, ``D`` feature width.

* Features (:func:`input_features`, TorchScript-able, the same code in fitting and
  serving): :func:`models.deterioration.network.window_statistics` (last, mean, min, max,
  observed-any,
  ``log1p(count)`` per parameter, statics and their mask), the hours since each parameter
  was last observed (``delta_hours`` at the last bin), and ``log1p`` of the longest run of
  identical consecutive readings per parameter (a stuck sensor repeats one value):
  ``D = 8P + 2S``.
* Hours observed (:func:`hours_observed`): bins from the window's first bin holding any
  observation to its last bin, inclusive (``0`` for an empty window, at most ``T``). It is
  read from the mask, so the served model needs no extra input.
* Buckets (:data:`HOUR_BUCKET_EDGES`): window ``b`` lies in bucket ``k`` when
  ``edges[k-1] < hours_observed <= edges[k]`` (``0`` hours falls in the first bucket).
* Fit (:func:`fit_buckets`): per bucket, one Gaussian (:func:`models.ood.detector.fit_gaussians`
  with a single class) on standardised features; the score is the Mahalanobis distance to
  the window's own bucket's mean, and each bucket has its own threshold (a percentile of
  in-distribution distances in that bucket).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from models.common.torchscript import normal_float32
from models.deterioration.network import NetInputs, window_statistics
from models.ood.detector import GaussianFit, fit_gaussians, min_distance, percentile_threshold

__all__ = [
    "HOUR_BUCKET_EDGES",
    "BucketFit",
    "InputChannel",
    "bucket_arrays",
    "bucket_distance",
    "bucket_index",
    "fit_buckets",
    "hours_observed",
    "input_features",
    "longest_identical_run",
]

HOUR_BUCKET_EDGES: Final[tuple[float, ...]] = (1, 2, 3, 4, 6, 9, 12, 18, 24, 36, 48)
"""Upper edges (hours observed, inclusive) of the input channel's hour buckets."""

FloatArray = npt.NDArray[np.float64]


def longest_identical_run(values: Tensor, mask: Tensor) -> Tensor:
    """``[B,P]`` longest run of identical consecutive readings of each parameter.

    Unobserved bins neither break nor extend a run (a sensor read every two hours that
    repeats itself is still stuck). ``0`` where a parameter was never observed.

    Args:
        values: ``[B,T,P]`` raw values.
        mask: ``[B,T,P]`` observation mask.
    """
    observed = mask > 0.5
    previous = torch.zeros_like(values[:, 0, :])
    has_previous = torch.zeros_like(observed[:, 0, :])
    run = torch.zeros_like(values[:, 0, :])
    best = torch.zeros_like(values[:, 0, :])
    for t in range(values.shape[1]):
        obs = observed[:, t, :]
        value = values[:, t, :]
        same = obs & has_previous & (value == previous)
        run = torch.where(obs, torch.where(same, run + 1.0, torch.ones_like(run)), run)
        best = torch.maximum(best, run)
        previous = torch.where(obs, value, previous)
        has_previous = has_previous | obs
    return best


def input_features(
    values: Tensor,
    mask: Tensor,
    delta_hours: Tensor,
    statics: Tensor,
    static_mask: Tensor,
    log_scaled: Tensor,
) -> Tensor:
    """``[B, 8P+2S]`` input-space features of a window (see the module docstring).

    Args:
        values: ``[B,T,P]`` raw values.
        mask: ``[B,T,P]`` observation mask.
        delta_hours: ``[B,T,P]`` hours since each parameter's last observation.
        statics: ``[B,S]`` raw statics.
        static_mask: ``[B,S]`` static mask.
        log_scaled: ``[P]`` 1 where a parameter is summarised as ``log1p``.
    """
    stats = window_statistics(values, mask, statics, static_mask, log_scaled)
    runs = torch.log1p(longest_identical_run(values, mask))
    return torch.cat([stats, delta_hours[:, -1, :], runs], dim=1)


def hours_observed(mask: Tensor) -> Tensor:
    """``[B]`` hourly bins from the first bin with any observation to the last, inclusive.

    Args:
        mask: ``[B,T,P]`` observation mask.
    """
    any_seen = (mask > 0.5).any(dim=2)  # [B,T]
    first = torch.argmax(any_seen.to(torch.int64), dim=1)
    steps = mask.shape[1]
    hours = (steps - first).to(mask.dtype)
    return torch.where(any_seen.any(dim=1), hours, torch.zeros_like(hours))


def bucket_index(hours: Tensor, edges: Tensor) -> Tensor:
    """``[B]`` bucket of each window: the first ``k`` with ``hours <= edges[k]`` (clamped
    to the last bucket)."""
    index = torch.bucketize(hours, edges, right=False)
    return torch.clamp(index, max=edges.shape[0] - 1)


@dataclass(frozen=True, slots=True)
class BucketFit:
    """The input channel's Gaussians and thresholds, one set per hour bucket.

    Attributes:
        edges: ``[K]`` upper edges of the buckets (hours observed).
        centre: ``[D]`` training mean used to standardise the features.
        scale: ``[D]`` training standard deviation (plus ``1e-3``) used to standardise.
        fits: ``K`` Gaussian fits on standardised features.
        thresholds: ``[K]`` distance thresholds.
        percentile: Percentile of validation distances each threshold is.
    """

    edges: tuple[float, ...]
    centre: FloatArray
    scale: FloatArray
    fits: tuple[GaussianFit, ...]
    thresholds: tuple[float, ...]
    percentile: float


def _buckets(hours: npt.ArrayLike, edges: Sequence[float]) -> npt.NDArray[np.int64]:
    index = bucket_index(
        torch.as_tensor(np.asarray(hours, dtype=np.float32)),
        torch.tensor(list(edges), dtype=torch.float32),
    )
    return np.asarray(index.numpy(), dtype=np.int64)


def _merged_edges(
    edges: Sequence[float],
    train_hours: npt.ArrayLike,
    validation_hours: npt.ArrayLike,
    min_windows: int,
) -> tuple[float, ...]:
    """``edges`` with each bucket holding fewer than ``min_windows`` training or
    validation windows merged into its later neighbour (the last into its earlier one)."""
    kept = list(edges)
    while len(kept) > 1:
        counts = [
            np.bincount(_buckets(h, kept), minlength=len(kept))
            for h in (train_hours, validation_hours)
        ]
        small = [k for k in range(len(kept)) if min(c[k] for c in counts) < min_windows]
        if not small:
            break
        k = small[0]
        del kept[k if k < len(kept) - 1 else k - 1]
    return tuple(kept)


def fit_buckets(
    train_features: npt.ArrayLike,
    train_hours: npt.ArrayLike,
    validation_features: npt.ArrayLike,
    validation_hours: npt.ArrayLike,
    *,
    edges: Sequence[float] = HOUR_BUCKET_EDGES,
    percentile: float = 99.0,
    ridge_fraction: float = 1e-2,
    min_windows: int = 1,
) -> BucketFit:
    """Per-bucket Gaussians on training windows; per-bucket thresholds on validation.

    One Gaussian per bucket (no outcome classes: an input-space density needs no labels,
    and early buckets hold few deaths). A bucket with fewer than ``min_windows``
    training or validation windows is merged into its neighbour; the edges used are in
    the result.

    Args:
        train_features: ``[N,D]`` raw :func:`input_features` of training windows.
        train_hours: ``[N]`` their :func:`hours_observed`.
        validation_features: ``[M,D]`` the same for validation windows.
        validation_hours: ``[M]`` their hours observed.
        edges: Bucket upper edges, increasing.
        percentile: Threshold percentile (0-100) of each bucket's validation distances.
        ridge_fraction: Ridge of each covariance as a fraction of its mean variance.
        min_windows: Fewest training and validation windows a bucket keeps.

    Raises:
        ValueError: Bad edges or shapes, or no windows at all.
    """
    x = np.asarray(train_features, dtype=np.float64)
    v = np.asarray(validation_features, dtype=np.float64)
    if list(edges) != sorted(set(edges)) or not edges:
        raise ValueError(f"bucket edges must increase, got {edges}")
    if x.ndim != 2 or v.ndim != 2 or x.shape[1] != v.shape[1] or min(len(x), len(v)) < 2:
        raise ValueError(f"need [N,D] and [M,D] features, got {x.shape} and {v.shape}")
    used = _merged_edges(edges, train_hours, validation_hours, max(min_windows, 2))
    centre = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-3
    xs, vs = (x - centre) / scale, (v - centre) / scale
    train_bucket, val_bucket = _buckets(train_hours, used), _buckets(validation_hours, used)
    fits: list[GaussianFit] = []
    thresholds: list[float] = []
    for k in range(len(used)):
        inside = train_bucket == k
        fit = fit_gaussians(xs[inside], np.zeros(int(inside.sum())), ridge_fraction=ridge_fraction)
        fits.append(fit)
        val_d = min_distance(fit, vs[val_bucket == k])
        thresholds.append(percentile_threshold(val_d, percentile))
    return BucketFit(used, centre, scale, tuple(fits), tuple(thresholds), percentile)


def bucket_distance(
    fit: BucketFit, features: npt.ArrayLike, hours: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """``[N]`` distance of each window to its bucket's nearest class, and ``[N]`` the
    threshold of that bucket."""
    x = (np.asarray(features, dtype=np.float64) - fit.centre) / fit.scale
    bucket = _buckets(hours, fit.edges)
    distance = np.zeros(x.shape[0])
    for k, gaussians in enumerate(fit.fits):
        inside = bucket == k
        if inside.any():
            distance[inside] = min_distance(gaussians, x[inside])
    return distance, np.asarray(fit.thresholds, dtype=np.float64)[bucket]


def bucket_arrays(fit: BucketFit) -> dict[str, FloatArray]:
    """What :class:`InputChannel` (and the OOD checkpoint) stores of a fit.

    Returns:
        ``edges [K]``, ``centre [D]``, ``scale [D]``, ``whitening [K,D,D]``,
        ``means [K,C,D]`` and ``thresholds [K]``.

    Raises:
        ValueError: The buckets do not all have the same classes.
    """
    if len({g.classes for g in fit.fits}) != 1:
        raise ValueError("every hour bucket must have the same classes")
    return {
        "edges": np.asarray(fit.edges, dtype=np.float64),
        "centre": fit.centre,
        "scale": fit.scale,
        "whitening": np.stack([g.whitening for g in fit.fits]),
        "means": np.stack([g.means for g in fit.fits]),
        "thresholds": np.asarray(fit.thresholds, dtype=np.float64),
    }


class InputChannel(nn.Module):
    """The served input channel: features, hour bucket, per-bucket distance and threshold.

    Args:
        arrays: :func:`bucket_arrays` of the fit.
        log_scaled: ``[P]`` the deterioration model's log-scaled parameter mask.
    """

    if TYPE_CHECKING:  # buffers; TorchScript must not see these annotations
        log_scaled: Tensor
        centre: Tensor
        scale: Tensor
        edges: Tensor
        whitening: Tensor
        white_means: Tensor
        thresholds: Tensor

    def __init__(self, arrays: Mapping[str, npt.ArrayLike], log_scaled: Tensor) -> None:
        super().__init__()
        whitening = np.asarray(arrays["whitening"], dtype=np.float64)  # [K,D,D]
        means = np.asarray(arrays["means"], dtype=np.float64)  # [K,C,D]
        white_means = np.einsum("kcd,ked->kce", means, whitening)

        def buffer(name: str, value: npt.ArrayLike) -> None:
            self.register_buffer(name, normal_float32(value))

        buffer("log_scaled", log_scaled.detach().cpu().numpy())
        buffer("centre", arrays["centre"])
        buffer("scale", arrays["scale"])
        buffer("edges", arrays["edges"])
        buffer("whitening", whitening)
        buffer("white_means", white_means)
        buffer("thresholds", arrays["thresholds"])

    def forward(self, inputs: NetInputs) -> tuple[Tensor, Tensor]:
        """``distance [B]`` and ``threshold [B]`` (of each window's hour bucket); the image
        fields of ``inputs`` are not used."""
        x = input_features(
            inputs.values,
            inputs.mask,
            inputs.delta_hours,
            inputs.statics,
            inputs.static_mask,
            self.log_scaled,
        )
        x = (x - self.centre) / self.scale  # [B,D]
        bucket = bucket_index(hours_observed(inputs.mask), self.edges)  # [B]
        rows = torch.arange(x.shape[0], device=x.device)
        white = torch.einsum("bd,ked->bke", x, self.whitening)[rows, bucket]  # [B,D]
        diff = white.unsqueeze(1) - self.white_means[bucket]  # [B,C,D]
        distance = torch.sqrt((diff * diff).sum(-1).min(dim=1).values)
        return distance, self.thresholds[bucket]
