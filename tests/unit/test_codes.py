from __future__ import annotations

import re

import pytest

from streams.core.codes import (
    CODES,
    PHYSIONET2019_NOT_OBSERVATIONS,
    Category,
    CodeInfo,
    by_loinc,
    by_physionet2019,
    get_code,
)
from vigil.errors import SchemaError

PHYSIONET2012 = [
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
    "Age",
    "Gender",
    "Height",
    "ICUType",
]

PHYSIONET2019_HEADER = [
    "HR",
    "O2Sat",
    "Temp",
    "SBP",
    "MAP",
    "DBP",
    "Resp",
    "EtCO2",
    "BaseExcess",
    "HCO3",
    "FiO2",
    "pH",
    "PaCO2",
    "SaO2",
    "AST",
    "BUN",
    "Alkalinephos",
    "Calcium",
    "Chloride",
    "Creatinine",
    "Bilirubin_direct",
    "Glucose",
    "Lactate",
    "Magnesium",
    "Phosphate",
    "Potassium",
    "Bilirubin_total",
    "TroponinI",
    "Hct",
    "Hgb",
    "PTT",
    "WBC",
    "Fibrinogen",
    "Platelets",
    "Age",
    "Gender",
    "Unit1",
    "Unit2",
    "HospAdmTime",
    "ICULOS",
    "SepsisLabel",
]


def _loinc_check_digit(base: str) -> int:
    # LOINC's mod-10 check digit (the Luhn algorithm over the base number).
    total = 0
    for position, char in enumerate(reversed(base)):
        digit = int(char) * (2 if position % 2 == 0 else 1)
        total += digit // 10 + digit % 10
    return (10 - total % 10) % 10


def test_every_physionet2012_parameter_is_a_code() -> None:
    assert set(PHYSIONET2012) <= set(CODES)


def test_every_physionet2019_column_is_mapped_or_documented() -> None:
    assert len(PHYSIONET2019_HEADER) == 41
    for column in PHYSIONET2019_HEADER:
        info = by_physionet2019(column)
        if info is None:
            assert column in PHYSIONET2019_NOT_OBSERVATIONS
        else:
            assert column in info.physionet2019


def test_2019_columns_map_to_one_code_each() -> None:
    columns = [column for info in CODES.values() for column in info.physionet2019]
    assert len(columns) == len(set(columns))
    assert set(columns) | set(PHYSIONET2019_NOT_OBSERVATIONS) == set(PHYSIONET2019_HEADER)


@pytest.mark.parametrize(
    ("column", "code"),
    [
        ("O2Sat", "SpO2"),
        ("SaO2", "SaO2"),
        ("SBP", "SysABP"),
        ("DBP", "DiasABP"),
        ("MAP", "MAP"),
        ("Resp", "RespRate"),
        ("Bilirubin_total", "Bilirubin"),
        ("Bilirubin_direct", "Bilirubin_direct"),
        ("Alkalinephos", "ALP"),
        ("Magnesium", "Mg"),
        ("Potassium", "K"),
        ("Hct", "HCT"),
        ("EtCO2", "EtCO2"),
        ("Hgb", "Hgb"),
        ("Age", "Age"),
        ("Gender", "Gender"),
    ],
)
def test_physionet2019_mapping(column: str, code: str) -> None:
    info = by_physionet2019(column)
    assert info is not None
    assert info.code == code


@pytest.mark.parametrize("column", ["Unit1", "Unit2", "HospAdmTime", "ICULOS", "SepsisLabel"])
def test_physionet2019_non_observations(column: str) -> None:
    assert by_physionet2019(column) is None


def test_unknown_2019_column() -> None:
    with pytest.raises(SchemaError) as caught:
        by_physionet2019("O2sat")
    assert caught.value.reason == "unknown_code"


def test_get_code() -> None:
    assert get_code("HR").loinc == "8867-4"
    with pytest.raises(SchemaError) as caught:
        get_code("hr")
    assert caught.value.reason == "unknown_code"


@pytest.mark.parametrize(
    ("code", "loinc"),
    [
        ("HR", "8867-4"),
        ("RespRate", "9279-1"),
        ("Temp", "8310-5"),
        ("SpO2", "59408-5"),
        ("SaO2", "2708-6"),
        ("SysABP", "8480-6"),
        ("GCS", "9269-2"),
        ("Glucose", "2345-7"),
        ("Creatinine", "2160-0"),
    ],
)
def test_by_loinc(code: str, loinc: str) -> None:
    assert by_loinc(loinc).code == code


def test_unknown_loinc() -> None:
    with pytest.raises(SchemaError) as caught:
        by_loinc("0000-0")
    assert caught.value.reason == "unknown_code"


def test_loinc_codes_are_unique_and_well_formed() -> None:
    loincs = [info.loinc for info in CODES.values() if info.loinc is not None]
    assert len(loincs) == len(set(loincs))
    for loinc in loincs:
        match = re.fullmatch(r"(\d{1,7})-(\d)", loinc)
        assert match is not None, loinc
        assert _loinc_check_digit(match[1]) == int(match[2]), loinc
        assert by_loinc(loinc).loinc == loinc


@pytest.mark.parametrize("info", list(CODES.values()), ids=list(CODES))
def test_entry_is_consistent(info: CodeInfo) -> None:
    assert CODES[info.code] is info
    assert isinstance(info.category, Category)
    assert info.unit
    assert info.description
    assert info.low < info.high
    assert info.is_plausible(info.low)
    assert info.is_plausible(info.high)
    assert not info.is_plausible(info.high + 1e-6)
    assert not info.is_plausible(info.low - 1e-6)


@pytest.mark.parametrize(
    ("code", "value", "plausible"),
    [
        ("HR", 0.0, True),  # asystole is a value
        ("HR", 301.0, False),
        ("Temp", -17.8, False),  # seen in PhysioNet 2012
        ("Temp", 37.0, True),
        ("pH", 735.0, False),  # seen in PhysioNet 2012 (pH x 100)
        ("pH", 7.35, True),
        ("SpO2", 0.0, True),  # dropout is a value
        ("FiO2", 21.0, False),  # a percentage sent as a fraction
        ("FiO2", 0.21, True),
        ("Height", 431.8, False),  # seen in PhysioNet 2012
        ("Urine", 0.0, True),  # anuria
        ("BaseExcess", -12.0, True),
    ],
)
def test_plausible_ranges(code: str, value: float, plausible: bool) -> None:
    assert get_code(code).is_plausible(value) is plausible


def test_codes_are_frozen() -> None:
    info = get_code("HR")
    with pytest.raises(AttributeError):
        info.low = 1.0  # type: ignore[misc]
