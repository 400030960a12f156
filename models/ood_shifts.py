"""Realistic distribution shifts of recorded ICU stays, for evaluating the OOD detector.

Each shift is a pure function ``Stay -> Stay`` (the input is not modified). Values are
transformed as raw readings would be, then the stream's artifact filter
(:func:`models.physionet2012.is_valid_value`) is applied again unless
``filter_artifacts=False`` (what the model would see if that check were missing):

* ``temperature_fahrenheit``: ``Temp`` recorded in °F but read as °C (98.6 "°C"). Every
  such value is above the 45 °C limit, so with the filter the stay has no temperature.
* ``fio2_percent``: ``FiO2`` recorded in % but read as a fraction (40 instead of 0.40);
  above the limit of 1, so with the filter the stay has no FiO2.
* ``stuck_hr``: from ``onset_hours`` on, the heart-rate sensor repeats its last reading
  every hour (the real readings after onset are removed).
* ``vitals_dropout``: from ``onset_hours`` on, the bedside monitor's series
  (:data:`MONITOR_CODES`) stop; labs and charted values go on.
* ``population_drift``: an older, heavier population (age + 20 years, weight × 1.3, the
  admission weight and the ``Weight`` series).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from models.physionet2012 import Stay, is_valid_value
from streams.core.features import SERIES_CODES

__all__ = ["MONITOR_CODES", "SHIFTS", "apply_shift"]

MONITOR_CODES: Final[tuple[str, ...]] = (
    "HR",
    "SysABP",
    "DiasABP",
    "MAP",
    "NISysABP",
    "NIDiasABP",
    "NIMAP",
    "RespRate",
    "Temp",
)
"""Series a bedside monitor streams (the ones a disconnected monitor stops)."""

SHIFTS: Final[tuple[str, ...]] = (
    "temperature_fahrenheit",
    "fio2_percent",
    "stuck_hr",
    "vitals_dropout",
    "population_drift",
)
"""Names accepted by :func:`apply_shift`."""

_INDEX: Final[dict[str, int]] = {code: i for i, code in enumerate(SERIES_CODES)}
_AGE_SHIFT_YEARS: Final[float] = 20.0
_WEIGHT_FACTOR: Final[float] = 1.3

_Arrays = tuple[
    npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]
]  # code index, minutes, values


def _scale(code: str, factor: float, offset: float = 0.0) -> Callable[[Stay, int], _Arrays]:
    def apply(stay: Stay, onset_minutes: int) -> _Arrays:
        values = stay.values.copy()
        sel = stay.code_index == _INDEX[code]
        values[sel] = values[sel] * factor + offset
        return stay.code_index.copy(), stay.minutes.copy(), values

    return apply


def _stuck_hr(stay: Stay, onset_minutes: int) -> _Arrays:
    hr = stay.code_index == _INDEX["HR"]
    before = hr & (stay.minutes <= onset_minutes)
    if not before.any():
        return stay.code_index.copy(), stay.minutes.copy(), stay.values.copy()
    last = float(stay.values[before][np.argmax(stay.minutes[before])])
    keep = ~(hr & (stay.minutes > onset_minutes))
    end = max(int(stay.minutes.max()), 48 * 60)
    stuck_minutes = np.arange(onset_minutes + 60, end + 1, 60, dtype=np.int64)
    return (
        np.concatenate([stay.code_index[keep], np.full(stuck_minutes.size, _INDEX["HR"])]),
        np.concatenate([stay.minutes[keep], stuck_minutes]),
        np.concatenate([stay.values[keep], np.full(stuck_minutes.size, last)]),
    )


def _vitals_dropout(stay: Stay, onset_minutes: int) -> _Arrays:
    monitor = np.isin(stay.code_index, [_INDEX[c] for c in MONITOR_CODES])
    keep = ~(monitor & (stay.minutes > onset_minutes))
    return stay.code_index[keep], stay.minutes[keep], stay.values[keep]


_SERIES_SHIFTS: Final[dict[str, Callable[[Stay, int], _Arrays]]] = {
    "temperature_fahrenheit": _scale("Temp", 9.0 / 5.0, 32.0),
    "fio2_percent": _scale("FiO2", 100.0),
    "stuck_hr": _stuck_hr,
    "vitals_dropout": _vitals_dropout,
    "population_drift": _scale("Weight", _WEIGHT_FACTOR),
}


def apply_shift(
    stay: Stay, shift: str, *, onset_hours: int = 24, filter_artifacts: bool = True
) -> Stay:
    """The stay as it would arrive under ``shift`` (one of :data:`SHIFTS`).

    Args:
        stay: A stay read by :func:`models.physionet2012.read_stay`.
        shift: The shift's name.
        onset_hours: Hours after admission when ``stuck_hr`` or ``vitals_dropout`` starts.
        filter_artifacts: Drop values outside their code's physiological range, as the
            stream does.

    Returns:
        A new stay with the same ``record_id``.

    Raises:
        ValueError: An unknown shift.
    """
    if shift not in _SERIES_SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; expected one of {', '.join(SHIFTS)}")
    codes, minutes, values = _SERIES_SHIFTS[shift](stay, onset_hours * 60)
    descriptors = dict(stay.descriptors)
    if shift == "population_drift":
        age, weight = descriptors.get("Age"), descriptors.get("Weight")
        descriptors["Age"] = None if age is None else age + _AGE_SHIFT_YEARS
        descriptors["Weight"] = None if weight is None else weight * _WEIGHT_FACTOR
    if filter_artifacts:
        keep = np.array(
            [
                is_valid_value(SERIES_CODES[int(c)], float(v))
                for c, v in zip(codes, values, strict=True)
            ],
            dtype=bool,
        )
        codes, minutes, values = codes[keep], minutes[keep], values[keep]
        descriptors = {
            k: (v if v is None or is_valid_value(k, v) else None) for k, v in descriptors.items()
        }
    order = np.argsort(minutes, kind="stable")
    return Stay(
        record_id=stay.record_id,
        descriptors=descriptors,
        code_index=np.asarray(codes[order], dtype=np.int64),
        minutes=np.asarray(minutes[order], dtype=np.int64),
        values=np.asarray(values[order], dtype=np.float64),
    )
