"""Hour bins of the step (incremental) deterioration model, pure numpy.

The step model (``deterioration_step``, ``docs/deterioration.md``) carries its state from
one hour bin to the next, so a score never re-reads history. This module defines what one
bin's inputs are, for the stream and for training alike:

* Bins are those of :mod:`streams.core.features`: bin ``k`` covers
  ``[admit + k h, admit + (k+1) h)``. A bin is a **step only if at least one of the
  ``P`` series parameters was observed in it**; an hour without observations is no
  step (its time passes into the next step's gaps).
* A step's inputs are exactly that bin's row of :func:`streams.core.features.features_at`:
  ``values [P]`` (last value in the bin, canonical units, 0 where unobserved),
  ``mask [P]`` and ``delta_hours [P]`` (hours from the bin's **end** back to the last
  observation of each parameter at or before it, counting earlier bins; capped at
  :data:`~streams.core.features.DELTA_CAP_HOURS`, the cap where never observed).
* The bin containing the scoring time is **open**: built from the observations up to the
  scoring time only (same formula, gaps still measured from the bin's end). It is run
  provisionally; once event time passes its end, the bin is **closed** and committed
  into the stored state with all of its observations.

:func:`stay_bins` builds every step of a packed stay (the training path);
:func:`bin_inputs` builds one bin from a patient's observations (the worker's path,
independent of how many bins came before); :func:`pack_bins` pads steps into the
model's fixed ``[L, P]`` request block. A test proves the three agree.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import numpy as np
import numpy.typing as npt

from streams.core.features import (
    DEFAULT_STEP,
    DELTA_CAP_HOURS,
    SERIES_CODES,
    StayArrays,
    features_at,
)

__all__ = [
    "BINS_PER_REQUEST",
    "StepBin",
    "StepBins",
    "bin_index",
    "bin_inputs",
    "bin_on_ticks",
    "last_before",
    "pack_bins",
    "point_time",
    "stay_bins",
]

BINS_PER_REQUEST: Final[int] = 8
"""``L``: most bins one ``deterioration_step`` request runs after the stored state."""

_ONE_US: Final[timedelta] = timedelta(microseconds=1)
_EPOCH: Final[datetime] = datetime(1970, 1, 1, tzinfo=UTC)
_US_PER_HOUR: Final[float] = 3_600_000_000.0
_CODE_INDEX: Final[Mapping[str, int]] = {code: i for i, code in enumerate(SERIES_CODES)}
point_time: Final = operator.itemgetter(0)
"""A series point's time (a C-level key for :mod:`bisect`)."""

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True, eq=False)
class StepBin:
    """The inputs of one step.

    Attributes:
        index: Hour bin since admission (``0`` = the first hour).
        values: ``[P]`` last value per parameter in the bin, 0 where unobserved.
        mask: ``[P]`` 1 where observed in the bin.
        delta_hours: ``[P]`` hours from the bin's end back to the last observation.
    """

    index: int
    values: FloatArray
    mask: FloatArray
    delta_hours: FloatArray


@dataclass(frozen=True, slots=True, eq=False)
class StepBins:
    """A stay's steps, oldest first (``N`` bins that hold an observation).

    Attributes:
        index: ``[N]`` int64 hour bins since admission, strictly increasing.
        values: ``[N, P]``.
        mask: ``[N, P]``, each row with at least one 1.
        delta_hours: ``[N, P]``.
    """

    index: npt.NDArray[np.int64]
    values: FloatArray
    mask: FloatArray
    delta_hours: FloatArray

    def __len__(self) -> int:
        return int(self.index.size)

    def bin(self, i: int) -> StepBin:
        """Step ``i`` as a :class:`StepBin`."""
        return StepBin(
            index=int(self.index[i]),
            values=self.values[i],
            mask=self.mask[i],
            delta_hours=self.delta_hours[i],
        )


def bin_index(admit_time: datetime, moment: datetime, step: timedelta = DEFAULT_STEP) -> int:
    """The bin holding ``moment`` (floor of the time since admission in steps)."""
    return int(((moment - admit_time) // _ONE_US) // (step // _ONE_US))


def stay_bins(stay: StayArrays, end_time: datetime, step: timedelta = DEFAULT_STEP) -> StepBins:
    """Every step of a stay from admission up to ``end_time`` (observations at or before
    it); the last step is the open bin when it holds ``end_time``.

    Built from :func:`~streams.core.features.features_at` over a window that starts at
    admission, so each step is that function's row for its bin. Before admission there
    is no step.
    """
    last = bin_index(stay.admit_time, end_time, step)
    p = len(SERIES_CODES)
    if last < 0:
        empty = np.zeros((0, p), dtype=np.float32)
        return StepBins(np.zeros(0, dtype=np.int64), empty, empty.copy(), empty.copy())
    window = features_at(stay, end_time, window=step * (last + 1), step=step)
    keep = np.flatnonzero(window.mask.any(axis=1))
    return StepBins(
        index=keep.astype(np.int64),
        values=window.values[keep],
        mask=window.mask[keep],
        delta_hours=window.delta_hours[keep],
    )


def bin_inputs(
    observations: Mapping[str, Sequence[tuple[datetime, float]]],
    *,
    admit_time: datetime,
    index: int,
    end_time: datetime | None = None,
    step: timedelta = DEFAULT_STEP,
) -> StepBin | None:
    """One bin's step inputs from a patient's observations (the worker's path).

    Args:
        observations: Per canonical code, time-sorted ``(time, value)`` pairs
            (timezone-aware, canonical units, artifacts removed), holding at least the
            last observation of each parameter within ``DELTA_CAP_HOURS`` before the
            bin's end; older ones do not change the result. Other codes are ignored.
        admit_time: ICU admission time (bins are aligned to it).
        index: The bin (``>= 0``).
        end_time: For the open bin, the scoring time inside it: later observations are
            ignored. None for a closed bin (every observation before the bin's end).
        step: Bin width.

    Returns:
        The bin's inputs, or None when no parameter was observed in it (no step).

    Raises:
        ValueError: A negative ``index`` or an ``end_time`` outside the bin.
    """
    if index < 0:
        raise ValueError(f"bin index must be >= 0, got {index}")
    start = admit_time + step * index
    if end_time is not None and not start <= end_time < start + step:
        raise ValueError("end_time must lie inside the bin")
    return bin_on_ticks(
        {code: [(_us(t), v) for t, v in series] for code, series in observations.items()},
        admit=_us(admit_time),
        index=index,
        end=None if end_time is None else _us(end_time),
        step=step // _ONE_US,
        ticks_per_hour=_US_PER_HOUR,
    )


def bin_on_ticks(
    series: Mapping[str, Sequence[tuple[int, float]]],
    *,
    admit: int,
    index: int,
    end: int | None,
    step: int,
    ticks_per_hour: float,
) -> StepBin | None:
    """One bin's step inputs on an integer clock: the one implementation of the bin rule,
    for :func:`bin_inputs` (datetimes, as microseconds) and for the worker's state (epoch
    milliseconds, :func:`streams.core.stepping.bin_from_series`).

    Args:
        series: Per code, time-sorted ``(time, value)``, times in ticks.
        admit: Admission time in ticks (bins are aligned to it).
        index: The bin (``>= 0``).
        end: For the open bin, the scoring time inside it; None for a closed bin.
        step: Bin width in ticks.
        ticks_per_hour: Ticks in an hour (``delta_hours`` is in hours).

    Returns:
        The bin's inputs, or None when no parameter was observed in it (no step).
    """
    start = admit + step * index
    stop = start + step
    # Last observation counted: strictly before the bin's end (closed bin), or at or
    # before the scoring time (open bin); ties keep their order, the later one wins.
    # Times are integers, so "at or before end" is "before end + 1".
    limit = stop if end is None else end + 1
    p = len(SERIES_CODES)
    values = [0.0] * p
    mask = [0.0] * p
    delta = [DELTA_CAP_HOURS] * p
    observed = False
    for code, points in series.items():
        col = _CODE_INDEX.get(code)
        if col is None or not points:
            continue
        pos = last_before(points, limit)
        while pos >= 0 and not math.isfinite(points[pos][1]):
            pos -= 1  # features_at drops non-finite values
        if pos < 0:
            continue
        moment, value = points[pos]
        if moment < admit:
            continue  # nothing before admission counts
        delta[col] = min((stop - moment) / ticks_per_hour, DELTA_CAP_HOURS)
        if moment >= start:
            values[col] = value
            mask[col] = 1.0
            observed = True
    if not observed:
        return None
    return StepBin(
        index=index,
        values=np.array(values, dtype=np.float32),
        mask=np.array(mask, dtype=np.float32),
        delta_hours=np.array(delta, dtype=np.float32),
    )


def last_before(points: Sequence[tuple[int, float]], limit: int) -> int:
    """Index of the last of time-sorted, non-empty ``points`` whose time is before
    ``limit`` (-1: none). The newest point is checked first: for most parameters it is
    the one, and no search is needed."""
    if points[-1][0] < limit:
        return len(points) - 1
    return bisect.bisect_left(points, limit, key=point_time) - 1


def _us(moment: datetime) -> int:
    """Microseconds since the epoch (exact: datetimes resolve microseconds)."""
    return (moment - _EPOCH) // _ONE_US


def pack_bins(
    bins: Sequence[StepBin], length: int = BINS_PER_REQUEST
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Pads up to ``length`` steps (oldest first) into one request block.

    Returns:
        ``bins_values [L, P]``, ``bins_mask [L, P]``, ``bins_delta_hours [L, P]`` and
        ``bins_valid [L]``; padding rows are zeros with ``bins_valid`` 0 (a padded gap
        of 0 is never read: invalid bins leave the state unchanged).

    Raises:
        ValueError: More than ``length`` steps.
    """
    if len(bins) > length:
        raise ValueError(f"at most {length} bins per request, got {len(bins)}")
    p = len(SERIES_CODES)
    values = np.zeros((length, p), dtype=np.float32)
    mask = np.zeros((length, p), dtype=np.float32)
    delta = np.zeros((length, p), dtype=np.float32)
    valid = np.zeros(length, dtype=np.float32)
    for i, item in enumerate(bins):
        values[i], mask[i], delta[i] = item.values, item.mask, item.delta_hours
        valid[i] = 1.0
    return values, mask, delta, valid
