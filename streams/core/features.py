"""Hourly feature windows for the deterioration model, pure numpy.

One function builds the model's input from a patient's observations, for the stream and
for training alike: :func:`build_features`. Training converts a stay once into
:class:`StayArrays` and calls :func:`features_at` for many scoring times; the stream calls
:func:`build_features`, which is exactly ``features_at(StayArrays.from_observations(...))``,
so offline and streamed tensors are the same numbers.

Time grid. Bins are aligned to ICU admission: bin ``k`` covers
``[admit + k·step, admit + (k+1)·step)``. The window holds the last ``T = window/step``
bins up to and including the bin that contains ``end_time``. Only observations with
``admit <= time <= end_time`` count (no look-ahead; nothing before admission), so bins
before admission are empty and the bin containing ``end_time`` is partial.

Per bin ``t`` and parameter ``p`` (all ``float32``, shape ``[T, P]``):

* ``values``: the last observed value in the bin, canonical units; 0 where unobserved.
* ``mask``: 1 where at least one observation fell in the bin, else 0.
* ``delta_hours``: hours from the end of bin ``t`` back to the last observation of ``p``
  at or before that bin (GRU-D's time gap), counting observations before the window too;
  capped at :data:`DELTA_CAP_HOURS`, and equal to the cap where ``p`` was never observed
  since admission up to that bin. An observation inside the bin gives a gap in
  ``(0, step]``.

Statics (shape ``[S]``, see :data:`STATIC_FEATURES`): age (years), gender (0 female,
1 male), height (cm), admission weight (kg), then ICU type one-hot (coronary care,
cardiac surgery recovery, medical, surgical). Unknown values are 0 with ``static_mask``
0; a known ICU type sets all four one-hot mask entries to 1.

Values are taken as given (canonical units, artifacts already removed); non-finite
values are ignored. Bad arguments raise :class:`ValueError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_STEP",
    "DEFAULT_WINDOW",
    "DELTA_CAP_HOURS",
    "ICU_TYPES",
    "SERIES_CODES",
    "STATIC_CODES",
    "STATIC_FEATURES",
    "FeatureWindow",
    "StayArrays",
    "build_features",
    "encode_statics",
    "features_at",
]

SERIES_CODES: Final[tuple[str, ...]] = (
    "HR",
    "SysABP",
    "DiasABP",
    "MAP",
    "NISysABP",
    "NIDiasABP",
    "NIMAP",
    "RespRate",
    "Temp",
    "GCS",
    "SaO2",
    "FiO2",
    "MechVent",
    "Urine",
    "pH",
    "PaO2",
    "PaCO2",
    "HCO3",
    "K",
    "Na",
    "Mg",
    "BUN",
    "Creatinine",
    "Glucose",
    "Bilirubin",
    "Lactate",
    "WBC",
    "Platelets",
    "HCT",
    "Albumin",
    "ALP",
    "ALT",
    "AST",
    "TroponinI",
    "TroponinT",
    "Cholesterol",
    "Weight",
)
"""Time-series parameters in model order (PhysioNet 2012 names), ``P = 37``."""

STATIC_CODES: Final[tuple[str, ...]] = ("Age", "Gender", "Height", "Weight", "ICUType")
"""Keys read from the statics mapping (PhysioNet 2012 descriptor names)."""

ICU_TYPES: Final[tuple[int, ...]] = (1, 2, 3, 4)
"""ICU type codes: 1 coronary care, 2 cardiac surgery recovery, 3 medical, 4 surgical."""

STATIC_FEATURES: Final[tuple[str, ...]] = (
    "Age",
    "Gender",
    "Height",
    "Weight",
    "ICUType=1",
    "ICUType=2",
    "ICUType=3",
    "ICUType=4",
)
"""Static vector entries in order, ``S = 8``; ``ICUType`` is one-hot."""

DELTA_CAP_HOURS: Final[float] = 48.0
"""Largest time gap reported, hours; also the gap of a never-observed parameter."""

DEFAULT_WINDOW: Final[timedelta] = timedelta(hours=48)
DEFAULT_STEP: Final[timedelta] = timedelta(hours=1)

_US_PER_HOUR: Final[float] = 3_600_000_000.0
# Offsets are packed as ``code * _CODE_STRIDE + offset_us``; 2**50 µs is about 35 years.
_CODE_STRIDE: Final[int] = 1 << 50
_CODE_INDEX: Final[Mapping[str, int]] = {code: i for i, code in enumerate(SERIES_CODES)}

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True, eq=False)
class FeatureWindow:
    """Model input for one patient at one scoring time.

    Attributes:
        values: ``[T, P]`` last value per bin in canonical units, 0 where unobserved.
        mask: ``[T, P]`` 1 where observed in the bin, else 0.
        delta_hours: ``[T, P]`` hours since the last observation at each bin's end,
            capped at :data:`DELTA_CAP_HOURS`.
        statics: ``[S]`` static descriptors (see :data:`STATIC_FEATURES`), 0 if unknown.
        static_mask: ``[S]`` 1 where the static entry is known.
        end_time: Scoring time (UTC); the last bin contains it.
    """

    values: FloatArray
    mask: FloatArray
    delta_hours: FloatArray
    statics: FloatArray
    static_mask: FloatArray
    end_time: datetime


@dataclass(frozen=True, slots=True, eq=False)
class StayArrays:
    """A stay's observations packed for fast windowing; build it with a constructor.

    Attributes:
        code_index: ``[N]`` int64 index into :data:`SERIES_CODES`.
        offset_us: ``[N]`` int64 microseconds since admission (>= 0).
        values: ``[N]`` float64 values, canonical units.
        statics: ``[S]`` float32 static vector.
        static_mask: ``[S]`` float32 static mask.
        admit_time: ICU admission time (UTC).

    Rows are sorted by ``(code_index, offset_us)``, stable, so the later of two
    observations at the same time of one parameter stays later.
    """

    code_index: npt.NDArray[np.int64]
    offset_us: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    statics: FloatArray
    static_mask: FloatArray
    admit_time: datetime

    @classmethod
    def from_arrays(
        cls,
        code_index: npt.ArrayLike,
        offset_us: npt.ArrayLike,
        values: npt.ArrayLike,
        statics: Mapping[str, float | None],
        *,
        admit_time: datetime,
    ) -> StayArrays:
        """Packs parallel observation arrays (any order within a parameter's ties kept).

        Args:
            code_index: ``[N]`` indices into :data:`SERIES_CODES`.
            offset_us: ``[N]`` integer microseconds since admission; rows before
                admission (negative) are dropped.
            values: ``[N]`` values, canonical units; non-finite rows are dropped.
            statics: Descriptor values keyed by :data:`STATIC_CODES`; None if unknown.
            admit_time: ICU admission time, timezone-aware.

        Raises:
            ValueError: Mismatched lengths, an unknown code index, or a naive time.
        """
        _require_aware(admit_time, "admit_time")
        codes = np.asarray(code_index, dtype=np.int64)
        offsets = np.asarray(offset_us, dtype=np.int64)
        vals = np.asarray(values, dtype=np.float64)
        if not codes.shape == offsets.shape == vals.shape or codes.ndim != 1:
            raise ValueError("code_index, offset_us and values must be 1-D of equal length")
        if codes.size and (codes.min() < 0 or codes.max() >= len(SERIES_CODES)):
            raise ValueError("code_index out of range")
        keep = (offsets >= 0) & np.isfinite(vals)
        codes, offsets, vals = codes[keep], offsets[keep], vals[keep]
        order = np.lexsort((offsets, codes))  # stable: ties keep their input order
        static_vec, static_mask = _encode_statics(statics)
        return cls(
            code_index=codes[order],
            offset_us=offsets[order],
            values=vals[order],
            statics=static_vec,
            static_mask=static_mask,
            admit_time=admit_time,
        )

    @classmethod
    def from_observations(
        cls,
        observations: Mapping[str, Sequence[tuple[datetime, float]]],
        statics: Mapping[str, float | None],
        *,
        admit_time: datetime,
    ) -> StayArrays:
        """Packs per-code ``(time, value)`` sequences; codes not in the model are ignored.

        Args:
            observations: Per canonical code, time-sorted ``(time, value)`` pairs with
                timezone-aware times, canonical units, artifacts removed.
            statics: Descriptor values keyed by :data:`STATIC_CODES`; None if unknown.
            admit_time: ICU admission time, timezone-aware.

        Raises:
            ValueError: A naive datetime.
        """
        _require_aware(admit_time, "admit_time")
        codes: list[int] = []
        offsets: list[int] = []
        vals: list[float] = []
        one_us = timedelta(microseconds=1)
        for code, series in observations.items():
            index = _CODE_INDEX.get(code)
            if index is None:
                continue
            for moment, value in series:
                _require_aware(moment, f"{code} time")
                codes.append(index)
                offsets.append((moment - admit_time) // one_us)
                vals.append(float(value))
        return cls.from_arrays(codes, offsets, vals, statics, admit_time=admit_time)


def _require_aware(moment: datetime, what: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {moment!r}")


def encode_statics(statics: Mapping[str, float | None]) -> tuple[FloatArray, FloatArray]:
    """``statics [S]`` and ``static_mask [S]`` of a patient's descriptors (as every model
    input has them)."""
    return _encode_statics(statics)


def _encode_statics(statics: Mapping[str, float | None]) -> tuple[FloatArray, FloatArray]:
    vec = np.zeros(len(STATIC_FEATURES), dtype=np.float32)
    mask = np.zeros(len(STATIC_FEATURES), dtype=np.float32)
    for i, code in enumerate(STATIC_CODES[:4]):
        value = statics.get(code)
        if value is not None and math.isfinite(value):
            vec[i] = value
            mask[i] = 1.0
    icu_type = statics.get("ICUType")
    if icu_type is not None and math.isfinite(icu_type) and int(icu_type) in ICU_TYPES:
        vec[4 + ICU_TYPES.index(int(icu_type))] = 1.0
        mask[4:] = 1.0
    return vec, mask


def features_at(
    stay: StayArrays,
    end_time: datetime,
    *,
    window: timedelta = DEFAULT_WINDOW,
    step: timedelta = DEFAULT_STEP,
) -> FeatureWindow:
    """Builds the feature window of a packed stay at ``end_time``.

    Args:
        stay: The stay's packed observations.
        end_time: Scoring time, timezone-aware; observations after it are ignored.
        window: Window length; a positive multiple of ``step``.
        step: Bin width, positive.

    Returns:
        The window, ``T = window // step`` bins, ``P = len(SERIES_CODES)``.

    Raises:
        ValueError: A naive ``end_time``, or ``window``/``step`` not as documented.
    """
    _require_aware(end_time, "end_time")
    one_us = timedelta(microseconds=1)
    step_us = step // one_us
    if step_us <= 0 or window // one_us <= 0 or (window // one_us) % step_us != 0:
        raise ValueError("window must be a positive multiple of a positive step")
    n_bins = (window // one_us) // step_us
    n_params = len(SERIES_CODES)
    end_us = (end_time - stay.admit_time) // one_us
    last_bin = end_us // step_us  # floor: negative before admission
    first_bin = last_bin - n_bins + 1

    known = stay.offset_us <= end_us
    codes = stay.code_index[known]
    offsets = stay.offset_us[known]
    bins = offsets // step_us

    values = np.zeros((n_bins, n_params), dtype=np.float32)
    mask = np.zeros((n_bins, n_params), dtype=np.float32)
    inside = bins >= first_bin
    if inside.any():
        rows = bins[inside] - first_bin
        cols = codes[inside]
        keys = cols * n_bins + rows  # non-decreasing: sorted by (code, time)
        last = np.ones(keys.shape, dtype=bool)
        last[:-1] = keys[1:] != keys[:-1]
        values[rows[last], cols[last]] = stay.values[known][inside][last]
        mask[rows[last], cols[last]] = 1.0

    bin_end_us = (np.arange(first_bin, last_bin + 1, dtype=np.int64) + 1) * step_us
    packed = codes * _CODE_STRIDE + offsets  # sorted ascending
    targets = np.arange(n_params, dtype=np.int64)[None, :] * _CODE_STRIDE + bin_end_us[:, None]
    # Last observation strictly before each bin's end, of the same parameter.
    pos = np.searchsorted(packed, targets, side="left") - 1
    found = pos >= 0
    safe = np.where(found, pos, 0)
    if packed.size:
        found &= codes[safe] == np.arange(n_params)[None, :]
        gap_us = bin_end_us[:, None] - offsets[safe]
    else:
        gap_us = np.zeros_like(targets)
    delta = np.where(found, gap_us / _US_PER_HOUR, DELTA_CAP_HOURS)
    delta_hours = np.minimum(delta, DELTA_CAP_HOURS).astype(np.float32)

    return FeatureWindow(
        values=values,
        mask=mask,
        delta_hours=delta_hours,
        statics=stay.statics.copy(),
        static_mask=stay.static_mask.copy(),
        end_time=end_time,
    )


def build_features(
    observations: Mapping[str, Sequence[tuple[datetime, float]]],
    statics: Mapping[str, float | None],
    *,
    admit_time: datetime,
    end_time: datetime,
    window: timedelta = DEFAULT_WINDOW,
    step: timedelta = DEFAULT_STEP,
) -> FeatureWindow:
    """Builds a patient's model input at ``end_time`` (the stream's and training's path).

    Args:
        observations: Per canonical code, time-sorted ``(time, value)`` pairs,
            timezone-aware, canonical units, artifacts removed. Unknown codes are ignored.
        statics: Descriptors keyed by :data:`STATIC_CODES` (``ICUType`` 1-4); None if
            unknown.
        admit_time: ICU admission time; bins are aligned to it.
        end_time: Scoring time; only observations at or before it count.
        window: Window length, a multiple of ``step`` (default 48 h).
        step: Bin width (default 1 h).

    Returns:
        The :class:`FeatureWindow` (see the module docstring for the semantics).

    Raises:
        ValueError: Naive datetimes, or a window that is not a multiple of the step.
    """
    stay = StayArrays.from_observations(observations, statics, admit_time=admit_time)
    return features_at(stay, end_time, window=window, step=step)
