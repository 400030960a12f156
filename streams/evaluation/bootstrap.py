"""AUROC and AUPRC with percentile bootstrap intervals that resample stays (pure).

Units (stays, or hourly rows for PhysioNet 2019) belong to clusters (stays); a resample
draws as many stays as there are, with replacement, and keeps all units of each drawn
stay, so rows of one stay never count as independent. The generator is seeded, so the
same inputs and seed give the same interval. A resample with one class only has no AUROC
and is skipped (its count is reported).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streams.core.risk_metrics import auprc, auroc

__all__ = ["Discrimination", "Interval", "discrimination"]


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate and its bootstrap interval.

    Attributes:
        estimate: The metric on all units (NaN if undefined).
        low: Lower percentile bound (NaN if no resample had both classes).
        high: Upper percentile bound.
        resamples: Resamples that gave a value.
    """

    estimate: float
    low: float
    high: float
    resamples: int

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready form."""
        return {
            "estimate": self.estimate,
            "ci_low": self.low,
            "ci_high": self.high,
            "resamples": self.resamples,
        }


@dataclass(frozen=True, slots=True)
class Discrimination:
    """AUROC and AUPRC of one predictor on one set of units."""

    n: int
    n_positive: int
    n_stays: int
    auroc: Interval
    auprc: Interval

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "n": self.n,
            "n_positive": self.n_positive,
            "n_stays": self.n_stays,
            "auroc": self.auroc.as_dict(),
            "auprc": self.auprc.as_dict(),
        }


def _resample_indices(
    clusters: npt.NDArray[np.int64], rng: np.random.Generator, n_resamples: int
) -> Iterator[npt.NDArray[np.int64]]:
    order = np.argsort(clusters, kind="stable")
    _, starts, counts = np.unique(clusters[order], return_index=True, return_counts=True)
    for _ in range(n_resamples):
        drawn = rng.integers(0, starts.size, size=starts.size)
        lengths = counts[drawn]
        offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
        positions = np.repeat(starts[drawn], lengths) + np.arange(lengths.sum()) - offsets
        yield order[positions]


def _interval(metric_values: list[float], estimate: float, level: float) -> Interval:
    finite = np.asarray([v for v in metric_values if np.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return Interval(estimate, float("nan"), float("nan"), 0)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return Interval(estimate, float(low), float(high), int(finite.size))


def discrimination(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    clusters: npt.ArrayLike | None = None,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Discrimination:
    """AUROC and AUPRC with bootstrap intervals.

    Args:
        labels: ``[N]`` 0/1 outcome of each unit.
        scores: ``[N]`` predictor values (higher = more likely positive).
        clusters: ``[N]`` stay index of each unit; None = every unit is its own stay.
        n_resamples: Bootstrap resamples (0 = no interval).
        seed: Seed of the resampling generator.
        level: Interval coverage, for example 0.95.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    c = (
        np.arange(y.size, dtype=np.int64)
        if clusters is None
        else np.asarray(clusters, dtype=np.int64).ravel()
    )
    if not (y.shape == s.shape == c.shape):
        raise ValueError("labels, scores and clusters must have the same length")
    roc_values: list[float] = []
    pr_values: list[float] = []
    if y.size:
        for index in _resample_indices(c, np.random.default_rng(seed), n_resamples):
            roc_values.append(auroc(y[index], s[index]))
            pr_values.append(auprc(y[index], s[index]))
    return Discrimination(
        n=int(y.size),
        n_positive=int(y.sum()),
        n_stays=int(np.unique(c).size),
        auroc=_interval(roc_values, auroc(y, s) if y.size else float("nan"), level),
        auprc=_interval(pr_values, auprc(y, s) if y.size else float("nan"), level),
    )
