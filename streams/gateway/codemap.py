"""Which Vigil code an HL7 v2 OBX code means, and which ICU type a care unit is.

OBX-3 (and the coded ADT fields) arrive as ``identifier^text^coding system``. LOINC
(coding system ``LN``) is looked up in Vigil's vocabulary (:func:`streams.core.codes.by_loinc`);
anything else goes through a local table, ``(coding system, identifier) -> Vigil code``,
where a system of ``*`` matches any system. The defaults know every Vigil code by its own
name (``HR``, ``Lactate`` …, so ``HR^Heart rate^L`` works) and the IEEE 11073 MDC reference
ids that bedside monitors send for the common vitals. A deployment adds its own rows with a
JSON file (``VIGIL_GATEWAY_CODE_MAP_FILE``)::

    {"codes": [{"system": "99PHI", "code": "1001", "vigil": "HR"}],
     "icu_types": {"4WEST": "surgical"}}

Rows from the file are added to the defaults and win over them. No I/O except
:func:`load_code_map`, which reads that file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streams.core.codes import CODES, CodeInfo, by_loinc
from streams.core.events import IcuType
from vigil.errors import ConfigError, SchemaError

__all__ = ["DEFAULT_CODE_MAP", "LOINC_SYSTEMS", "CodeMap", "load_code_map"]

LOINC_SYSTEMS: Final = frozenset({"LN", "LOINC", "http://loinc.org"})
"""Coding system names (OBX-3.3) read as LOINC."""

ANY_SYSTEM: Final = "*"

_MDC: Final = {
    "MDC_ECG_HEART_RATE": "HR",
    "MDC_PULS_RATE": "HR",
    "MDC_PULS_OXIM_PULS_RATE": "HR",
    "MDC_PULS_OXIM_SAT_O2": "SpO2",
    "MDC_SAT_O2_ART": "SaO2",
    "MDC_RESP_RATE": "RespRate",
    "MDC_TTHOR_RESP_RATE": "RespRate",
    "MDC_PRESS_BLD_NONINV_SYS": "NISysABP",
    "MDC_PRESS_BLD_NONINV_DIA": "NIDiasABP",
    "MDC_PRESS_BLD_NONINV_MEAN": "NIMAP",
    "MDC_PRESS_BLD_ART_SYS": "SysABP",
    "MDC_PRESS_BLD_ART_DIA": "DiasABP",
    "MDC_PRESS_BLD_ART_MEAN": "MAP",
    "MDC_PRESS_BLD_ART_ABP_SYS": "SysABP",
    "MDC_PRESS_BLD_ART_ABP_DIA": "DiasABP",
    "MDC_PRESS_BLD_ART_ABP_MEAN": "MAP",
    "MDC_TEMP": "Temp",
    "MDC_TEMP_BODY": "Temp",
    "MDC_AWAY_CO2_ET": "EtCO2",
    "MDC_CONC_AWAY_CO2_ET": "EtCO2",
    "MDC_VENT_CONC_AWAY_O2_INSP": "FiO2",
}

_ICU_TYPES: Final = {
    "CCU": IcuType.CORONARY_CARE,
    "CORONARY": IcuType.CORONARY_CARE,
    "CSRU": IcuType.CARDIAC_SURGERY_RECOVERY,
    "CSU": IcuType.CARDIAC_SURGERY_RECOVERY,
    "CTICU": IcuType.CARDIAC_SURGERY_RECOVERY,
    "MICU": IcuType.MEDICAL,
    "MED": IcuType.MEDICAL,
    "SICU": IcuType.SURGICAL,
    "SUR": IcuType.SURGICAL,
}


@dataclass(frozen=True)
class CodeMap:
    """Local OBX codes and care-unit names, resolved to Vigil's vocabulary.

    Attributes:
        codes: ``(coding system, identifier) -> Vigil code``; system ``*`` matches any.
            Identifiers compare case-sensitively, systems upper-cased.
        icu_types: Hospital service or point-of-care name (upper case) -> ICU type.
    """

    codes: Mapping[tuple[str, str], str] = field(default_factory=dict)
    icu_types: Mapping[str, IcuType] = field(default_factory=dict)

    def resolve(self, identifier: str, system: str) -> CodeInfo | None:
        """The Vigil code of one coded value, or None when neither LOINC nor the table
        knows it."""
        if not identifier:
            return None
        folded = system.strip().upper()
        if folded in LOINC_SYSTEMS or system.strip() in LOINC_SYSTEMS:
            try:
                return by_loinc(identifier)
            except SchemaError:
                return None
        code = self.codes.get((folded, identifier)) or self.codes.get((ANY_SYSTEM, identifier))
        return None if code is None else CODES[code]

    def icu_type(self, name: str) -> IcuType | None:
        """The ICU type of a hospital service or care unit name, None when unknown."""
        return self.icu_types.get(name.strip().upper())

    def merged(self, other: CodeMap) -> CodeMap:
        """This table with ``other``'s rows added (``other`` wins)."""
        return CodeMap(
            MappingProxyType({**self.codes, **other.codes}),
            MappingProxyType({**self.icu_types, **other.icu_types}),
        )


def _defaults() -> CodeMap:
    codes: dict[tuple[str, str], str] = {(ANY_SYSTEM, code): code for code in CODES}
    codes.update({("MDC", name): code for name, code in _MDC.items()})
    codes.update({(ANY_SYSTEM, name): code for name, code in _MDC.items()})
    return CodeMap(MappingProxyType(codes), MappingProxyType(dict(_ICU_TYPES)))


DEFAULT_CODE_MAP: Final = _defaults()


class _Row(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    system: str = Field(default=ANY_SYSTEM, min_length=1, max_length=64)
    code: str = Field(min_length=1, max_length=64)
    vigil: str


class _File(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    codes: tuple[_Row, ...] = Field(default=(), max_length=10_000)
    icu_types: dict[str, IcuType] = Field(default_factory=dict, max_length=1000)


def load_code_map(path: Path | None) -> CodeMap:
    """The default table, plus the rows of ``path`` when given.

    Raises:
        ConfigError: The file cannot be read, is not the format above, or maps to a code
            Vigil does not know.
    """
    if path is None:
        return DEFAULT_CODE_MAP
    try:
        parsed = _File.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as exc:
        raise ConfigError(f"code map {path.name}: {exc}") from exc
    unknown = sorted({row.vigil for row in parsed.codes} - set(CODES))
    if unknown:
        raise ConfigError(f"code map {path.name}: unknown Vigil codes {unknown}")
    extra = CodeMap(
        {(row.system.upper(), row.code): row.vigil for row in parsed.codes},
        {name.strip().upper(): icu for name, icu in parsed.icu_types.items()},
    )
    return DEFAULT_CODE_MAP.merged(extra)
