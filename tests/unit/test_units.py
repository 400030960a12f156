from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.codes import CODES
from streams.core.units import CONVERSIONS, accepted_units, canonical_unit, normalise
from vigil.errors import SchemaError

_PRESSURE_CODES: tuple[str, ...] = (
    "SysABP",
    "DiasABP",
    "MAP",
    "NISysABP",
    "NIDiasABP",
    "NIMAP",
    "EtCO2",
)
_PRESSURE_CODES += ("PaO2", "PaCO2")
_MONOVALENT = ("HCO3", "BaseExcess", "K", "Na", "Chloride")

# (code, every spelling of one conversion row, value, expected canonical value).
# Expected values are worked by hand from the stated factors, not from the table.
ROWS: list[tuple[str, tuple[str, ...], float, float]] = [
    ("HR", ("/min", "{beats}/min", "beats/min", "bpm"), 72.0, 72.0),
    ("RespRate", ("/min", "{breaths}/min", "breaths/min", "br/min"), 18.0, 18.0),
    ("Temp", ("Cel", "°C", "degC", "C"), 37.2, 37.2),
    ("Temp", ("[degF]", "°F", "degF", "F"), 98.6, 37.0),
    ("Temp", ("K",), 310.15, 37.0),
    ("GCS", ("{score}", "1", "score"), 15.0, 15.0),
    ("Urine", ("mL", "cm3", "cc"), 120.0, 120.0),
    ("Urine", ("L",), 0.5, 500.0),
    ("FiO2", ("1", "fraction", "{fraction}", "L/L"), 0.4, 0.4),
    ("FiO2", ("%",), 40.0, 0.4),
    ("MechVent", ("1",), 1.0, 1.0),
    ("pH", ("[pH]", "pH", "1"), 7.4, 7.4),
    ("Lactate", ("mg/dL",), 9.008, 1.0),
    ("Mg", ("mg/dL",), 2.0, 2.0),
    ("Mg", ("mmol/L",), 1.0, 2.4305),
    ("Mg", ("meq/L",), 2.0, 2.4305),
    ("Calcium", ("mg/dL",), 9.0, 9.0),
    ("Calcium", ("mmol/L",), 2.5, 10.0195),
    ("Calcium", ("meq/L",), 5.0, 10.0195),
    ("Phosphate", ("mg/dL",), 3.0, 3.0),
    ("Phosphate", ("mmol/L",), 1.0, 3.0974),
    ("BUN", ("mg/dL",), 20.0, 20.0),
    ("BUN", ("mmol/L",), 7.14, 20.001996),
    ("Creatinine", ("mg/dL",), 1.0, 1.0),
    ("Creatinine", ("umol/L", "µmol/L"), 88.4, 0.99998),
    ("Glucose", ("mg/dL",), 100.0, 100.0),
    ("Glucose", ("mmol/L",), 5.5, 99.0858),
    ("Bilirubin", ("mg/dL",), 1.0, 1.0),
    ("Bilirubin", ("umol/L", "µmol/L"), 17.1, 0.9997686),
    ("Bilirubin_direct", ("mg/dL",), 0.3, 0.3),
    ("Bilirubin_direct", ("umol/L", "µmol/L"), 5.13, 0.29993058),
    ("Albumin", ("g/dL",), 3.5, 3.5),
    ("Albumin", ("g/L",), 35.0, 3.5),
    ("Cholesterol", ("mg/dL",), 200.0, 200.0),
    ("Cholesterol", ("mmol/L",), 5.0, 193.325),
    ("HCT", ("%",), 30.0, 30.0),
    ("HCT", ("1", "fraction", "{fraction}", "L/L"), 0.3, 30.0),
    ("Hgb", ("g/dL",), 12.0, 12.0),
    ("Hgb", ("g/L",), 120.0, 12.0),
    ("PTT", ("s", "sec"), 30.0, 30.0),
    ("Fibrinogen", ("mg/dL",), 300.0, 300.0),
    ("Fibrinogen", ("g/L",), 3.0, 300.0),
    ("Age", ("a", "yr", "years"), 64.0, 64.0),
    ("Gender", ("1",), 0.0, 0.0),
    ("ICUType", ("1",), 3.0, 3.0),
    ("Height", ("cm",), 170.0, 170.0),
    ("Height", ("m",), 1.7, 170.0),
    ("Height", ("mm",), 1700.0, 170.0),
    ("Height", ("[in_i]", "in"), 70.0, 177.8),
    ("Weight", ("kg",), 80.0, 80.0),
    ("Weight", ("g",), 80000.0, 80.0),
    ("Weight", ("[lb_av]", "lb", "lbs"), 100.0, 45.359237),
]
for _code in _PRESSURE_CODES:
    ROWS.append((_code, ("mm[Hg]", "mmHg"), 120.0, 120.0))
    ROWS.append((_code, ("kPa",), 1.0, 7.50061683))
for _code in ("SaO2", "SpO2"):
    ROWS.append((_code, ("%",), 97.0, 97.0))
    ROWS.append((_code, ("1", "fraction", "{fraction}", "L/L"), 0.97, 97.0))
for _code in (*_MONOVALENT, "Lactate"):
    ROWS.append((_code, ("mmol/L", "meq/L"), 4.0, 4.0))
for _code in ("ALP", "ALT", "AST"):
    ROWS.append((_code, ("U/L", "[IU]/L", "IU/L"), 50.0, 50.0))
    ROWS.append((_code, ("ukat/L", "µkat/L"), 1.0, 60.0))
for _code in ("TroponinI", "TroponinT"):
    ROWS.append((_code, ("ng/mL", "ug/L", "µg/L"), 0.04, 0.04))
    ROWS.append((_code, ("ng/L", "pg/mL"), 40.0, 0.04))
for _code in ("WBC", "Platelets"):
    ROWS.append((_code, ("10*3/uL", "10^3/uL", "10*9/L", "10^9/L", "K/uL", "/nL"), 7.5, 7.5))

CASES = [
    (code, spelling, value, expected)
    for code, spellings, value, expected in ROWS
    for spelling in spellings
]


@pytest.mark.parametrize(("code", "unit", "value", "expected"), CASES)
def test_conversion(code: str, unit: str, value: float, expected: float) -> None:
    assert normalise(code, value, unit) == pytest.approx(expected, rel=1e-6)


def test_every_row_is_tested() -> None:
    tested = {(code, spellings) for code, spellings, _, _ in ROWS}
    table = {(code, row.spellings) for code, rows in CONVERSIONS.items() for row in rows}
    assert tested == table


def test_every_code_has_units_and_canonical_comes_first() -> None:
    assert set(CONVERSIONS) == set(CODES)
    for code, rows in CONVERSIONS.items():
        assert rows[0].spellings[0] == CODES[code].unit
        assert rows[0].scale == 1.0
        assert rows[0].offset == 0.0
        assert canonical_unit(code) == CODES[code].unit
        assert accepted_units(code)[0] == CODES[code].unit


def test_spellings_do_not_collide_when_folded() -> None:
    for code in CONVERSIONS:
        folded = ["".join(unit.split()).casefold() for unit in accepted_units(code)]
        assert len(folded) == len(set(folded)), code


@pytest.mark.parametrize(
    ("code", "unit", "value", "expected"),
    [
        ("SysABP", "mm Hg", 120.0, 120.0),
        ("SysABP", "MMHG", 120.0, 120.0),
        ("Glucose", " MG/DL ", 100.0, 100.0),
        ("Creatinine", "μmol/L", 88.4, 0.99998),  # Greek mu, not the micro sign
        ("K", "mEq/L", 4.0, 4.0),
    ],
)
def test_spelling_is_case_and_space_insensitive(
    code: str, unit: str, value: float, expected: float
) -> None:
    assert normalise(code, value, unit) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("code", "unit"),
    [("HR", "Hz"), ("Temp", "mmHg"), ("K", "mg/dL"), ("Glucose", ""), ("FiO2", "L/min")],
)
def test_unknown_unit(code: str, unit: str) -> None:
    with pytest.raises(SchemaError) as caught:
        normalise(code, 1.0, unit)
    assert caught.value.reason == "unknown_unit"
    assert code in caught.value.detail


def test_unknown_code() -> None:
    for call in (lambda: normalise("Foo", 1.0, "1"), lambda: canonical_unit("Foo")):
        with pytest.raises(SchemaError) as caught:
            call()
        assert caught.value.reason == "unknown_code"


def test_overflowing_conversion_is_non_finite() -> None:
    with pytest.raises(SchemaError) as caught:
        normalise("SysABP", 1e308, "kPa")
    assert caught.value.reason == "non_finite"


def test_zero_is_a_value() -> None:
    assert normalise("HR", 0.0, "bpm") == 0.0
    assert normalise("Urine", 0.0, "L") == 0.0


@given(
    code=st.sampled_from(sorted(CONVERSIONS)),
    value=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
)
def test_canonical_unit_is_identity(code: str, value: float) -> None:
    assert normalise(code, value, canonical_unit(code)) == value


@given(
    case=st.sampled_from(CASES),
    low=st.floats(min_value=-1e6, max_value=1e6),
    high=st.floats(min_value=-1e6, max_value=1e6),
)
def test_conversions_preserve_order(
    case: tuple[str, str, float, float], low: float, high: float
) -> None:
    code, unit = case[0], case[1]
    if low > high:
        low, high = high, low
    assert normalise(code, low, unit) <= normalise(code, high, unit)
    assert math.isfinite(normalise(code, high, unit))
