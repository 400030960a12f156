"""Clinical-validity metrics with bootstrap intervals (pure numpy; stays resampled).

AUROC and AUPRC (:mod:`streams.core.risk_metrics`), calibration slope and intercept
(logistic recalibration of the outcome on ``logit(risk)``: slope 1 and intercept 0 are
perfect), and ECE (10 equal-width bins), each with a percentile bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.core.risk_metrics import auprc, auroc, expected_calibration_error

__all__ = ["METRICS", "calibration_line", "interval", "summarise"]

Array = npt.NDArray[np.float64]


def calibration_line(labels: Array, risks: Array, iterations: int = 50) -> tuple[float, float]:
    """``(slope, intercept)`` of ``logit P(y=1) = intercept + slope · logit(risk)``
    (Newton's method on the logistic likelihood)."""
    p = np.clip(np.asarray(risks, dtype=np.float64), 1e-6, 1 - 1e-6)
    x = np.log(p / (1 - p))
    y = np.asarray(labels, dtype=np.float64)
    design = np.stack([np.ones_like(x), x], 1)
    beta = np.array([0.0, 1.0])
    for _ in range(iterations):
        mu = 1 / (1 + np.exp(-np.clip(design @ beta, -30, 30)))
        w = mu * (1 - mu) + 1e-9
        hessian = design.T @ (design * w[:, None])
        step = np.linalg.solve(hessian + 1e-9 * np.eye(2), design.T @ (y - mu))
        beta = beta + step
        if np.abs(step).max() < 1e-8:
            break
    return float(beta[1]), float(beta[0])


METRICS: dict[str, Callable[[Array, Array], float]] = {
    "auroc": lambda y, r: auroc(y, r),
    "auprc": lambda y, r: auprc(y, r),
    "calibration_slope": lambda y, r: calibration_line(y, r)[0],
    "calibration_intercept": lambda y, r: calibration_line(y, r)[1],
    "ece": lambda y, r: expected_calibration_error(y, r),
}
"""Metric name → ``f(labels, risks)``."""


def interval(
    labels: Array,
    risks: Array,
    metric: Callable[[Array, Array], float],
    *,
    resamples: int,
    seed: int = 0,
    level: float = 0.95,
) -> list[float] | None:
    """Percentile bootstrap interval of ``metric`` (resamples with both classes only);
    None with no resamples or too few usable ones."""
    if resamples <= 0:
        return None
    rng = np.random.default_rng(seed)
    n = labels.size
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, n, n)
        y = labels[pick]
        if 0 < y.sum() < n:
            values.append(metric(y, risks[pick]))
    if len(values) < 0.5 * resamples:
        return None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [round(float(lo), 4), round(float(hi), 4)]


def summarise(
    labels: npt.ArrayLike, risks: npt.ArrayLike, *, resamples: int, seed: int = 0
) -> dict[str, Any]:
    """Every metric of :data:`METRICS` with its interval, plus ``n`` and ``events``.

    Metrics are None where the group holds one class only.
    """
    y = np.asarray(labels, dtype=np.float64)
    r = np.asarray(risks, dtype=np.float64)
    out: dict[str, Any] = {"n": int(y.size), "events": int(y.sum())}
    both = 0 < y.sum() < y.size
    for name, metric in METRICS.items():
        if not both:
            out[name] = None
            continue
        out[name] = {
            "estimate": round(metric(y, r), 4),
            "interval": interval(y, r, metric, resamples=resamples, seed=seed),
        }
    return out
