"""Baselines and calibration: logistic regression, Platt scaling, NEWS2 worst-in-window.

* :func:`fit_logistic` fits an L2-regularised logistic regression by full-batch L-BFGS in
  float64 (deterministic on the CPU); :func:`fit_platt` is the same fit on one feature,
  the model's logit, with the slope kept positive so calibration stays monotone.
* :func:`summary_statistics` turns feature windows into per-parameter summaries for the
  "simple model" baseline.
* :func:`news2_worst` is the highest NEWS2 over the hours of a window, each hour scored
  from the latest observation of each parameter no older than :data:`NEWS2_MAX_AGE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Final

import numpy as np
import numpy.typing as npt
import torch

from streams.core.features import SERIES_CODES
from streams.core.news2 import Observation, news2_from_observations
from streams.datasets.physionet2012 import Stay

__all__ = [
    "NEWS2_MAX_AGE",
    "LogisticModel",
    "fit_logistic",
    "fit_platt",
    "news2_hourly",
    "summary_statistics",
]

NEWS2_MAX_AGE: Final[timedelta] = timedelta(hours=12)
"""Oldest observation that still counts for an hourly NEWS2 of the baseline."""

_NEWS2_CODES: Final[tuple[str, ...]] = (
    "RespRate",
    "SaO2",
    "FiO2",
    "MechVent",
    "SysABP",
    "NISysABP",
    "HR",
    "GCS",
    "Temp",
)


@dataclass(frozen=True, slots=True)
class LogisticModel:
    """A fitted logistic regression on standardised features.

    Attributes:
        mean: ``[D]`` feature means (training data).
        std: ``[D]`` feature standard deviations (1 where constant).
        weight: ``[D]`` coefficients on standardised features.
        bias: Intercept.
    """

    mean: npt.NDArray[np.float64]
    std: npt.NDArray[np.float64]
    weight: npt.NDArray[np.float64]
    bias: float

    def predict(self, features: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Probabilities ``[N]`` for features ``[N, D]``."""
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.std
        out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-(z @ self.weight + self.bias)))
        return out


def _lbfgs_logistic(
    x: torch.Tensor, y: torch.Tensor, l2: float, positive_first: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def weights() -> torch.Tensor:
        # Softplus keeps a Platt slope positive, so calibration is monotone increasing.
        return torch.nn.functional.softplus(w) if positive_first else w

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = x @ weights() + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        loss = loss + l2 * (weights() ** 2).sum() / 2.0
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return weights().detach(), b.detach()


def fit_logistic(
    features: npt.ArrayLike, labels: npt.ArrayLike, *, l2: float = 1e-3
) -> LogisticModel:
    """Fits an L2-regularised logistic regression (features standardised first).

    Args:
        features: ``[N, D]`` training features.
        labels: ``[N]`` 0/1 labels.
        l2: Penalty on the squared weights, per sample.
    """
    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 1e-9, std, 1.0)
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(np.asarray(labels, dtype=np.float64))
    w, b = _lbfgs_logistic(xt, yt, l2, positive_first=False)
    return LogisticModel(mean=mean, std=std, weight=w.numpy(), bias=float(b.item()))


def fit_platt(logits: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, float]:
    """Platt scaling: ``(a, c)`` with ``a > 0`` so that ``sigmoid(a·logit + c)`` fits."""
    x = torch.from_numpy(np.asarray(logits, dtype=np.float64).reshape(-1, 1))
    y = torch.from_numpy(np.asarray(labels, dtype=np.float64))
    w, b = _lbfgs_logistic(x, y, 0.0, positive_first=True)
    return float(w.item()), float(b.item())


def summary_statistics(
    values: npt.NDArray[np.float32],
    mask: npt.NDArray[np.float32],
    statics: npt.NDArray[np.float32],
    static_mask: npt.NDArray[np.float32],
    log_scaled: npt.NDArray[np.bool_],
) -> npt.NDArray[np.float64]:
    """Per-parameter summaries of feature windows for the logistic baseline.

    Args:
        values: ``[N, T, P]`` raw values.
        mask: ``[N, T, P]`` observation masks.
        statics: ``[N, S]`` statics.
        static_mask: ``[N, S]`` static masks.
        log_scaled: ``[P]`` parameters summarised as ``log1p``.

    Returns:
        ``[N, 6P + 2S]``: last, mean, min, max (0 where never observed), observed-any
        and ``log1p(count)`` per parameter, then statics and their mask.
    """
    v = np.where(log_scaled, np.log1p(np.maximum(values, 0.0)), values).astype(np.float64)
    m = mask.astype(bool)
    count = m.sum(axis=1)
    seen = count > 0
    mean = np.where(seen, (v * m).sum(axis=1) / np.maximum(count, 1), 0.0)
    vmin = np.where(seen, np.where(m, v, np.inf).min(axis=1), 0.0)
    vmax = np.where(seen, np.where(m, v, -np.inf).max(axis=1), 0.0)
    steps = values.shape[1]
    last_index = steps - 1 - np.argmax(m[:, ::-1, :], axis=1)
    last = np.where(seen, np.take_along_axis(v, last_index[:, None, :], axis=1)[:, 0], 0.0)
    return np.concatenate(
        [last, mean, vmin, vmax, seen.astype(np.float64), np.log1p(count), statics, static_mask],
        axis=1,
    )


def news2_hourly(stay: Stay, hours: int) -> npt.NDArray[np.int64]:
    """NEWS2 totals at admission + 0, 1, …, ``hours`` h (``[hours + 1]``).

    Each hour uses the latest observation of each NEWS2 parameter at or before it and
    no older than :data:`NEWS2_MAX_AGE`; missing parameters score nothing.
    """
    admit = stay.arrays().admit_time
    series: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]] = {}
    for code in _NEWS2_CODES:
        sel = stay.code_index == SERIES_CODES.index(code)
        order = np.argsort(stay.minutes[sel], kind="stable")
        series[code] = (stay.minutes[sel][order], stay.values[sel][order])
    totals = np.zeros(hours + 1, dtype=np.int64)
    for hour in range(hours + 1):
        at = admit + timedelta(hours=hour)
        latest: dict[str, Observation | None] = {}
        for code, (minutes, vals) in series.items():
            i = int(np.searchsorted(minutes, hour * 60, side="right")) - 1
            latest[code] = (
                None if i < 0 else (float(vals[i]), admit + timedelta(minutes=int(minutes[i])))
            )
        totals[hour] = news2_from_observations(latest, at=at, max_age=NEWS2_MAX_AGE).total
    return totals
