"""Reader for the PhysioNet/CinC Challenge 2012 files (set A layout).

A stay file is long-format CSV (``Time,Parameter,Value``); ``Time`` is ``HH:MM`` since
ICU admission and may pass 24:00. Its first rows at 00:00 are descriptors (``RecordID``,
``Age``, ``Gender``, ``Height``, ``ICUType``, ``Weight``; ``-1`` = not measured). The
first ``Weight`` at 00:00 is the admission weight (a static); later ``Weight`` rows are
a time series. Descriptors outside their valid range are treated as unknown.

Series values outside the documented physiological range of their code are artifacts
and are dropped by the same check the stream uses
(:meth:`streams.core.codes.CodeInfo.is_plausible`), so they
never reach the features. Duplicate timestamps are kept in file order; the feature
builder takes the last value of a bin. Parsing is deterministic: stays come back sorted
by ``RecordID``.

Errors: an unreadable or malformed file raises :class:`vigil.errors.ModelError` naming
the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from streams.core.codes import CODES
from streams.core.features import SERIES_CODES, StayArrays
from vigil.errors import ModelError

__all__ = [
    "DESCRIPTORS",
    "Outcome",
    "Stay",
    "data_hash",
    "is_valid_value",
    "load_stays",
    "read_outcomes",
    "read_stay",
]

DESCRIPTORS: Final[tuple[str, ...]] = ("Age", "Gender", "Height", "ICUType", "Weight")
"""Static descriptors read from the 00:00 rows (``RecordID`` is kept separately)."""

_CODE_INDEX: Final[Mapping[str, int]] = {code: i for i, code in enumerate(SERIES_CODES)}
_US_PER_MINUTE: Final[int] = 60_000_000
_REFERENCE_ADMIT: Final[datetime] = datetime(2012, 1, 1, tzinfo=UTC)


def is_valid_value(code: str, value: float) -> bool:
    """True when ``value`` is inside the documented physiological range of ``code``.

    The single artifact filter of the loader; it delegates to the stream's code table.
    """
    info = CODES.get(code)
    return info is not None and info.is_plausible(value)


@dataclass(frozen=True, slots=True, eq=False)
class Stay:
    """One ICU stay of PhysioNet 2012 with artifacts removed.

    Attributes:
        record_id: PhysioNet ``RecordID``.
        descriptors: ``Age`` (years), ``Gender`` (0/1), ``Height`` (cm), ``ICUType``
            (1-4), ``Weight`` (kg, admission); None where unknown.
        code_index: ``[N]`` int64 index into ``SERIES_CODES``.
        minutes: ``[N]`` int64 minutes since ICU admission.
        values: ``[N]`` float64 values in canonical units.
    """

    record_id: int
    descriptors: Mapping[str, float | None]
    code_index: npt.NDArray[np.int64]
    minutes: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]

    def arrays(self, admit_time: datetime = _REFERENCE_ADMIT) -> StayArrays:
        """The stay packed for :func:`streams.core.features.features_at`."""
        return StayArrays.from_arrays(
            self.code_index,
            self.minutes * _US_PER_MINUTE,
            self.values,
            self.descriptors,
            admit_time=admit_time,
        )

    def observations(
        self, admit_time: datetime = _REFERENCE_ADMIT
    ) -> dict[str, list[tuple[datetime, float]]]:
        """Per-code time-sorted ``(time, value)`` pairs, as the stream would see them."""
        out: dict[str, list[tuple[datetime, float]]] = {}
        order = np.argsort(self.minutes, kind="stable")
        for i in order:
            code = SERIES_CODES[int(self.code_index[i])]
            moment = admit_time + timedelta(minutes=int(self.minutes[i]))
            out.setdefault(code, []).append((moment, float(self.values[i])))
        return out


@dataclass(frozen=True, slots=True)
class Outcome:
    """One row of ``Outcomes-a.txt``; None where the file says -1.

    Attributes:
        record_id: PhysioNet ``RecordID``.
        saps_i: SAPS-I score at admission, points.
        sofa: SOFA score at admission, points.
        length_of_stay_days: Length of stay, days.
        survival_days: Days from admission to death, or None.
        in_hospital_death: 1 died in hospital, 0 survived.
    """

    record_id: int
    saps_i: float | None
    sofa: float | None
    length_of_stay_days: float | None
    survival_days: float | None
    in_hospital_death: int


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def read_stay(path: Path) -> Stay:
    """Reads one set-A stay file.

    Args:
        path: A ``NNNNNN.txt`` file.

    Returns:
        The stay, series artifacts dropped, descriptors validated.

    Raises:
        ModelError: The file cannot be read or parsed (the message names it).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read PhysioNet 2012 file {path}: {exc}") from exc
    if not lines or lines[0].strip() != "Time,Parameter,Value":
        raise ModelError(f"{path}: not a PhysioNet 2012 stay file (bad header)")
    record_id: int | None = None
    descriptors: dict[str, float | None] = dict.fromkeys(DESCRIPTORS)
    seen: set[str] = set()
    codes: list[int] = []
    minutes: list[int] = []
    values: list[float] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        try:
            time_text, name, value_text = line.split(",")
            minute = _minutes(time_text)
            value = float(value_text)
        except ValueError as exc:
            raise ModelError(f"{path}:{number}: malformed row {line!r}") from exc
        if name == "RecordID" and record_id is None:
            record_id = int(value)
            continue
        if minute == 0 and name in DESCRIPTORS and name not in seen:
            seen.add(name)
            known = value != -1 and is_valid_value(name, value)
            descriptors[name] = value if known else None
            continue
        index = _CODE_INDEX.get(name)
        if index is None or not is_valid_value(name, value):
            continue
        codes.append(index)
        minutes.append(minute)
        values.append(value)
    if record_id is None:
        raise ModelError(f"{path}: no RecordID row")
    return Stay(
        record_id=record_id,
        descriptors=descriptors,
        code_index=np.asarray(codes, dtype=np.int64),
        minutes=np.asarray(minutes, dtype=np.int64),
        values=np.asarray(values, dtype=np.float64),
    )


def read_outcomes(path: Path) -> dict[int, Outcome]:
    """Reads ``Outcomes-a.txt`` into outcomes keyed by ``RecordID``.

    Raises:
        ModelError: The file cannot be read or a row is malformed.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read outcomes file {path}: {exc}") from exc
    expected = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"
    if not lines or lines[0].strip() != expected:
        raise ModelError(f"{path}: not a PhysioNet 2012 outcomes file (bad header)")

    def opt(text: str) -> float | None:
        value = float(text)
        return None if value == -1 else value

    out: dict[int, Outcome] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            rid, saps, sofa, los, survival, death = line.split(",")
            outcome = Outcome(
                record_id=int(rid),
                saps_i=opt(saps),
                sofa=opt(sofa),
                length_of_stay_days=opt(los),
                survival_days=opt(survival),
                in_hospital_death=int(death),
            )
        except ValueError as exc:
            raise ModelError(f"{path}:{number}: malformed row {line!r}") from exc
        if outcome.in_hospital_death not in (0, 1):
            raise ModelError(f"{path}:{number}: In-hospital_death must be 0 or 1")
        out[outcome.record_id] = outcome
    return out


def _stay_files(data_dir: Path) -> list[Path]:
    set_dir = data_dir / "set-a"
    if not set_dir.is_dir():
        raise ModelError(f"{data_dir}: no set-a/ folder of PhysioNet 2012 stays")
    return sorted(set_dir.glob("*.txt"))


def load_stays(
    data_dir: Path, record_ids: Iterable[int] | None = None
) -> tuple[list[Stay], dict[int, Outcome]]:
    """Reads the stays of ``data_dir/set-a`` that have an outcome, sorted by RecordID.

    Args:
        data_dir: Folder holding ``set-a/`` and ``Outcomes-a.txt``.
        record_ids: Only these stays, if given.

    Returns:
        The stays and the outcomes of those stays.

    Raises:
        ModelError: Missing folder or files, or an unreadable file.
    """
    outcomes = read_outcomes(data_dir / "Outcomes-a.txt")
    wanted = None if record_ids is None else set(record_ids)
    stays: list[Stay] = []
    for path in _stay_files(data_dir):
        if wanted is not None and path.stem.isdigit() and int(path.stem) not in wanted:
            continue
        stay = read_stay(path)
        if stay.record_id in outcomes and (wanted is None or stay.record_id in wanted):
            stays.append(stay)
    stays.sort(key=lambda s: s.record_id)
    return stays, {s.record_id: outcomes[s.record_id] for s in stays}


def data_hash(data_dir: Path, files: Sequence[Path] | None = None) -> str:
    """SHA-256 over the outcomes file and every stay file (names and bytes), sorted."""
    paths = sorted(files) if files is not None else _stay_files(data_dir)
    digest = hashlib.sha256()
    for path in [data_dir / "Outcomes-a.txt", *paths]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
