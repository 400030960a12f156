"""Tests for streams.core.news2 against the RCP 2017 NEWS2 chart."""

from __future__ import annotations

import ast
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core import news2
from streams.core.features import SERIES_CODES
from streams.core.news2 import (
    NEWS2_INPUT_CODES,
    Acvpu,
    News2Band,
    News2Inputs,
    News2Parameter,
    Observation,
    consciousness_from_gcs,
    latest_systolic_bp,
    news2_band,
    news2_from_observations,
    on_oxygen_from_ventilation,
    score_news2,
    spo2_with_sao2_fallback,
)
from vigil.errors import ConfigError

P = News2Parameter
AT = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
AGE = timedelta(hours=4)


def _sub(parameter: News2Parameter, **fields: Any) -> int | None:
    return score_news2(News2Inputs(**fields)).sub_scores[parameter]


# --- every band edge of every parameter, both sides --------------------------------


@pytest.mark.parametrize(
    ("value", "points"),
    [(0, 3), (8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3), (60, 3)],
)
def test_respiration_rate_edges(value: float, points: int) -> None:
    assert _sub(P.RESPIRATION_RATE, resp_rate_per_min=value) == points


@pytest.mark.parametrize(
    ("value", "points"),
    # RCP Chart 1, Scale 1: <=91 -> 3, 92-93 -> 2, 94-95 -> 1, >=96 -> 0.
    [(0, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)],
)
@pytest.mark.parametrize("on_oxygen", [None, False, True])
def test_spo2_scale_1_edges_ignore_oxygen(
    value: float, points: int, on_oxygen: bool | None
) -> None:
    assert _sub(P.SPO2, spo2_percent=value, on_oxygen=on_oxygen) == points


@pytest.mark.parametrize(
    ("value", "on_oxygen", "points"),
    [
        (83, None, 3),
        (84, None, 2),
        (85, False, 2),
        (86, True, 1),
        (87, None, 1),
        (88, None, 0),
        (92, True, 0),
        (92, False, 0),
        (93, False, 0),
        (100, False, 0),
        (93, True, 1),
        (94, True, 1),
        (95, True, 2),
        (96, True, 2),
        (97, True, 3),
        (100, True, 3),
    ],
)
def test_spo2_scale_2_rows(value: float, on_oxygen: bool | None, points: int) -> None:
    inputs = {"spo2_percent": value, "on_oxygen": on_oxygen, "use_scale_2": True}
    assert _sub(P.SPO2, **inputs) == points


@pytest.mark.parametrize("value", [93, 97, 100])
def test_spo2_scale_2_at_93_or_more_without_oxygen_status_is_missing(value: float) -> None:
    result = score_news2(News2Inputs(spo2_percent=value, use_scale_2=True))
    assert result.sub_scores[P.SPO2] is None
    assert P.SPO2 in result.missing


@pytest.mark.parametrize(("on_oxygen", "points"), [(False, 0), (True, 2)])
def test_air_or_oxygen(on_oxygen: bool, points: int) -> None:
    assert _sub(P.AIR_OR_OXYGEN, on_oxygen=on_oxygen) == points


@pytest.mark.parametrize(
    ("value", "points"),
    [
        (0, 3),
        (90, 3),
        (91, 2),
        (100, 2),
        (101, 1),
        (110, 1),
        (111, 0),
        (219, 0),
        (220, 3),
        (260, 3),
    ],
)
def test_systolic_bp_edges(value: float, points: int) -> None:
    assert _sub(P.SYSTOLIC_BP, sbp_mmhg=value) == points


@pytest.mark.parametrize(
    ("value", "points"),
    [
        (0, 3),
        (40, 3),
        (41, 1),
        (50, 1),
        (51, 0),
        (90, 0),
        (91, 1),
        (110, 1),
        (111, 2),
        (130, 2),
        (131, 3),
        (220, 3),
    ],
)
def test_pulse_edges(value: float, points: int) -> None:
    assert _sub(P.PULSE, hr_bpm=value) == points


@pytest.mark.parametrize(
    ("value", "points"),
    [
        (30.0, 3),
        (35.0, 3),
        (35.1, 1),
        (36.0, 1),
        (36.1, 0),
        (38.0, 0),
        (38.1, 1),
        (39.0, 1),
        (39.1, 2),
        (42.0, 2),
    ],
)
def test_temperature_edges(value: float, points: int) -> None:
    assert _sub(P.TEMPERATURE, temp_c=value) == points


@pytest.mark.parametrize(
    ("level", "points"),
    [
        (Acvpu.ALERT, 0),
        (Acvpu.CONFUSION, 3),
        (Acvpu.VOICE, 3),
        (Acvpu.PAIN, 3),
        (Acvpu.UNRESPONSIVE, 3),
    ],
)
def test_consciousness(level: Acvpu, points: int) -> None:
    assert _sub(P.CONSCIOUSNESS, consciousness=level) == points


# --- rounding: half up to the chart's precision before banding ----------------------


@pytest.mark.parametrize(
    ("field", "parameter", "value", "points"),
    [
        ("resp_rate_per_min", P.RESPIRATION_RATE, 8.49, 3),
        ("resp_rate_per_min", P.RESPIRATION_RATE, 8.5, 1),
        ("resp_rate_per_min", P.RESPIRATION_RATE, 20.49, 0),
        ("resp_rate_per_min", P.RESPIRATION_RATE, 20.5, 2),
        ("spo2_percent", P.SPO2, 91.49, 3),
        ("spo2_percent", P.SPO2, 91.5, 2),
        ("spo2_percent", P.SPO2, 95.5, 0),
        ("sbp_mmhg", P.SYSTOLIC_BP, 90.4, 3),
        ("sbp_mmhg", P.SYSTOLIC_BP, 90.5, 2),
        ("sbp_mmhg", P.SYSTOLIC_BP, 219.4, 0),
        ("sbp_mmhg", P.SYSTOLIC_BP, 219.5, 3),
        ("hr_bpm", P.PULSE, 90.49, 0),
        ("hr_bpm", P.PULSE, 90.5, 1),
        ("hr_bpm", P.PULSE, 130.5, 3),
        ("temp_c", P.TEMPERATURE, 35.04, 3),
        ("temp_c", P.TEMPERATURE, 35.05, 1),  # the float is 35.0499..., its repr 35.05
        ("temp_c", P.TEMPERATURE, 38.049, 0),
        ("temp_c", P.TEMPERATURE, 38.05, 1),
        ("temp_c", P.TEMPERATURE, 39.05, 2),
    ],
)
def test_fractional_inputs_round_half_up(
    field: str, parameter: News2Parameter, value: float, points: int
) -> None:
    assert _sub(parameter, **{field: value}) == points


# --- aggregate and bands --------------------------------------------------------------

NORMAL = News2Inputs(
    resp_rate_per_min=16,
    spo2_percent=98,
    on_oxygen=False,
    sbp_mmhg=120,
    hr_bpm=70,
    consciousness=Acvpu.ALERT,
    temp_c=37.0,
)


def _with(**changes: Any) -> News2Inputs:
    return dataclasses.replace(NORMAL, **changes)


@pytest.mark.parametrize(
    ("inputs", "total", "band"),
    [
        (NORMAL, 0, News2Band.LOW),
        (_with(hr_bpm=95), 1, News2Band.LOW),
        (_with(hr_bpm=95, temp_c=38.5, resp_rate_per_min=10), 3, News2Band.LOW),
        (_with(on_oxygen=True, hr_bpm=115), 4, News2Band.LOW),
        (_with(consciousness=Acvpu.CONFUSION), 3, News2Band.LOW_MEDIUM),
        (_with(sbp_mmhg=85, hr_bpm=95), 4, News2Band.LOW_MEDIUM),
        (_with(on_oxygen=True, hr_bpm=115, temp_c=38.5), 5, News2Band.MEDIUM),
        (_with(sbp_mmhg=85, hr_bpm=95, temp_c=38.5), 5, News2Band.MEDIUM),
        (_with(on_oxygen=True, hr_bpm=115, resp_rate_per_min=22), 6, News2Band.MEDIUM),
        (_with(on_oxygen=True, hr_bpm=115, resp_rate_per_min=22, temp_c=38.5), 7, News2Band.HIGH),
        (
            News2Inputs(
                resp_rate_per_min=30,
                spo2_percent=85,
                on_oxygen=True,
                sbp_mmhg=80,
                hr_bpm=140,
                consciousness=Acvpu.UNRESPONSIVE,
                temp_c=34.0,
            ),
            20,
            News2Band.HIGH,
        ),
    ],
)
def test_aggregate_and_band(inputs: News2Inputs, total: int, band: News2Band) -> None:
    result = score_news2(inputs)
    assert result.total == total
    assert result.band is band
    assert result.complete
    assert result.missing == ()
    assert result.scored == tuple(P)


@pytest.mark.parametrize(
    ("total", "any_single_three", "band"),
    [
        (0, False, News2Band.LOW),
        (4, False, News2Band.LOW),
        (3, True, News2Band.LOW_MEDIUM),
        (4, True, News2Band.LOW_MEDIUM),
        (5, False, News2Band.MEDIUM),
        (6, True, News2Band.MEDIUM),
        (7, False, News2Band.HIGH),
        (7, True, News2Band.HIGH),
        (20, True, News2Band.HIGH),
    ],
)
def test_news2_band(total: int, any_single_three: bool, band: News2Band) -> None:
    assert news2_band(total, any_single_three=any_single_three) is band


def test_scale_2_red_score_on_oxygen_triggers_single_three() -> None:
    result = score_news2(_with(use_scale_2=True, spo2_percent=97, on_oxygen=True))
    assert result.sub_scores[P.SPO2] == 3
    assert result.total == 5  # 3 for SpO2 + 2 for oxygen
    assert result.band is News2Band.MEDIUM


# --- missing parameters --------------------------------------------------------------


def test_all_missing() -> None:
    result = score_news2(News2Inputs())
    assert result.total == 0
    assert result.band is News2Band.LOW
    assert not result.complete
    assert result.scored == ()
    assert result.missing == tuple(P)
    assert dict(result.sub_scores) == dict.fromkeys(P)


def test_missing_parameters_are_listed_and_not_counted() -> None:
    result = score_news2(News2Inputs(resp_rate_per_min=26, hr_bpm=0, temp_c=None))
    assert result.total == 6
    assert result.band is News2Band.MEDIUM
    assert result.scored == (P.RESPIRATION_RATE, P.PULSE)
    assert result.missing == (
        P.SPO2,
        P.AIR_OR_OXYGEN,
        P.SYSTOLIC_BP,
        P.CONSCIOUSNESS,
        P.TEMPERATURE,
    )
    assert not result.complete
    assert result.sub_scores[P.PULSE] == 3  # zero is a value (asystole), not missing
    assert list(result.sub_scores) == list(P)


def test_sub_scores_are_read_only() -> None:
    result = score_news2(NORMAL)
    with pytest.raises(TypeError):
        result.sub_scores[P.PULSE] = 3  # type: ignore[index]


@pytest.mark.parametrize(
    "fields",
    [
        {"hr_bpm": float("nan")},
        {"temp_c": float("inf")},
        {"resp_rate_per_min": -1.0},
        {"sbp_mmhg": -0.5},
        {"spo2_percent": 100.5},
    ],
)
def test_invalid_inputs_raise(fields: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        News2Inputs(**fields)  # type: ignore[arg-type]


# --- property ------------------------------------------------------------------------

_optional_value = st.one_of(st.none(), st.floats(min_value=0, max_value=300))


@given(
    rr=_optional_value,
    spo2=st.one_of(st.none(), st.floats(min_value=0, max_value=100)),
    on_oxygen=st.one_of(st.none(), st.booleans()),
    sbp=_optional_value,
    hr=_optional_value,
    level=st.one_of(st.none(), st.sampled_from(Acvpu)),
    temp=st.one_of(st.none(), st.floats(min_value=20, max_value=45)),
    use_scale_2=st.booleans(),
)
def test_total_is_sum_of_sub_scores_within_0_to_20(
    rr: float | None,
    spo2: float | None,
    on_oxygen: bool | None,
    sbp: float | None,
    hr: float | None,
    level: Acvpu | None,
    temp: float | None,
    use_scale_2: bool,
) -> None:
    result = score_news2(
        News2Inputs(rr, spo2, on_oxygen, sbp, hr, level, temp, use_scale_2=use_scale_2)
    )
    observed = [p for p in result.sub_scores.values() if p is not None]
    assert result.total == sum(observed)
    assert 0 <= result.total <= 20
    assert set(result.sub_scores) == set(P)
    assert len(result.scored) == len(observed)
    assert set(result.scored) | set(result.missing) == set(P)
    assert result.complete is (not result.missing)
    assert result.band is news2_band(result.total, any_single_three=3 in observed)


# --- proxies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fio2", "mech_vent", "expected"),
    [
        (None, None, None),
        (None, False, None),
        (None, True, True),
        (0.21, None, False),
        (0.21, False, False),
        (0.21, True, True),
        (0.22, None, True),
        (0.4, False, True),
        (1.0, None, True),
        (0.0, None, False),
    ],
)
def test_on_oxygen_from_ventilation(
    fio2: float | None, mech_vent: bool | None, expected: bool | None
) -> None:
    assert on_oxygen_from_ventilation(fio2, mech_vent) is expected


@pytest.mark.parametrize("fio2", [-0.1, 1.01, 21.0, float("nan")])
def test_on_oxygen_rejects_fio2_outside_fraction(fio2: float) -> None:
    with pytest.raises(ConfigError):
        on_oxygen_from_ventilation(fio2, None)


@pytest.mark.parametrize(
    ("gcs", "level"),
    [
        (None, None),
        (15, Acvpu.ALERT),
        (14.5, Acvpu.ALERT),
        (14.49, Acvpu.CONFUSION),
        (14, Acvpu.CONFUSION),
        (13, Acvpu.CONFUSION),
        (12, Acvpu.VOICE),
        (9, Acvpu.VOICE),
        (8, Acvpu.PAIN),
        (4, Acvpu.PAIN),
        (3, Acvpu.UNRESPONSIVE),
    ],
)
def test_consciousness_from_gcs(gcs: float | None, level: Acvpu | None) -> None:
    assert consciousness_from_gcs(gcs) is level


@pytest.mark.parametrize("gcs", [2, 16, 2.49, float("nan"), float("inf")])
def test_consciousness_from_gcs_rejects_out_of_range(gcs: float) -> None:
    with pytest.raises(ConfigError):
        consciousness_from_gcs(gcs)


@pytest.mark.parametrize(
    ("spo2", "sao2", "expected"),
    [
        (None, None, None),
        (97.0, None, 97.0),
        (None, 91.0, 91.0),
        (97.0, 91.0, 97.0),
        (0.0, 91.0, 0.0),
    ],
)
def test_spo2_with_sao2_fallback(
    spo2: float | None, sao2: float | None, expected: float | None
) -> None:
    assert spo2_with_sao2_fallback(spo2, sao2) == expected


EARLY = AT - timedelta(minutes=30)


@pytest.mark.parametrize(
    ("invasive", "non_invasive", "expected"),
    [
        (None, None, None),
        ((100.0, EARLY), None, (100.0, EARLY)),
        (None, (120.0, EARLY), (120.0, EARLY)),
        ((100.0, EARLY), (120.0, AT), (120.0, AT)),
        ((100.0, AT), (120.0, EARLY), (100.0, AT)),
        ((100.0, AT), (120.0, AT), (100.0, AT)),
    ],
)
def test_latest_systolic_bp(
    invasive: Observation | None, non_invasive: Observation | None, expected: Observation | None
) -> None:
    assert latest_systolic_bp(invasive, non_invasive) == expected


# --- from observations: staleness and proxies wired together ------------------------


def _obs(value: float, age: timedelta = timedelta(minutes=10)) -> Observation:
    return (value, AT - age)


FULL: dict[str, Observation | None] = {
    "RespRate": _obs(16),
    "SpO2": _obs(98),
    "FiO2": _obs(0.21),
    "SysABP": _obs(120),
    "HR": _obs(70),
    "GCS": _obs(15),
    "Temp": _obs(37.0),
}


class _ReadLog(dict[str, Observation | None]):
    """A dict that records which keys were read."""

    def __init__(self, data: dict[str, Observation | None]) -> None:
        super().__init__(data)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Observation | None:
        self.read.add(key)
        return super().__getitem__(key)


def test_input_codes_are_exactly_the_keys_read() -> None:
    # The worker hands NEWS2 only these codes (PatientState.news2), so the set must be
    # complete: every key the scorer reads, and nothing it never reads.
    every = _ReadLog({code: _obs(1.0) for code in (*SERIES_CODES, "MechVent", "SaO2")})
    every.update(FULL)
    every["MechVent"] = _obs(0.0)
    news2_from_observations(every, at=AT, max_age=AGE)
    assert every.read == set(NEWS2_INPUT_CODES)


def test_from_observations_complete_normal() -> None:
    result = news2_from_observations(FULL, at=AT, max_age=AGE)
    assert result.complete
    assert result.total == 0
    assert result.band is News2Band.LOW


def test_from_observations_matches_direct_scoring() -> None:
    latest = {
        "RespRate": _obs(22),
        "SpO2": _obs(93),
        "FiO2": _obs(0.35),
        "NISysABP": _obs(105),
        "HR": _obs(112),
        "GCS": _obs(14),
        "Temp": _obs(38.4),
        "Lactate": _obs(3.1),  # not a NEWS2 input: ignored
    }
    result = news2_from_observations(latest, at=AT, max_age=AGE)
    direct = score_news2(
        News2Inputs(22, 93, True, 105, 112, Acvpu.CONFUSION, 38.4, use_scale_2=False)
    )
    assert result == direct
    assert result.total == 2 + 2 + 2 + 1 + 2 + 3 + 1


@pytest.mark.parametrize(
    ("age", "counted"),
    [
        (timedelta(0), True),
        (AGE, True),
        (AGE + timedelta(seconds=1), False),
        (-timedelta(seconds=1), False),  # observed after the scoring time
    ],
)
def test_from_observations_staleness_edge(age: timedelta, counted: bool) -> None:
    result = news2_from_observations({"HR": _obs(140, age)}, at=AT, max_age=AGE)
    assert result.sub_scores[P.PULSE] == (3 if counted else None)
    assert (P.PULSE in result.missing) is not counted


def test_from_observations_stale_and_absent_are_missing() -> None:
    latest = dict(FULL, Temp=_obs(39.5, timedelta(hours=5)), GCS=None)
    del latest["RespRate"]
    result = news2_from_observations(latest, at=AT, max_age=AGE)
    assert result.missing == (P.RESPIRATION_RATE, P.CONSCIOUSNESS, P.TEMPERATURE)
    assert not result.complete
    assert result.total == 0


@pytest.mark.parametrize(
    ("spo2", "sao2", "points"),
    [
        (_obs(98), _obs(90), 0),  # SpO2 present: SaO2 ignored
        (None, _obs(90), 3),  # SpO2 absent: SaO2 used
        (_obs(98, timedelta(hours=5)), _obs(90), 3),  # SpO2 stale: SaO2 used
        (None, _obs(90, timedelta(hours=5)), None),  # both unusable
    ],
)
def test_from_observations_spo2_proxy(
    spo2: Observation | None, sao2: Observation | None, points: int | None
) -> None:
    result = news2_from_observations({"SpO2": spo2, "SaO2": sao2}, at=AT, max_age=AGE)
    assert result.sub_scores[P.SPO2] == points


@pytest.mark.parametrize(
    ("fio2", "mech_vent", "points"),
    [
        (None, None, None),
        (_obs(0.21), None, 0),
        (_obs(0.5), None, 2),
        (_obs(0.21), _obs(1), 2),
        (None, _obs(1), 2),
        (None, _obs(0), None),
        (_obs(0.21), _obs(0), 0),
        (_obs(0.5, timedelta(hours=5)), None, None),  # stale FiO2
        (_obs(0.21), _obs(1, timedelta(hours=5)), 0),  # stale ventilation flag
    ],
)
def test_from_observations_oxygen_proxy(
    fio2: Observation | None, mech_vent: Observation | None, points: int | None
) -> None:
    result = news2_from_observations({"FiO2": fio2, "MechVent": mech_vent}, at=AT, max_age=AGE)
    assert result.sub_scores[P.AIR_OR_OXYGEN] == points


@pytest.mark.parametrize(
    ("arterial", "cuff", "points"),
    [
        (_obs(85, timedelta(minutes=5)), _obs(150, timedelta(minutes=50)), 3),  # arterial newer
        (_obs(85, timedelta(minutes=50)), _obs(150, timedelta(minutes=5)), 0),  # cuff newer
        (_obs(85, timedelta(hours=5)), _obs(150, timedelta(hours=1)), 0),  # arterial stale
        (_obs(85, timedelta(minutes=5)), _obs(150, timedelta(minutes=5)), 3),  # tie: arterial
        (None, _obs(95), 2),
        (_obs(105), None, 1),
    ],
)
def test_from_observations_systolic_bp_prefers_most_recent(
    arterial: Observation | None, cuff: Observation | None, points: int
) -> None:
    result = news2_from_observations({"SysABP": arterial, "NISysABP": cuff}, at=AT, max_age=AGE)
    assert result.sub_scores[P.SYSTOLIC_BP] == points


def test_from_observations_scale_2() -> None:
    latest = {"SpO2": _obs(97), "FiO2": _obs(0.28)}
    assert news2_from_observations(latest, at=AT, max_age=AGE).sub_scores[P.SPO2] == 0
    scale_2 = news2_from_observations(latest, at=AT, max_age=AGE, use_scale_2=True)
    assert scale_2.sub_scores[P.SPO2] == 3


@pytest.mark.parametrize(
    ("latest", "at", "max_age"),
    [
        ({}, AT.replace(tzinfo=None), AGE),
        ({"HR": (70.0, AT.replace(tzinfo=None))}, AT, AGE),
        ({}, AT, timedelta(seconds=-1)),
        ({"MechVent": _obs(2)}, AT, AGE),
        ({"FiO2": _obs(40)}, AT, AGE),
        ({"GCS": _obs(0)}, AT, AGE),
    ],
)
def test_from_observations_rejects_bad_arguments(
    latest: dict[str, Observation | None], at: datetime, max_age: timedelta
) -> None:
    with pytest.raises(ConfigError):
        news2_from_observations(latest, at=at, max_age=max_age)


# --- module hygiene ------------------------------------------------------------------


def test_public_api_is_pinned() -> None:
    assert sorted(news2.__all__) == [
        "Acvpu",
        "NEWS2_INPUT_CODES",
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


def test_core_imports_no_io_library() -> None:
    allowed = {
        "__future__",
        "collections",
        "dataclasses",
        "datetime",
        "decimal",
        "enum",
        "math",
        "types",
        "typing",
        "vigil",
    }
    tree = ast.parse(Path(news2.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.module is not None  # no relative imports in the core
            imported.add(node.module.split(".")[0])
    assert imported <= allowed
