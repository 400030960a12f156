"""Outcomes per stay, from PhysioNet 2012 or 2019 (pure: parsed values in, outcomes out).

* **physionet2012**: the label is ``In-hospital_death``; the outcome time used for lead
  times is the end of the ICU stay, ``Length_of_stay`` days after admission; SAPS-I and
  SOFA are kept as baselines (``-1`` in the file, None here, means missing).
* **physionet2019**: a stay is one ``.psv`` file (patient id = file stem); its label is 1
  when any row has ``SepsisLabel == 1``. The challenge shifted labels 6 h earlier than
  onset, so onset = first labelled row + 6 h (:data:`SEPSIS_LABEL_LEAD_HOURS`). Row ``t``
  sits ``ICULOS[t]`` hours after ICU admission, as ``vigil replay`` sends it (the row
  index when ``ICULOS`` is absent).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from streams.datasets.physionet2012 import Outcome
from streams.evaluation.utility import SEPSIS_LABEL_LEAD_HOURS, sepsis_onset_row

__all__ = ["StayOutcome", "from_physionet2012", "parse_psv"]


@dataclass(frozen=True, slots=True, eq=False)
class StayOutcome:
    """The outcome of one stay.

    Attributes:
        patient_id: Stay identifier, as the score records spell it.
        label: 1 when the outcome happened (death, sepsis), else 0.
        outcome_hours: Hours after admission of the outcome (2012: end of stay; 2019: sepsis
            onset), None when unknown or (2019) when there is none.
        row_hours: 2019 only: ``[T]`` hours after admission of each hourly row (ICULOS).
        row_labels: 2019 only: ``[T]`` SepsisLabel of each row (0/1).
        saps_i: SAPS-I at admission, points, None if missing.
        sofa: SOFA at admission, points, None if missing.
    """

    patient_id: str
    label: int
    outcome_hours: float | None
    row_hours: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    row_labels: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    saps_i: float | None = None
    sofa: float | None = None


def from_physionet2012(outcomes: Mapping[int, Outcome]) -> dict[str, StayOutcome]:
    """Outcomes of ``Outcomes-a.txt`` rows, keyed by ``str(RecordID)``."""
    out: dict[str, StayOutcome] = {}
    for record_id, row in outcomes.items():
        los = row.length_of_stay_days
        out[str(record_id)] = StayOutcome(
            patient_id=str(record_id),
            label=row.in_hospital_death,
            outcome_hours=None if los is None or los < 0 else los * 24.0,
            saps_i=row.saps_i,
            sofa=row.sofa,
        )
    return out


def parse_psv(patient_id: str, text: str) -> StayOutcome:
    """Outcome of one PhysioNet 2019 ``.psv`` file's text.

    Raises:
        ValueError: No ``SepsisLabel`` column, a malformed row, or no rows.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty file")
    header = lines[0].strip().split("|")
    if "SepsisLabel" not in header:
        raise ValueError("no SepsisLabel column")
    label_at = header.index("SepsisLabel")
    hours_at = header.index("ICULOS") if "ICULOS" in header else None
    labels: list[int] = []
    hours: list[float] = []
    for number, line in enumerate(lines[1:], start=2):
        cells = line.strip().split("|")
        if len(cells) != len(header):
            raise ValueError(f"line {number}: {len(cells)} cells, header has {len(header)}")
        try:
            label = int(float(cells[label_at]))
            hour = float(cells[hours_at]) if hours_at is not None else float(number - 2)
        except ValueError:
            raise ValueError(f"line {number}: SepsisLabel or ICULOS is not a number") from None
        if label not in (0, 1) or not np.isfinite(hour):
            raise ValueError(f"line {number}: SepsisLabel must be 0 or 1, ICULOS finite")
        labels.append(label)
        hours.append(hour)
    if not labels:
        raise ValueError("no rows")
    row_labels = np.asarray(labels, dtype=np.int64)
    row_hours = np.asarray(hours, dtype=np.float64)
    onset = sepsis_onset_row(row_labels)
    onset_hours: float | None = None
    if onset is not None:
        first = onset - SEPSIS_LABEL_LEAD_HOURS
        onset_hours = float(row_hours[first]) + SEPSIS_LABEL_LEAD_HOURS
    return StayOutcome(
        patient_id=patient_id,
        label=int(onset is not None),
        outcome_hours=onset_hours,
        row_hours=row_hours,
        row_labels=row_labels,
    )
