"""Hours since each parameter was last seen, at a scoring time: the step model's clock.

The step model's state holds running statistics and hidden states but no clock: an hour
without observations is no step, so a monitor that stops sending leaves the state as it
was. The step model's out-of-distribution head (``docs/ood.md``, "OOD on the step model")
therefore takes, beside the state, the hours from the scoring time back to each of the
``P`` series parameters' last observation, the feature the window detector caught
monitor dropout with.

Definition (one rule, two clocks): for parameter ``p`` at scoring time ``at``, the hours
from ``at`` back to the last finite observation of ``p`` at or before ``at`` and at or
after admission, capped at :data:`~streams.core.features.DELTA_CAP_HOURS`; the cap when
there is none. :func:`hours_since_seen_on_ticks` applies it to the worker's epoch-ms
series, :func:`stay_hours_since_seen` to a packed stay at many scoring times (training and
evaluation). A test proves the two agree on real stays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from streams.core.features import DELTA_CAP_HOURS, SERIES_CODES, StayArrays
from streams.core.step_features import last_before

__all__ = ["hours_since_seen_on_ticks", "stay_hours_since_seen"]

_CODE_INDEX: Final[Mapping[str, int]] = {code: i for i, code in enumerate(SERIES_CODES)}
_US_PER_MINUTE: Final[int] = 60_000_000
_US_PER_HOUR: Final[float] = 3_600_000_000.0

FloatArray = npt.NDArray[np.float32]


def hours_since_seen_on_ticks(
    series: Mapping[str, Sequence[tuple[int, float]]],
    *,
    admit: int,
    at: int,
    ticks_per_hour: float,
) -> FloatArray:
    """``[P]`` hours since each parameter was last seen at ``at`` (see the module).

    Args:
        series: Per code, time-sorted ``(time, value)`` in ticks; other codes ignored.
        admit: Admission time in ticks.
        at: Scoring time in ticks.
        ticks_per_hour: Ticks in an hour.
    """
    hours = [DELTA_CAP_HOURS] * len(SERIES_CODES)
    for code, points in series.items():
        col = _CODE_INDEX.get(code)
        if col is None or not points:
            continue
        pos = last_before(points, at + 1)
        while pos >= 0 and not math.isfinite(points[pos][1]):
            pos -= 1
        if pos < 0 or points[pos][0] < admit:
            continue
        hours[col] = min((at - points[pos][0]) / ticks_per_hour, DELTA_CAP_HOURS)
    return np.array(hours, dtype=np.float32)


def stay_hours_since_seen(stay: StayArrays, minutes: Sequence[int]) -> FloatArray:
    """``[Q, P]`` hours since each parameter was last seen, at ``minutes`` after admission.

    Args:
        stay: The packed stay (finite values at or after admission only, sorted by
            parameter then time).
        minutes: Scoring times, minutes after admission.
    """
    at_us = np.asarray(minutes, dtype=np.int64) * _US_PER_MINUTE
    out = np.full((at_us.size, len(SERIES_CODES)), DELTA_CAP_HOURS, dtype=np.float32)
    bounds = np.searchsorted(stay.code_index, np.arange(len(SERIES_CODES) + 1), side="left")
    for col in range(len(SERIES_CODES)):
        times = stay.offset_us[bounds[col] : bounds[col + 1]]
        if times.size == 0:
            continue
        last = np.searchsorted(times, at_us, side="right") - 1
        seen = last >= 0
        gap = (at_us[seen] - times[last[seen]]) / _US_PER_HOUR
        out[seen, col] = np.minimum(gap, DELTA_CAP_HOURS)
    return out
