"""When in a stay the OOD detector flags a shifted stay (the stream's view of a shift).

The worker scores a patient every 30 minutes of event time; :func:`timeline` scores
sampled test stays at every half hour from 0.5 h to 48 h after admission, unshifted and
under each shift of :mod:`models.ood.shifts` (with the stream's artifact filter), and
reports per scoring time the fraction of stays flagged, and per shift the hour at which
stays are first flagged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from models.deterioration.network import DeteriorationEnsemble, NetConfig
from models.ood.shifts import SHIFTS, apply_shift
from models.ood.windows import ChannelScorer, window_features
from streams.datasets.physionet2012 import Stay

__all__ = ["SCORING_STEP_MINUTES", "first_flag_hours", "sample_stays", "timeline"]

SCORING_STEP_MINUTES: Final[int] = 30
"""The worker's default scoring interval (``VIGIL_SCORE_INTERVAL_SECONDS`` = 1800)."""
_LAST_MINUTE: Final[int] = 48 * 60
_ONSET_AT_ADMISSION: Final[frozenset[str]] = frozenset(
    {"temperature_fahrenheit", "fio2_percent", "population_drift"}
)


def sample_stays(stays: Sequence[Stay], n: int, *, seed: int) -> list[Stay]:
    """``n`` stays drawn without replacement (all when ``n >= len(stays)``), in order."""
    if n >= len(stays):
        return list(stays)
    picked = np.sort(np.random.default_rng(seed).choice(len(stays), size=n, replace=False))
    return [stays[int(i)] for i in picked]


def first_flag_hours(
    flagged: npt.NDArray[np.bool_], hours: npt.NDArray[np.float64], *, from_hour: float = 0.0
) -> npt.NDArray[np.float64]:
    """``[N]`` first scoring hour at or after ``from_hour`` at which each stay is flagged
    (``inf`` if never).

    Args:
        flagged: ``[T,N]`` flags per scoring time and stay.
        hours: ``[T]`` scoring hours, increasing.
        from_hour: Flags before this hour are ignored.
    """
    eligible = flagged & (hours >= from_hour)[:, None]
    first = np.argmax(eligible, axis=0)
    return np.where(eligible.any(axis=0), hours[first], np.inf)


def _same(a: Stay, b: Stay) -> bool:
    return (
        np.array_equal(a.code_index, b.code_index)
        and np.array_equal(a.minutes, b.minutes)
        and np.array_equal(a.values, b.values)
        and a.descriptors == b.descriptors
    )


def _median(hours: npt.NDArray[np.float64]) -> float | None:
    """Median first-flag hour; None when more than half are never flagged."""
    if hours.size == 0:
        return None
    median = float(np.median(hours))
    return median if np.isfinite(median) else None


def timeline(
    net: DeteriorationEnsemble,
    config: NetConfig,
    scorer: ChannelScorer,
    stays: Sequence[Stay],
    *,
    onset_hours: int,
) -> dict[str, Any]:
    """Flag rates at every scoring time, unshifted and per shift (JSON-ready).

    Only stays a shift changes are counted for that shift. For each, the first flag is
    taken from admission, and from the shift's onset (admission for the unit errors and
    the drifted population; ``onset_hours`` for the stuck sensor and the dropout).
    """
    minutes = list(range(SCORING_STEP_MINUTES, _LAST_MINUTE + 1, SCORING_STEP_MINUTES))
    hours = np.asarray(minutes, dtype=np.float64) / 60.0

    def flags(group: Sequence[Stay]) -> dict[str, npt.NDArray[np.bool_]]:
        scores = scorer.scores(window_features(net, config, group, minutes))
        return {k: (v > 1.0).reshape(len(minutes), -1) for k, v in scores.items()}

    def summary(group: Sequence[Stay], onset: float) -> dict[str, Any]:
        if not group:
            return {"n_stays": 0}
        flagged = flags(group)
        first = first_flag_hours(flagged["combined"], hours)
        after = first_flag_hours(flagged["combined"], hours, from_hour=onset)
        return {
            "n_stays": len(group),
            "onset_hour": onset,
            "flag_rate": {
                name: [round(float(r), 4) for r in f.mean(axis=1)] for name, f in flagged.items()
            },
            "median_first_flag_hour": _median(first),
            "median_first_flag_hour_from_onset": _median(after),
            "ever_flagged_fraction": round(float(np.isfinite(first).mean()), 4),
            "ever_flagged_from_onset_fraction": round(float(np.isfinite(after).mean()), 4),
        }

    out: dict[str, Any] = {
        "scoring_hours": [float(h) for h in hours],
        "n_sampled": len(stays),
        "unshifted": summary(stays, 0.0),
    }
    for shift in SHIFTS:
        shifted = [apply_shift(s, shift, onset_hours=onset_hours) for s in stays]
        changed = [b for a, b in zip(stays, shifted, strict=True) if not _same(a, b)]
        onset = 0.0 if shift in _ONSET_AT_ADMISSION else float(onset_hours)
        out[shift] = summary(changed, onset)
    return out
