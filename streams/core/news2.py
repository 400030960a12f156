"""National Early Warning Score 2 (NEWS2), pure and typed.

Scores seven physiological parameters on the Royal College of Physicians chart
(Royal College of Physicians. *National Early Warning Score (NEWS) 2.* London: RCP, 2017,
Chart 1 "The NEWS scoring system" and Chart 2 "Thresholds and triggers"), sums them and
maps the aggregate to a clinical-risk band. See ``docs/news2.md`` for the chart, the
bands and why missing data, stale data and proxies are handled the way they are.

Two entry points:

* :func:`score_news2` scores :class:`News2Inputs` (chart units, each value optional).
* :func:`news2_from_observations` builds those inputs from the latest PhysioNet 2012
  observations (``RespRate``, ``SpO2``, ``SaO2``, ``FiO2``, ``MechVent``, ``SysABP``,
  ``NISysABP``, ``HR``, ``GCS``, ``Temp``) at a scoring time, dropping stale ones.

Fractional inputs are rounded half up to the chart's precision before banding: whole
numbers for respiration rate, SpO2, systolic pressure, pulse and GCS; one decimal for
temperature. Rounding works on the value's shortest decimal form (``repr``), so
``38.05`` rounds to ``38.1`` even though the nearest binary float is slightly below it.

Invalid values (not finite, negative, SpO2 above 100 %, FiO2 outside 0-1, GCS outside
3-15, naive datetimes) raise :class:`vigil.errors.ConfigError`; missing ones are ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import Final, TypeAlias

from vigil.errors import ConfigError

__all__ = [
    "NEWS2_INPUT_CODES",
    "Acvpu",
    "News2Band",
    "News2Inputs",
    "News2Parameter",
    "News2Result",
    "Observation",
    "consciousness_from_gcs",
    "latest_systolic_bp",
    "news2_band",
    "news2_from_observations",
    "on_oxygen_from_ventilation",
    "score_news2",
    "spo2_with_sao2_fallback",
]

Observation: TypeAlias = tuple[float, datetime]
"""A value in its canonical unit and its (timezone-aware) observation time."""

NEWS2_INPUT_CODES: frozenset[str] = frozenset(
    {"RespRate", "SpO2", "SaO2", "FiO2", "MechVent", "SysABP", "NISysABP", "HR", "GCS", "Temp"}
)
"""The keys :func:`news2_from_observations` reads (PhysioNet 2012 names); others are ignored."""


class Acvpu(StrEnum):
    """Level of consciousness on the ACVPU scale; every level but ALERT scores 3."""

    ALERT = "alert"
    CONFUSION = "confusion"
    """New confusion (new-onset or worsening disorientation or delirium)."""
    VOICE = "voice"
    PAIN = "pain"
    UNRESPONSIVE = "unresponsive"


class News2Parameter(StrEnum):
    """The seven parameters of the NEWS2 chart, in chart order."""

    RESPIRATION_RATE = "respiration_rate"
    SPO2 = "spo2"
    AIR_OR_OXYGEN = "air_or_oxygen"
    SYSTOLIC_BP = "systolic_bp"
    PULSE = "pulse"
    CONSCIOUSNESS = "consciousness"
    TEMPERATURE = "temperature"


class News2Band(StrEnum):
    """RCP clinical-risk band of a NEWS2 result, with the chart's minimum response.

    Precedence: HIGH, then MEDIUM, then LOW_MEDIUM, then LOW.
    """

    LOW = "low"
    """Aggregate 0-4 with no single 3. Aggregate 0: routine monitoring, at least
    12-hourly. Aggregate 1-4: at least 4-6-hourly; a registered nurse assesses and
    decides on monitoring frequency and escalation (ward-based response)."""
    LOW_MEDIUM = "low_medium"
    """Aggregate 0-4 with any single parameter scoring 3 (a "red score"): at least
    hourly; the nurse informs the medical team, who review and decide whether to
    escalate (urgent ward-based response)."""
    MEDIUM = "medium"
    """Aggregate 5-6 (key threshold for urgent response): at least hourly; the nurse
    informs the medical team at once; urgent review by a clinician competent in acute
    illness, in an environment with monitoring facilities."""
    HIGH = "high"
    """Aggregate 7 or more (emergency response): continuous monitoring; emergency
    assessment by a team with critical-care competencies (e.g. outreach), usually with
    transfer to a higher level of care."""


@dataclass(frozen=True, slots=True)
class News2Inputs:
    """One set of NEWS2 observations; ``None`` means not observed.

    Attributes:
        resp_rate_per_min: Respiration rate, breaths/min.
        spo2_percent: Oxygen saturation, % (0-100).
        on_oxygen: True on supplemental oxygen or ventilatory support, False on air.
        sbp_mmhg: Systolic blood pressure, mmHg.
        hr_bpm: Pulse, beats/min.
        consciousness: ACVPU level.
        temp_c: Temperature, °C.
        use_scale_2: Score SpO2 on Scale 2 (prescribed target 88-92 %, e.g. hypercapnic
            respiratory failure) instead of Scale 1.

    Raises:
        ConfigError: A value is not finite, a non-temperature value is negative, or
            SpO2 exceeds 100 %.
    """

    resp_rate_per_min: float | None = None
    spo2_percent: float | None = None
    on_oxygen: bool | None = None
    sbp_mmhg: float | None = None
    hr_bpm: float | None = None
    consciousness: Acvpu | None = None
    temp_c: float | None = None
    use_scale_2: bool = False

    def __post_init__(self) -> None:
        for name in ("resp_rate_per_min", "spo2_percent", "sbp_mmhg", "hr_bpm", "temp_c"):
            value: float | None = getattr(self, name)
            if value is None:
                continue
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be finite, got {value!r}")
            if name != "temp_c" and value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value!r}")
        if self.spo2_percent is not None and self.spo2_percent > 100:
            raise ConfigError(f"spo2_percent must be <= 100, got {self.spo2_percent!r}")


@dataclass(frozen=True, slots=True)
class News2Result:
    """A NEWS2 score over the parameters that were observed.

    Attributes:
        total: Sum of the observed sub-scores, points (0-20). With missing parameters
            it is a lower bound of the true score, and so is ``band``.
        band: Clinical-risk band of ``total`` and the single-3 rule.
        sub_scores: Every parameter in chart order, mapped to its points, or ``None``
            when it could not be scored.
        scored: Parameters that were scored, in chart order.
        missing: Parameters that could not be scored, in chart order.
        complete: True when all seven parameters were scored.
    """

    total: int
    band: News2Band
    sub_scores: Mapping[News2Parameter, int | None]
    scored: tuple[News2Parameter, ...]
    missing: tuple[News2Parameter, ...]
    complete: bool


# Chart rows as (highest value of the row, points), ascending; above the last row the
# "above" points apply. Values are compared after rounding to the chart's precision.
_RR_ROWS: Final = ((8, 3), (11, 1), (20, 0), (24, 2))
_RR_ABOVE: Final = 3
_SPO2_SCALE_1_ROWS: Final = ((91, 3), (93, 2), (95, 1))
_SPO2_SCALE_1_ABOVE: Final = 0
_SPO2_SCALE_2_ROWS: Final = ((83, 3), (85, 2), (87, 1), (92, 0))
_SPO2_SCALE_2_ON_OXYGEN_ROWS: Final = ((94, 1), (96, 2))
_SPO2_SCALE_2_ON_OXYGEN_ABOVE: Final = 3
_SBP_ROWS: Final = ((90, 3), (100, 2), (110, 1), (219, 0))
_SBP_ABOVE: Final = 3
_HR_ROWS: Final = ((40, 3), (50, 1), (90, 0), (110, 1), (130, 2))
_HR_ABOVE: Final = 3
_TEMP_ROWS: Final = (
    (Decimal("35.0"), 3),
    (Decimal("36.0"), 1),
    (Decimal("38.0"), 0),
    (Decimal("39.0"), 1),
)
_TEMP_ABOVE: Final = 2
_OXYGEN_POINTS: Final = 2
_NOT_ALERT_POINTS: Final = 3
_RED_SCORE: Final = 3
_HIGH_FROM: Final = 7
_MEDIUM_FROM: Final = 5
_AIR_FIO2_FRACTION: Final = 0.21


def _round_half_up(value: float, places: int) -> Decimal:
    """Rounds ``value`` half up (away from zero) to ``places`` decimals."""
    return Decimal(repr(value)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def _row_points(value: Decimal, rows: tuple[tuple[Decimal | int, int], ...], above: int) -> int:
    for highest, points in rows:
        if value <= highest:
            return points
    return above


def _score_spo2(spo2_percent: float, *, use_scale_2: bool, on_oxygen: bool | None) -> int | None:
    spo2 = _round_half_up(spo2_percent, 0)
    if not use_scale_2:
        return _row_points(spo2, _SPO2_SCALE_1_ROWS, _SPO2_SCALE_1_ABOVE)
    if spo2 <= _SPO2_SCALE_2_ROWS[-1][0]:
        return _row_points(spo2, _SPO2_SCALE_2_ROWS, 0)
    if on_oxygen is None:
        return None  # Scale 2 at >= 93 % depends on air vs oxygen, which is unknown.
    if not on_oxygen:
        return 0
    return _row_points(spo2, _SPO2_SCALE_2_ON_OXYGEN_ROWS, _SPO2_SCALE_2_ON_OXYGEN_ABOVE)


def news2_band(total: int, *, any_single_three: bool) -> News2Band:
    """Maps an aggregate score to its RCP clinical-risk band.

    Args:
        total: Aggregate NEWS2, points.
        any_single_three: True when any one parameter scored 3.

    Returns:
        HIGH for 7 or more, MEDIUM for 5-6, else LOW_MEDIUM with a single 3, else LOW.
    """
    if total >= _HIGH_FROM:
        return News2Band.HIGH
    if total >= _MEDIUM_FROM:
        return News2Band.MEDIUM
    return News2Band.LOW_MEDIUM if any_single_three else News2Band.LOW


def score_news2(inputs: News2Inputs) -> News2Result:
    """Scores NEWS2 on the RCP 2017 chart, counting only the observed parameters.

    Args:
        inputs: Observations in chart units; ``None`` values are reported missing.

    Returns:
        The total, band and per-parameter sub-scores. On Scale 2 an SpO2 of 93 % or
        more with ``on_oxygen`` unknown cannot be scored, so SpO2 is reported missing.
    """
    i = inputs
    sub: dict[News2Parameter, int | None] = {
        News2Parameter.RESPIRATION_RATE: None
        if i.resp_rate_per_min is None
        else _row_points(_round_half_up(i.resp_rate_per_min, 0), _RR_ROWS, _RR_ABOVE),
        News2Parameter.SPO2: None
        if i.spo2_percent is None
        else _score_spo2(i.spo2_percent, use_scale_2=i.use_scale_2, on_oxygen=i.on_oxygen),
        News2Parameter.AIR_OR_OXYGEN: None
        if i.on_oxygen is None
        else (_OXYGEN_POINTS if i.on_oxygen else 0),
        News2Parameter.SYSTOLIC_BP: None
        if i.sbp_mmhg is None
        else _row_points(_round_half_up(i.sbp_mmhg, 0), _SBP_ROWS, _SBP_ABOVE),
        News2Parameter.PULSE: None
        if i.hr_bpm is None
        else _row_points(_round_half_up(i.hr_bpm, 0), _HR_ROWS, _HR_ABOVE),
        News2Parameter.CONSCIOUSNESS: None
        if i.consciousness is None
        else (0 if i.consciousness is Acvpu.ALERT else _NOT_ALERT_POINTS),
        News2Parameter.TEMPERATURE: None
        if i.temp_c is None
        else _row_points(_round_half_up(i.temp_c, 1), _TEMP_ROWS, _TEMP_ABOVE),
    }
    observed = [points for points in sub.values() if points is not None]
    total = sum(observed)
    missing = tuple(p for p, points in sub.items() if points is None)
    return News2Result(
        total=total,
        band=news2_band(total, any_single_three=_RED_SCORE in observed),
        sub_scores=MappingProxyType(sub),
        scored=tuple(p for p, points in sub.items() if points is not None),
        missing=missing,
        complete=not missing,
    )


def on_oxygen_from_ventilation(fio2_fraction: float | None, mech_vent: bool | None) -> bool | None:
    """Proxy for the chart's "air or oxygen" row.

    Args:
        fio2_fraction: Fraction of inspired oxygen, 0-1 (0.21 is room air).
        mech_vent: True when mechanically ventilated.

    Returns:
        True when ventilated or FiO2 > 0.21; False when FiO2 <= 0.21 and not known to be
        ventilated; None when FiO2 is unknown and ventilation is not known to be on
        (not being ventilated says nothing about a nasal cannula or mask).

    Raises:
        ConfigError: FiO2 is not in 0-1 (a percentage passed by mistake, for example).
    """
    if fio2_fraction is not None and not 0 <= fio2_fraction <= 1:
        raise ConfigError(f"fio2_fraction must be within 0-1, got {fio2_fraction!r}")
    if mech_vent is True:
        return True
    if fio2_fraction is None:
        return None
    return fio2_fraction > _AIR_FIO2_FRACTION


def consciousness_from_gcs(gcs: float | None) -> Acvpu | None:
    """Proxy for ACVPU from the Glasgow Coma Scale (3-15, rounded half up).

    15 is ALERT; 13-14 CONFUSION; 9-12 VOICE; 4-8 PAIN; 3 (no eye, verbal or motor
    response) UNRESPONSIVE. NEWS2 scores every level but ALERT as 3, so only the label,
    never the points, depends on the graded cut-offs.

    Args:
        gcs: Total GCS, or None.

    Returns:
        The ACVPU level, or None when ``gcs`` is None.

    Raises:
        ConfigError: GCS is not finite or is outside 3-15 after rounding.
    """
    if gcs is None:
        return None
    if not math.isfinite(gcs):
        raise ConfigError(f"gcs must be finite, got {gcs!r}")
    score = int(_round_half_up(gcs, 0))
    if not 3 <= score <= 15:
        raise ConfigError(f"gcs must be within 3-15, got {gcs!r}")
    if score == 15:
        return Acvpu.ALERT
    if score >= 13:
        return Acvpu.CONFUSION
    if score >= 9:
        return Acvpu.VOICE
    if score >= 4:
        return Acvpu.PAIN
    return Acvpu.UNRESPONSIVE


def spo2_with_sao2_fallback(spo2_percent: float | None, sao2_percent: float | None) -> float | None:
    """Pulse-oximetry SpO2 (%) when present, else arterial SaO2 (%), else None."""
    return sao2_percent if spo2_percent is None else spo2_percent


def latest_systolic_bp(
    invasive: Observation | None, non_invasive: Observation | None
) -> Observation | None:
    """The more recent of invasive (arterial) and non-invasive systolic pressure.

    Args:
        invasive: Arterial-line systolic pressure (mmHg) and its time, or None.
        non_invasive: Cuff systolic pressure (mmHg) and its time, or None.

    Returns:
        The more recent observation; on a tie the arterial one, the reference method.
    """
    if invasive is None:
        return non_invasive
    if non_invasive is None:
        return invasive
    return non_invasive if non_invasive[1] > invasive[1] else invasive


def _require_aware(moment: datetime, what: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ConfigError(f"{what} must be timezone-aware, got {moment!r}")


def news2_from_observations(
    latest: Mapping[str, Observation | None],
    *,
    at: datetime,
    max_age: timedelta,
    use_scale_2: bool = False,
) -> News2Result:
    """Scores NEWS2 from the latest observations keyed by PhysioNet 2012 name.

    An observation counts when ``at - max_age <= time <= at``; older ones are stale and
    later ones are not yet known at ``at``; both are treated as absent, before proxies
    apply. Keys read: ``RespRate`` (/min), ``SpO2`` and ``SaO2`` (%), ``FiO2``
    (fraction), ``MechVent`` (0/1), ``SysABP`` and ``NISysABP`` (mmHg), ``HR`` (bpm),
    ``GCS`` (3-15), ``Temp`` (°C). Other keys are ignored.

    Args:
        latest: Latest value and observation time of each parameter, or None.
        at: Scoring time, timezone-aware.
        max_age: Oldest an observation may be and still count; must be >= 0.
        use_scale_2: Score SpO2 on Scale 2.

    Returns:
        The NEWS2 result; stale, future and absent parameters are listed as missing.

    Raises:
        ConfigError: A naive datetime, a negative ``max_age``, ``MechVent`` not 0 or 1,
            or an invalid value (see :class:`News2Inputs` and the proxies).
    """
    _require_aware(at, "at")
    if max_age < timedelta(0):
        raise ConfigError(f"max_age must be >= 0, got {max_age!r}")

    def fresh(name: str) -> Observation | None:
        observation = latest.get(name)
        if observation is None:
            return None
        _require_aware(observation[1], f"{name} time")
        return observation if at - max_age <= observation[1] <= at else None

    def value(name: str) -> float | None:
        observation = fresh(name)
        return None if observation is None else observation[0]

    mech_vent_value = value("MechVent")
    if mech_vent_value is not None and mech_vent_value not in (0, 1):
        raise ConfigError(f"MechVent must be 0 or 1, got {mech_vent_value!r}")
    sbp = latest_systolic_bp(fresh("SysABP"), fresh("NISysABP"))
    return score_news2(
        News2Inputs(
            resp_rate_per_min=value("RespRate"),
            spo2_percent=spo2_with_sao2_fallback(value("SpO2"), value("SaO2")),
            on_oxygen=on_oxygen_from_ventilation(
                value("FiO2"), None if mech_vent_value is None else mech_vent_value == 1
            ),
            sbp_mmhg=None if sbp is None else sbp[0],
            hr_bpm=value("HR"),
            consciousness=consciousness_from_gcs(value("GCS")),
            temp_c=value("Temp"),
            use_scale_2=use_scale_2,
        )
    )
