"""Table-driven unit normalisation to each code's canonical (UCUM) unit.

Each code accepts a few unit spellings; each row converts linearly,
``canonical = value * scale + offset``. Spellings match ignoring case and whitespace
(``mmHg`` = ``mm Hg`` = ``MMHG``; the micro sign ``µ`` = Greek ``μ``), and no two spellings
of one code collide under that rule. Conversions between mass and substance amount use
the molar masses below and are only offered where the analyte is unambiguous.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from streams.core.codes import CODES
from streams.core.events import DeadLetterReason
from vigil.errors import SchemaError

__all__ = [
    "CONVERSIONS",
    "Conversion",
    "accepted_units",
    "canonical_unit",
    "normalise",
]


@dataclass(frozen=True, slots=True)
class Conversion:
    """One accepted unit of a code.

    Attributes:
        spellings: Accepted spellings; the first is the UCUM form shown in docs.
        scale: Multiplier to the canonical unit.
        offset: Added after scaling (only temperatures have one).
    """

    spellings: tuple[str, ...]
    scale: float = 1.0
    offset: float = 0.0

    def apply(self, value: float) -> float:
        """Convert ``value`` from this unit to the canonical unit."""
        return value * self.scale + self.offset


def _molar(molar_mass_g_per_mol: float, per: str) -> Conversion:
    """Substance concentration to mg/dL: 1 ``per`` = molar mass × factor mg/dL."""
    factor = {"mmol/L": 0.1, "umol/L": 1e-4}[per]
    spellings = ("mmol/L",) if per == "mmol/L" else ("umol/L", "µmol/L")
    return Conversion(spellings, molar_mass_g_per_mol * factor)


_PER_MIN_BEATS = Conversion(("/min", "{beats}/min", "beats/min", "bpm"))
_PER_MIN_BREATHS = Conversion(("/min", "{breaths}/min", "breaths/min", "br/min"))
_MMHG = Conversion(("mm[Hg]", "mmHg"))
_KPA = Conversion(("kPa",), 1000 / 133.322387415)
_PRESSURE = (_MMHG, _KPA)
_PERCENT = Conversion(("%",))
_FRACTION_TO_PERCENT = Conversion(("1", "fraction", "{fraction}", "L/L"), 100.0)
_MMOL = Conversion(("mmol/L", "meq/L"))  # monovalent ions: 1 mEq = 1 mmol
_MG_DL = Conversion(("mg/dL",))
_G_DL = Conversion(("g/dL",))
_G_L_TO_G_DL = Conversion(("g/L",), 0.1)
_ENZYME = (Conversion(("U/L", "[IU]/L", "IU/L")), Conversion(("ukat/L", "µkat/L"), 60.0))
_NG_ML = (
    Conversion(("ng/mL", "ug/L", "µg/L")),
    Conversion(("ng/L", "pg/mL"), 0.001),
)
_COUNT = (Conversion(("10*3/uL", "10^3/uL", "10*9/L", "10^9/L", "K/uL", "/nL")),)
_DIMENSIONLESS = (Conversion(("1",)),)

CONVERSIONS: Final[Mapping[str, tuple[Conversion, ...]]] = MappingProxyType(
    {
        "HR": (_PER_MIN_BEATS,),
        "SysABP": _PRESSURE,
        "DiasABP": _PRESSURE,
        "MAP": _PRESSURE,
        "NISysABP": _PRESSURE,
        "NIDiasABP": _PRESSURE,
        "NIMAP": _PRESSURE,
        "RespRate": (_PER_MIN_BREATHS,),
        "Temp": (
            Conversion(("Cel", "°C", "degC", "C")),
            Conversion(("[degF]", "°F", "degF", "F"), 5 / 9, -32 * 5 / 9),
            Conversion(("K",), 1.0, -273.15),
        ),
        "GCS": (Conversion(("{score}", "1", "score")),),
        "SaO2": (_PERCENT, _FRACTION_TO_PERCENT),
        "SpO2": (_PERCENT, _FRACTION_TO_PERCENT),
        "EtCO2": _PRESSURE,
        "Urine": (Conversion(("mL", "cm3", "cc")), Conversion(("L",), 1000.0)),
        "FiO2": (Conversion(("1", "fraction", "{fraction}", "L/L")), Conversion(("%",), 0.01)),
        "MechVent": _DIMENSIONLESS,
        "pH": (Conversion(("[pH]", "pH", "1")),),
        "PaO2": _PRESSURE,
        "PaCO2": _PRESSURE,
        "HCO3": (_MMOL,),
        "BaseExcess": (_MMOL,),
        "Lactate": (_MMOL, Conversion(("mg/dL",), 10 / 90.08)),
        "K": (_MMOL,),
        "Na": (_MMOL,),
        "Chloride": (_MMOL,),
        # Mg is divalent: 1 mmol/L = 2 meq/L = 2.4305 mg/dL.
        "Mg": (_MG_DL, _molar(24.305, "mmol/L"), Conversion(("meq/L",), 24.305 / 20)),
        "Calcium": (_MG_DL, _molar(40.078, "mmol/L"), Conversion(("meq/L",), 40.078 / 20)),
        # Phosphate is reported as phosphorus: 1 mmol/L = 3.0974 mg/dL.
        "Phosphate": (_MG_DL, _molar(30.974, "mmol/L")),
        # BUN from urea: 1 mmol/L urea carries 2 N atoms = 28.014 mg N/L.
        "BUN": (_MG_DL, Conversion(("mmol/L",), 2.8014)),
        "Creatinine": (_MG_DL, _molar(113.12, "umol/L")),
        "Glucose": (_MG_DL, _molar(180.156, "mmol/L")),
        "Bilirubin": (_MG_DL, _molar(584.66, "umol/L")),
        "Bilirubin_direct": (_MG_DL, _molar(584.66, "umol/L")),
        "Albumin": (_G_DL, _G_L_TO_G_DL),
        "ALP": _ENZYME,
        "ALT": _ENZYME,
        "AST": _ENZYME,
        "TroponinI": _NG_ML,
        "TroponinT": _NG_ML,
        "Cholesterol": (_MG_DL, _molar(386.65, "mmol/L")),
        "WBC": _COUNT,
        "Platelets": _COUNT,
        "HCT": (_PERCENT, _FRACTION_TO_PERCENT),
        "Hgb": (_G_DL, _G_L_TO_G_DL),
        "PTT": (Conversion(("s", "sec")),),
        "Fibrinogen": (_MG_DL, Conversion(("g/L",), 100.0)),
        "Age": (Conversion(("a", "yr", "years")),),
        "Gender": _DIMENSIONLESS,
        "Height": (
            Conversion(("cm",)),
            Conversion(("m",), 100.0),
            Conversion(("mm",), 0.1),
            Conversion(("[in_i]", "in"), 2.54),
        ),
        "Weight": (
            Conversion(("kg",)),
            Conversion(("g",), 0.001),
            Conversion(("[lb_av]", "lb", "lbs"), 0.45359237),
        ),
        "ICUType": _DIMENSIONLESS,
    }
)


def _fold(unit: str) -> str:
    return "".join(unit.split()).casefold()


_LOOKUP: Final[Mapping[str, Mapping[str, Conversion]]] = MappingProxyType(
    {
        code: MappingProxyType({_fold(spelling): row for row in rows for spelling in row.spellings})
        for code, rows in CONVERSIONS.items()
    }
)


def _rows(code: str) -> tuple[Conversion, ...]:
    rows = CONVERSIONS.get(code)
    if rows is None:
        raise SchemaError(DeadLetterReason.UNKNOWN_CODE, f"code {code!r} is not in the vocabulary")
    return rows


def canonical_unit(code: str) -> str:
    """Return the canonical UCUM unit of ``code`` (for example ``Cel`` for ``Temp``).

    Raises:
        SchemaError: ``unknown_code``.
    """
    _rows(code)
    return CODES[code].unit


def accepted_units(code: str) -> tuple[str, ...]:
    """Return every accepted spelling for ``code``, canonical first.

    Raises:
        SchemaError: ``unknown_code``.
    """
    return tuple(spelling for row in _rows(code) for spelling in row.spellings)


def normalise(code: str, value: float, unit: str) -> float:
    """Convert ``value`` in ``unit`` to the canonical unit of ``code``.

    Args:
        code: Vigil code, for example ``Temp``.
        value: Finite value in ``unit``.
        unit: Unit spelling, for example ``[degF]``.

    Returns:
        The value in the canonical unit (:func:`canonical_unit`).

    Raises:
        SchemaError: ``unknown_code``, ``unknown_unit`` when ``unit`` is not accepted for
            ``code``, or ``non_finite`` when the value or the result is not finite.
    """
    _rows(code)
    row = _LOOKUP[code].get(_fold(unit))
    if row is None:
        raise SchemaError(
            DeadLetterReason.UNKNOWN_UNIT,
            f"unit {unit!r} is not accepted for {code}; use one of {accepted_units(code)}",
        )
    result = row.apply(value)
    if not math.isfinite(result):
        raise SchemaError(
            DeadLetterReason.NON_FINITE, f"{code} is not finite in {CODES[code].unit}"
        )
    return result
