"""Realistic distribution shifts of recorded ICU stays, for evaluating the OOD detector.

Each shift is a pure function ``Stay -> Stay`` (the input is not modified). Values are
transformed as raw readings would be, then the stream's artifact filter
(:func:`streams.datasets.physionet2012.is_valid_value`) is applied again unless
``filter_artifacts=False`` (what the model would see if that check were missing):

* ``temperature_fahrenheit``: ``Temp`` recorded in °F but read as °C (98.6 "°C"). Every
  such value is above the 45 °C limit, so with the filter the stay has no temperature.
* ``fio2_percent``: ``FiO2`` recorded in % but read as a fraction (40 instead of 0.40);
  above the limit of 1, so with the filter the stay has no FiO2.
* ``stuck_hr``: from ``onset_hours`` on, the heart-rate sensor repeats its last reading
  every hour (the real readings after onset are removed).
* ``vitals_dropout``: from ``onset_hours`` on, the bedside monitor's series
  (:data:`MONITOR_CODES`) stop; labs and charted values go on.
* ``population_drift``: an older, heavier population (age + 20 years, weight × 1.3, the
  admission weight and the ``Weight`` series).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from streams.core.features import SERIES_CODES
from streams.datasets.physionet2012 import DESCRIPTORS, Stay, is_valid_value

__all__ = [
    "MONITOR_CODES",
    "SHIFTS",
    "apply_shift",
    "shift_stay_text",
    "write_shifted_stays",
]

MONITOR_CODES: Final[tuple[str, ...]] = (
    "HR",
    "SysABP",
    "DiasABP",
    "MAP",
    "NISysABP",
    "NIDiasABP",
    "NIMAP",
    "RespRate",
    "Temp",
)
"""Series a bedside monitor streams (the ones a disconnected monitor stops)."""

SHIFTS: Final[tuple[str, ...]] = (
    "temperature_fahrenheit",
    "fio2_percent",
    "stuck_hr",
    "vitals_dropout",
    "population_drift",
)
"""Names accepted by :func:`apply_shift`."""

_INDEX: Final[dict[str, int]] = {code: i for i, code in enumerate(SERIES_CODES)}
_AGE_SHIFT_YEARS: Final[float] = 20.0
_WEIGHT_FACTOR: Final[float] = 1.3

_Arrays = tuple[
    npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]
]  # code index, minutes, values


def _scale(code: str, factor: float, offset: float = 0.0) -> Callable[[Stay, int], _Arrays]:
    def apply(stay: Stay, onset_minutes: int) -> _Arrays:
        values = stay.values.copy()
        sel = stay.code_index == _INDEX[code]
        values[sel] = values[sel] * factor + offset
        return stay.code_index.copy(), stay.minutes.copy(), values

    return apply


def _stuck_hr(stay: Stay, onset_minutes: int) -> _Arrays:
    hr = stay.code_index == _INDEX["HR"]
    before = hr & (stay.minutes <= onset_minutes)
    if not before.any():
        return stay.code_index.copy(), stay.minutes.copy(), stay.values.copy()
    last = float(stay.values[before][np.argmax(stay.minutes[before])])
    keep = ~(hr & (stay.minutes > onset_minutes))
    end = max(int(stay.minutes.max()), 48 * 60)
    stuck_minutes = np.arange(onset_minutes + 60, end + 1, 60, dtype=np.int64)
    return (
        np.concatenate([stay.code_index[keep], np.full(stuck_minutes.size, _INDEX["HR"])]),
        np.concatenate([stay.minutes[keep], stuck_minutes]),
        np.concatenate([stay.values[keep], np.full(stuck_minutes.size, last)]),
    )


def _vitals_dropout(stay: Stay, onset_minutes: int) -> _Arrays:
    monitor = np.isin(stay.code_index, [_INDEX[c] for c in MONITOR_CODES])
    keep = ~(monitor & (stay.minutes > onset_minutes))
    return stay.code_index[keep], stay.minutes[keep], stay.values[keep]


_SERIES_SHIFTS: Final[dict[str, Callable[[Stay, int], _Arrays]]] = {
    "temperature_fahrenheit": _scale("Temp", 9.0 / 5.0, 32.0),
    "fio2_percent": _scale("FiO2", 100.0),
    "stuck_hr": _stuck_hr,
    "vitals_dropout": _vitals_dropout,
    "population_drift": _scale("Weight", _WEIGHT_FACTOR),
}


def apply_shift(
    stay: Stay, shift: str, *, onset_hours: int = 24, filter_artifacts: bool = True
) -> Stay:
    """The stay as it would arrive under ``shift`` (one of :data:`SHIFTS`).

    Args:
        stay: A stay read by :func:`streams.datasets.physionet2012.read_stay`.
        shift: The shift's name.
        onset_hours: Hours after admission when ``stuck_hr`` or ``vitals_dropout`` starts.
        filter_artifacts: Drop values outside their code's physiological range, as the
            stream does.

    Returns:
        A new stay with the same ``record_id``.

    Raises:
        ValueError: An unknown shift.
    """
    if shift not in _SERIES_SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; expected one of {', '.join(SHIFTS)}")
    codes, minutes, values = _SERIES_SHIFTS[shift](stay, onset_hours * 60)
    descriptors = dict(stay.descriptors)
    if shift == "population_drift":
        age, weight = descriptors.get("Age"), descriptors.get("Weight")
        descriptors["Age"] = None if age is None else age + _AGE_SHIFT_YEARS
        descriptors["Weight"] = None if weight is None else weight * _WEIGHT_FACTOR
    if filter_artifacts:
        keep = np.array(
            [
                is_valid_value(SERIES_CODES[int(c)], float(v))
                for c, v in zip(codes, values, strict=True)
            ],
            dtype=bool,
        )
        codes, minutes, values = codes[keep], minutes[keep], values[keep]
        descriptors = {
            k: (v if v is None or is_valid_value(k, v) else None) for k, v in descriptors.items()
        }
    order = np.argsort(minutes, kind="stable")
    return Stay(
        record_id=stay.record_id,
        descriptors=descriptors,
        code_index=np.asarray(codes[order], dtype=np.int64),
        minutes=np.asarray(minutes[order], dtype=np.int64),
        values=np.asarray(values[order], dtype=np.float64),
    )


_Row = tuple[int, str, str]  # minute, parameter, value text
_OUTCOMES_HEADER: Final[str] = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _number(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _valid_series(rows: Sequence[_Row], descriptor_rows: set[int]) -> list[tuple[int, int]]:
    """``(row index, minute)`` of rows the loader keeps as series readings."""
    return [
        (i, minute)
        for i, (minute, name, text) in enumerate(rows)
        if i not in descriptor_rows and name in _INDEX and is_valid_value(name, float(text))
    ]


def shift_stay_text(
    text: str, shift: str, *, onset_hours: int = 24, record_id: int | None = None
) -> str:
    """A PhysioNet 2012 stay file's text as it would be recorded under ``shift``.

    The raw counterpart of :func:`apply_shift`: readings are transformed as the source
    would send them (98.6 for a temperature, 40 for an FiO2), and the stream's artifact
    filter is left to the stream. Readings the filter already drops in the original are
    left as they are. Reading the result back (:func:`streams.datasets.physionet2012.read_stay`)
    gives ``apply_shift(read_stay(original), shift, onset_hours=...)``, up to the six
    decimals written. A shifted descriptor outside its plausible range is written as
    ``-1`` (unknown), as the filtered shift treats it.

    Args:
        text: The stay file's text (header ``Time,Parameter,Value``).
        shift: One of :data:`SHIFTS`.
        onset_hours: Onset of ``stuck_hr`` and ``vitals_dropout``.
        record_id: A new ``RecordID`` to write, or None to keep it.

    Raises:
        ValueError: An unknown shift, or text that is not a stay file.
    """
    if shift not in _SERIES_SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; expected one of {', '.join(SHIFTS)}")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].strip() != "Time,Parameter,Value":
        raise ValueError("not a PhysioNet 2012 stay file (bad header)")
    rows: list[_Row] = []
    for line in lines[1:]:
        stamp, name, value = line.split(",")
        hours, minutes = stamp.split(":")
        rows.append((int(hours) * 60 + int(minutes), name, value.strip()))
    seen: set[str] = set()
    descriptor_rows: set[int] = set()
    for i, (minute, name, _) in enumerate(rows):
        if minute == 0 and (name in DESCRIPTORS or name == "RecordID") and name not in seen:
            seen.add(name)
            descriptor_rows.add(i)
    valid = dict(_valid_series(rows, descriptor_rows))
    onset = onset_hours * 60
    out: list[_Row] = []
    scale = {
        "temperature_fahrenheit": ("Temp", 9.0 / 5.0, 32.0),
        "fio2_percent": ("FiO2", 100.0, 0.0),
    }
    for i, (minute, name, value) in enumerate(rows):
        if i in descriptor_rows:
            if name == "RecordID" and record_id is not None:
                value = str(record_id)
            elif shift == "population_drift" and name in ("Age", "Weight") and value != "-1":
                moved = (
                    float(value) + _AGE_SHIFT_YEARS
                    if name == "Age"
                    else float(value) * _WEIGHT_FACTOR
                )
                value = _number(moved) if is_valid_value(name, moved) else "-1"
            out.append((minute, name, value))
            continue
        if i in valid:
            if shift in scale and name == scale[shift][0]:
                value = _number(float(value) * scale[shift][1] + scale[shift][2])
            elif shift == "population_drift" and name == "Weight":
                value = _number(float(value) * _WEIGHT_FACTOR)
        if minute > onset and (
            (shift == "stuck_hr" and name == "HR")
            or (shift == "vitals_dropout" and name in MONITOR_CODES)
        ):
            continue
        out.append((minute, name, value))
    if shift == "stuck_hr":
        hr = [(m, float(rows[i][2])) for i, m in valid.items() if rows[i][1] == "HR" and m <= onset]
        if hr:
            last = max(hr, key=lambda pair: pair[0])[1]
            end = max(max(valid.values()), 48 * 60)
            out += [(m, "HR", _number(last)) for m in range(onset + 60, end + 1, 60)]
    out.sort(key=lambda row: row[0])  # stable: the 00:00 descriptors stay first
    return "\n".join(["Time,Parameter,Value", *(f"{_hhmm(m)},{n},{v}" for m, n, v in out)]) + "\n"


def write_shifted_stays(
    source_dir: Path,
    out_dir: Path,
    shift: str,
    *,
    record_ids: Iterable[int] | None = None,
    onset_hours: int = 24,
    id_offset: int = 0,
) -> list[Path]:
    """Writes shifted copies of PhysioNet 2012 stays, and their outcomes, for replay.

    ``out_dir/set-a/<RecordID>.txt`` per stay (:func:`shift_stay_text`) and
    ``out_dir/Outcomes-a.txt`` with the source outcome rows of the written stays (the
    outcome of a stay does not change with how it was recorded).

    Args:
        source_dir: Folder with ``set-a/`` and ``Outcomes-a.txt``.
        out_dir: Folder to write (created; files of the same name are replaced).
        shift: One of :data:`SHIFTS`.
        record_ids: Stays to copy (default: every stay with an outcome).
        onset_hours: Onset of ``stuck_hr`` and ``vitals_dropout``.
        id_offset: Added to each ``RecordID``, so that copies can be replayed next to
            their originals (``0`` keeps the ids).

    Returns:
        The written stay files, in RecordID order.

    Raises:
        ValueError: An unknown shift, or a requested stay without a file or outcome.
        OSError: A file cannot be read or written.
    """
    if shift not in _SERIES_SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; expected one of {', '.join(SHIFTS)}")
    lines = (source_dir / "Outcomes-a.txt").read_text(encoding="utf-8").splitlines()
    outcomes = {int(line.split(",")[0]): line for line in lines[1:] if line.strip()}
    wanted = sorted(outcomes if record_ids is None else set(record_ids))
    missing = [
        r for r in wanted if r not in outcomes or not (source_dir / "set-a" / f"{r}.txt").is_file()
    ]
    if missing:
        raise ValueError(f"no stay file or outcome for RecordID {missing[:5]}")
    (out_dir / "set-a").mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows = [_OUTCOMES_HEADER]
    for rid in wanted:
        new_id = rid + id_offset
        source = (source_dir / "set-a" / f"{rid}.txt").read_text(encoding="utf-8")
        path = out_dir / "set-a" / f"{new_id}.txt"
        path.write_text(shift_stay_text(source, shift, onset_hours=onset_hours, record_id=new_id))
        written.append(path)
        rows.append(",".join([str(new_id), *outcomes[rid].split(",")[1:]]))
    (out_dir / "Outcomes-a.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return written
