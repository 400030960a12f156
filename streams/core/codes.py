"""Vigil's observation vocabulary: codes, canonical units, LOINC and physiological ranges.

Canonical codes are the PhysioNet 2012 parameter names exactly. PhysioNet 2019 columns
map onto them where the measurement is the same (``O2Sat`` is pulse oximetry, so it gets
its own code ``SpO2``, distinct from arterial ``SaO2``); 2019 columns with no 2012
equivalent keep their 2019 name as their code (``EtCO2``, ``Hgb``, ``Bilirubin_direct`` …).
2019 ``SBP``/``DBP``/``MAP`` carry no method, and are mapped to the arterial codes
``SysABP``/``DiasABP``/``MAP`` (the 2019 data come from ICUs where most patients have an
arterial line); consumers needing "any blood pressure" should take the arterial value and
fall back to the non-invasive one.

2019 columns that are not observations (:data:`PHYSIONET2019_NOT_OBSERVATIONS`):
``Unit1``/``Unit2`` (medical / surgical ICU flags) become ``AdtEvent.icu_type``,
``HospAdmTime`` (hours from hospital to ICU admission, negative) becomes
``AdtEvent.hospital_admit_time``, ``ICULOS`` (hours since ICU admission) gives the event
time, and ``SepsisLabel`` is an evaluation label that never enters the stream.

Each code has a physiologically possible range ``[low, high]`` in its canonical unit.
A value outside it is an *artifact* (probe off, unit slip, charting error): it is kept
out of features and counted, not dead-lettered. Ranges are deliberately wide: they bound
what a living ICU patient can show (0 for heart rate, blood pressure, saturation and urine
is asystole, dropout or anuria: a value, not an artifact), not what is normal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from streams.core.events import DeadLetterReason
from vigil.errors import SchemaError

__all__ = [
    "CODES",
    "PHYSIONET2019_NOT_OBSERVATIONS",
    "Category",
    "CodeInfo",
    "by_loinc",
    "by_physionet2019",
    "get_code",
]


class Category(StrEnum):
    """What kind of quantity a code is."""

    VITAL = "vital"
    LAB = "lab"
    DESCRIPTOR = "descriptor"
    DEVICE = "device"


@dataclass(frozen=True, slots=True)
class CodeInfo:
    """One code of the vocabulary.

    Attributes:
        code: The code (a PhysioNet 2012 parameter name, or a 2019 column name).
        description: Human-readable description.
        category: Vital sign, laboratory value, static descriptor or device setting.
        unit: Canonical unit, UCUM spelling (``Cel``, ``mm[Hg]``, ``mg/dL`` …).
        loinc: LOINC code, ``None`` where none fits.
        physionet2019: PhysioNet 2019 column names that map to this code.
        low: Lowest physiologically possible value, in ``unit``.
        high: Highest physiologically possible value, in ``unit``.
    """

    code: str
    description: str
    category: Category
    unit: str
    loinc: str | None
    physionet2019: tuple[str, ...]
    low: float
    high: float

    def is_plausible(self, value: float) -> bool:
        """Return True when ``value`` (canonical unit) is inside ``[low, high]``."""
        return self.low <= value <= self.high


_V, _L, _D, _X = Category.VITAL, Category.LAB, Category.DESCRIPTOR, Category.DEVICE

# code, description, category, unit, LOINC, 2019 columns, low, high
_TABLE: Final[tuple[CodeInfo, ...]] = (
    # Vital signs. BP 0 is asystole; 300 mmHg systolic is beyond any recorded living value.
    CodeInfo("HR", "Heart rate", _V, "/min", "8867-4", ("HR",), 0, 300),
    CodeInfo("SysABP", "Invasive arterial systolic BP", _V, "mm[Hg]", "8480-6", ("SBP",), 0, 300),
    CodeInfo("DiasABP", "Invasive arterial diastolic BP", _V, "mm[Hg]", "8462-4", ("DBP",), 0, 250),
    CodeInfo("MAP", "Invasive arterial mean BP", _V, "mm[Hg]", "8478-0", ("MAP",), 0, 300),
    CodeInfo("NISysABP", "Non-invasive systolic BP", _V, "mm[Hg]", "76534-7", (), 0, 300),
    CodeInfo("NIDiasABP", "Non-invasive diastolic BP", _V, "mm[Hg]", "76535-4", (), 0, 250),
    CodeInfo("NIMAP", "Non-invasive mean BP", _V, "mm[Hg]", "76536-2", (), 0, 300),
    CodeInfo("RespRate", "Respiratory rate", _V, "/min", "9279-1", ("Resp",), 0, 100),
    # Below 25 °C a reading is a probe off the patient in practice; 45 °C is lethal.
    CodeInfo("Temp", "Body temperature", _V, "Cel", "8310-5", ("Temp",), 25, 45),
    CodeInfo("GCS", "Glasgow coma score total", _V, "{score}", "9269-2", (), 3, 15),
    CodeInfo("SaO2", "Arterial O2 saturation (blood gas)", _V, "%", "2708-6", ("SaO2",), 0, 100),
    CodeInfo("SpO2", "O2 saturation by pulse oximetry", _V, "%", "59408-5", ("O2Sat",), 0, 100),
    CodeInfo("EtCO2", "End-tidal CO2", _V, "mm[Hg]", "19889-5", ("EtCO2",), 0, 150),
    CodeInfo("Urine", "Urine output since last", _V, "mL", "9187-6", (), 0, 5000),
    # Device settings. FiO2 below room air (0.21) does not occur in ICU practice.
    CodeInfo("FiO2", "Fraction of inspired O2", _X, "1", "3150-0", ("FiO2",), 0.21, 1),
    CodeInfo("MechVent", "Mechanical ventilation (0/1)", _X, "1", None, (), 0, 1),
    # Blood gas.
    CodeInfo("pH", "Arterial pH", _L, "[pH]", "2744-1", ("pH",), 6.5, 8.0),
    CodeInfo("PaO2", "Arterial O2 partial pressure", _L, "mm[Hg]", "2703-7", (), 10, 700),
    CodeInfo("PaCO2", "Arterial CO2 partial pressure", _L, "mm[Hg]", "2019-8", ("PaCO2",), 5, 200),
    CodeInfo("HCO3", "Bicarbonate", _L, "mmol/L", "1963-8", ("HCO3",), 2, 60),
    CodeInfo("BaseExcess", "Base excess", _L, "mmol/L", "1925-7", ("BaseExcess",), -40, 40),
    CodeInfo("Lactate", "Lactate", _L, "mmol/L", "2524-7", ("Lactate",), 0, 40),
    # Chemistry.
    CodeInfo("K", "Potassium", _L, "mmol/L", "2823-3", ("Potassium",), 1, 12),
    CodeInfo("Na", "Sodium", _L, "mmol/L", "2951-2", (), 90, 200),
    CodeInfo("Chloride", "Chloride", _L, "mmol/L", "2075-0", ("Chloride",), 50, 160),
    # PhysioNet 2012 labels Mg mmol/L, but its values (median 2.0) are mg/dL as in MIMIC-II.
    CodeInfo("Mg", "Magnesium", _L, "mg/dL", "19123-9", ("Magnesium",), 0.3, 10),
    CodeInfo("Calcium", "Calcium, total", _L, "mg/dL", "17861-6", ("Calcium",), 2, 20),
    CodeInfo("Phosphate", "Phosphate", _L, "mg/dL", "2777-1", ("Phosphate",), 0.2, 20),
    CodeInfo("BUN", "Urea nitrogen", _L, "mg/dL", "3094-0", ("BUN",), 0, 300),
    CodeInfo("Creatinine", "Creatinine", _L, "mg/dL", "2160-0", ("Creatinine",), 0.05, 30),
    CodeInfo("Glucose", "Glucose", _L, "mg/dL", "2345-7", ("Glucose",), 10, 2000),
    CodeInfo("Bilirubin", "Bilirubin, total", _L, "mg/dL", "1975-2", ("Bilirubin_total",), 0, 80),
    CodeInfo(
        "Bilirubin_direct", "Bilirubin, direct", _L, "mg/dL", "1968-7", ("Bilirubin_direct",), 0, 60
    ),
    CodeInfo("Albumin", "Albumin", _L, "g/dL", "1751-7", (), 0.5, 7),
    CodeInfo("ALP", "Alkaline phosphatase", _L, "U/L", "6768-6", ("Alkalinephos",), 0, 10000),
    CodeInfo("ALT", "Alanine aminotransferase", _L, "U/L", "1742-6", (), 0, 20000),
    CodeInfo("AST", "Aspartate aminotransferase", _L, "U/L", "1920-8", ("AST",), 0, 30000),
    CodeInfo("TroponinI", "Troponin I", _L, "ng/mL", "10839-9", ("TroponinI",), 0, 1000),
    CodeInfo("TroponinT", "Troponin T", _L, "ng/mL", "6598-7", (), 0, 100),
    CodeInfo("Cholesterol", "Cholesterol", _L, "mg/dL", "2093-3", (), 20, 1000),
    # Haematology and coagulation.
    CodeInfo("WBC", "White blood cells", _L, "10*3/uL", "6690-2", ("WBC",), 0, 500),
    CodeInfo("Platelets", "Platelets", _L, "10*3/uL", "777-3", ("Platelets",), 0, 2500),
    CodeInfo("HCT", "Haematocrit", _L, "%", "4544-3", ("Hct",), 5, 80),
    CodeInfo("Hgb", "Haemoglobin", _L, "g/dL", "718-7", ("Hgb",), 1, 25),
    CodeInfo("PTT", "Activated partial thromboplastin time", _L, "s", "3173-2", ("PTT",), 10, 250),
    CodeInfo("Fibrinogen", "Fibrinogen", _L, "mg/dL", "3255-7", ("Fibrinogen",), 20, 1500),
    # Static descriptors (Weight is also a time series in PhysioNet 2012).
    CodeInfo("Age", "Age", _D, "a", "30525-0", ("Age",), 0, 130),
    CodeInfo("Gender", "Sex (0 female, 1 male)", _D, "1", "46098-0", ("Gender",), 0, 1),
    CodeInfo("Height", "Body height", _D, "cm", "8302-2", (), 50, 250),
    CodeInfo("Weight", "Body weight", _D, "kg", "29463-7", (), 20, 400),
    CodeInfo("ICUType", "ICU type (1-4)", _D, "1", None, (), 1, 4),
)

CODES: Final[Mapping[str, CodeInfo]] = MappingProxyType({info.code: info for info in _TABLE})
_BY_2019: Final = MappingProxyType(
    {column: info for info in _TABLE for column in info.physionet2019}
)
_BY_LOINC: Final = MappingProxyType({info.loinc: info for info in _TABLE if info.loinc is not None})

PHYSIONET2019_NOT_OBSERVATIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "Unit1": "medical ICU flag: AdtEvent.icu_type = medical",
        "Unit2": "surgical ICU flag: AdtEvent.icu_type = surgical",
        "HospAdmTime": "hours from hospital to ICU admission: AdtEvent.hospital_admit_time",
        "ICULOS": "hours since ICU admission: gives event_time",
        "SepsisLabel": "evaluation label: never sent on an input topic",
    }
)


def get_code(code: str) -> CodeInfo:
    """Return the vocabulary entry of ``code``.

    Raises:
        SchemaError: ``unknown_code`` when ``code`` is not in the vocabulary.
    """
    info = CODES.get(code)
    if info is None:
        raise SchemaError(DeadLetterReason.UNKNOWN_CODE, f"code {code!r} is not in the vocabulary")
    return info


def by_physionet2019(column: str) -> CodeInfo | None:
    """Return the code a PhysioNet 2019 column maps to.

    Returns:
        The entry, or ``None`` for a column in :data:`PHYSIONET2019_NOT_OBSERVATIONS`.

    Raises:
        SchemaError: ``unknown_code`` when the column is not a PhysioNet 2019 column.
    """
    info = _BY_2019.get(column)
    if info is None and column not in PHYSIONET2019_NOT_OBSERVATIONS:
        raise SchemaError(
            DeadLetterReason.UNKNOWN_CODE, f"{column!r} is not a PhysioNet 2019 column"
        )
    return info


def by_loinc(loinc: str) -> CodeInfo:
    """Return the entry with LOINC code ``loinc`` (for example ``8867-4``).

    Raises:
        SchemaError: ``unknown_code`` when no code has that LOINC code.
    """
    info = _BY_LOINC.get(loinc)
    if info is None:
        raise SchemaError(DeadLetterReason.UNKNOWN_CODE, f"no code has LOINC {loinc!r}")
    return info
