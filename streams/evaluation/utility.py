"""The PhysioNet/CinC Challenge 2019 normalised utility score (pure numpy).

Written from the challenge's published definition (Reyna et al., Crit Care Med
2020;48(2):210-217, "Evaluation" section and its utility figure), not from its code.

Each hourly row ``t`` of a stay gets a utility from the binary prediction made there.
For a septic stay, onset is ``t_sepsis = first row with SepsisLabel == 1 + 6`` (the
challenge shifted its labels 6 h earlier than onset) and ``dt = t - t_sepsis`` in hours:

* predicted sepsis, ``dt <= dt_optimal``: ``max(u_fp, max_u_tp * (dt - dt_early) /
  (dt_optimal - dt_early))``: -0.05 before -12 h, 0 at -12 h, rising to 1 at -6 h;
* predicted sepsis, ``dt_optimal < dt <= dt_late``: ``max_u_tp * (dt_late - dt) /
  (dt_late - dt_optimal)``: 1 at -6 h falling to 0 at +3 h;
* predicted none, ``dt_optimal < dt <= dt_late``: ``min_u_fn * (dt - dt_optimal) /
  (dt_late - dt_optimal)``: 0 at -6 h falling to -2 at +3 h;
* predicted none before that window, and anything after ``dt_late``: 0.

A stay that never becomes septic earns ``u_fp`` per positive row and ``u_tn`` per negative
row. The total over every row of every stay is normalised as
``(U - U_inaction) / (U_best - U_inaction)``: the inaction predictions are all negative,
the best predictions are positive exactly on ``dt_early <= dt <= dt_late`` of septic stays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "SEPSIS_LABEL_LEAD_HOURS",
    "UtilityParameters",
    "normalised_utility",
    "row_utilities",
    "sepsis_onset_row",
    "stay_utility",
]

SEPSIS_LABEL_LEAD_HOURS = 6
"""SepsisLabel is 1 from 6 h before onset: onset row = first labelled row + 6."""


@dataclass(frozen=True, slots=True)
class UtilityParameters:
    """The challenge's constants (hours relative to onset, utilities per row)."""

    dt_early: float = -12.0
    dt_optimal: float = -6.0
    dt_late: float = 3.0
    max_u_tp: float = 1.0
    min_u_fn: float = -2.0
    u_fp: float = -0.05
    u_tn: float = 0.0


def sepsis_onset_row(labels: npt.ArrayLike) -> int | None:
    """Onset row of a stay: its first ``SepsisLabel == 1`` row plus 6; None if never."""
    y = np.asarray(labels).ravel()
    hits = np.flatnonzero(y == 1)
    return None if hits.size == 0 else int(hits[0]) + SEPSIS_LABEL_LEAD_HOURS


def row_utilities(
    predictions: npt.ArrayLike,
    onset_row: int | None,
    params: UtilityParameters = UtilityParameters(),
) -> npt.NDArray[np.float64]:
    """Utility of each row of one stay.

    Args:
        predictions: ``[T]`` 0/1 predictions, one per hourly row.
        onset_row: ``t_sepsis`` (row index, may lie past the last row), None if not septic.
        params: The challenge's constants.

    Returns:
        ``[T]`` utilities.
    """
    p = np.asarray(predictions).ravel().astype(bool)
    if onset_row is None:
        return np.where(p, params.u_fp, params.u_tn).astype(np.float64)
    dt = np.arange(p.size, dtype=np.float64) - onset_row
    early = dt <= params.dt_optimal
    window = (dt > params.dt_optimal) & (dt <= params.dt_late)
    rise = params.max_u_tp * (dt - params.dt_early) / (params.dt_optimal - params.dt_early)
    fall = params.max_u_tp * (params.dt_late - dt) / (params.dt_late - params.dt_optimal)
    miss = params.min_u_fn * (dt - params.dt_optimal) / (params.dt_late - params.dt_optimal)
    positive = np.where(early, np.maximum(rise, params.u_fp), np.where(window, fall, 0.0))
    negative = np.where(window, miss, 0.0)
    return np.where(p, positive, negative).astype(np.float64)


def stay_utility(
    predictions: npt.ArrayLike,
    onset_row: int | None,
    params: UtilityParameters = UtilityParameters(),
) -> float:
    """Sum of :func:`row_utilities` over one stay."""
    return float(row_utilities(predictions, onset_row, params).sum())


def _best(n_rows: int, onset_row: int | None, params: UtilityParameters) -> npt.NDArray[np.bool_]:
    best = np.zeros(n_rows, dtype=bool)
    if onset_row is not None:
        dt = np.arange(n_rows, dtype=np.float64) - onset_row
        best[(dt >= params.dt_early) & (dt <= params.dt_late)] = True
    return best


def normalised_utility(
    predictions: Sequence[npt.ArrayLike],
    labels: Sequence[npt.ArrayLike],
    params: UtilityParameters = UtilityParameters(),
) -> dict[str, float]:
    """The normalised utility of a cohort.

    Args:
        predictions: Per stay, ``[T_i]`` 0/1 predictions.
        labels: Per stay, ``[T_i]`` SepsisLabel (0/1), the same lengths.

    Returns:
        ``normalised`` (NaN when best equals inaction, i.e. no septic stay), and the raw
        ``observed``, ``best`` and ``inaction`` totals.

    Raises:
        ValueError: The sequences or a stay's rows differ in length.
    """
    if len(predictions) != len(labels):
        raise ValueError("predictions and labels must have one entry per stay")
    observed = best = inaction = 0.0
    for p_raw, y_raw in zip(predictions, labels, strict=True):
        p = np.asarray(p_raw).ravel()
        y = np.asarray(y_raw).ravel()
        if p.shape != y.shape:
            raise ValueError("a stay's predictions and labels differ in length")
        onset = sepsis_onset_row(y)
        observed += stay_utility(p, onset, params)
        best += stay_utility(_best(y.size, onset, params), onset, params)
        inaction += stay_utility(np.zeros(y.size, dtype=bool), onset, params)
    span = best - inaction
    normalised = (observed - inaction) / span if span != 0 else float("nan")
    return {"normalised": normalised, "observed": observed, "best": best, "inaction": inaction}
