"""Discrimination and calibration metrics in numpy (no scikit-learn here).

* :func:`auroc`: area under the ROC curve by the Mann-Whitney statistic, ties counted
  half (mid-ranks).
* :func:`auprc`: average precision, ``sum_k (R_k - R_{k-1}) P_k`` over distinct score
  thresholds, descending (the step-wise area, as in scikit-learn's
  ``average_precision_score``).
* :func:`reliability_table`: observed event rate per bin of predicted risk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["ReliabilityBin", "auprc", "auroc", "expected_calibration_error", "reliability_table"]


def _check(
    labels: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError("labels and scores must have the same length")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return y, s


def _midranks(s: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # Boundaries of runs of equal scores; every member gets the run's mean rank.
    starts = np.r_[0, np.flatnonzero(sorted_s[1:] != sorted_s[:-1]) + 1]
    ends = np.r_[starts[1:], s.size]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def auroc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve, in [0, 1]; NaN if only one class is present."""
    y, s = _check(labels, scores)
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _midranks(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auprc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Average precision, in [0, 1]; NaN if there is no positive."""
    y, s = _check(labels, scores)
    n_pos = float(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y_sorted, s_sorted = y[order], s[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(1.0 - y_sorted)
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s.size - 1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    """One bin of a reliability table.

    Attributes:
        low: Lower edge of predicted risk (inclusive).
        high: Upper edge (exclusive; the last bin includes 1).
        count: Predictions in the bin.
        mean_predicted: Mean predicted risk, or NaN for an empty bin.
        observed_rate: Fraction of events, or NaN for an empty bin.
    """

    low: float
    high: float
    count: int
    mean_predicted: float
    observed_rate: float


def reliability_table(
    labels: npt.ArrayLike, risks: npt.ArrayLike, *, n_bins: int = 10
) -> list[ReliabilityBin]:
    """Equal-width bins of predicted risk with their observed event rates."""
    y, p = _check(labels, risks)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    out: list[ReliabilityBin] = []
    for b in range(n_bins):
        sel = index == b
        count = int(sel.sum())
        out.append(
            ReliabilityBin(
                low=float(edges[b]),
                high=float(edges[b + 1]),
                count=count,
                mean_predicted=float(p[sel].mean()) if count else float("nan"),
                observed_rate=float(y[sel].mean()) if count else float("nan"),
            )
        )
    return out


def expected_calibration_error(
    labels: npt.ArrayLike, risks: npt.ArrayLike, *, n_bins: int = 10
) -> float:
    """Count-weighted mean absolute gap between predicted and observed rates."""
    table = reliability_table(labels, risks, n_bins=n_bins)
    total = sum(b.count for b in table)
    return float(
        sum(b.count * abs(b.mean_predicted - b.observed_rate) for b in table if b.count) / total
    )
