"""ROC and precision-recall curve points for plotting (pure numpy).

The areas come from :mod:`streams.core.risk_metrics`; these give the step points behind them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["pr_points", "roc_points"]

Points = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]


def _counts(labels: npt.ArrayLike, scores: npt.ArrayLike) -> Points:
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1] if s.size else np.zeros(0, int)
    return np.cumsum(y)[last], np.cumsum(1.0 - y)[last]


def roc_points(labels: npt.ArrayLike, scores: npt.ArrayLike) -> Points:
    """``(false positive rate, true positive rate)`` from (0, 0), one point per threshold."""
    tp, fp = _counts(labels, scores)
    n_pos = tp[-1] if tp.size else 0.0
    n_neg = fp[-1] if fp.size else 0.0
    tpr = np.r_[0.0, tp / n_pos] if n_pos else np.zeros(1)
    fpr = np.r_[0.0, fp / n_neg] if n_neg else np.zeros(1)
    return (fpr, tpr) if fpr.size == tpr.size else (np.zeros(1), np.zeros(1))


def pr_points(labels: npt.ArrayLike, scores: npt.ArrayLike) -> Points:
    """``(recall, precision)``, one point per threshold, highest threshold first."""
    tp, fp = _counts(labels, scores)
    n_pos = tp[-1] if tp.size else 0.0
    if not n_pos:
        return np.zeros(0), np.zeros(0)
    return tp / n_pos, tp / (tp + fp)
