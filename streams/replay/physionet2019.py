"""PhysioNet 2019 stay files (``.psv``: pipe-separated, one row per ICU hour) as replay events.

The patient id is the file stem (``p000002``). The first row's ``Age``, ``Gender``,
``Unit1``/``Unit2`` and ``HospAdmTime`` become an ``admit`` ADT event at the admission
anchor; each row's measured (non-``NaN``) values become one event per category (vitals,
labs) at the anchor plus ``ICULOS`` hours, coded by :func:`streams.core.codes.by_physionet2019`
in the code's canonical unit (the 2019 columns are in those units; ``Lactate`` is labelled
mg/dL in the challenge's description but its values are mmol/L, as in the source ICUs).
``SepsisLabel`` is an evaluation label and is never sent. No discharge event is sent: the
files end at ICU discharge or at a cut-off the data do not distinguish.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path

from streams.core.codes import Category, by_physionet2019
from streams.core.events import AdtEvent, IcuType, Observation, ObservationEvent, TopicKind
from streams.replay.event import DEFAULT_ANCHOR, ReplayEvent, one_line, replay_event
from vigil.errors import ConfigError, SchemaError

__all__ = ["read_physionet2019"]

_SOURCE = "physionet2019-replay"
_DESCRIPTORS = ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime")


def read_physionet2019(path: Path, anchor: datetime = DEFAULT_ANCHOR) -> list[ReplayEvent]:
    """Turn one PhysioNet 2019 ``.psv`` file into time-ordered input events.

    Args:
        path: The stay file; its stem is the patient id.
        anchor: ICU admission time (``ICULOS`` 0).

    Raises:
        ConfigError: The file cannot be read or is not a PhysioNet 2019 stay; the message
            names the file and the line.
    """
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: unreadable: {exc}") from exc
    header = lines[0].strip().split("|") if lines else []
    if "ICULOS" not in header:
        raise ConfigError(f"{path.name}: not a PhysioNet 2019 file (no ICULOS column)")
    try:
        codes = {column: by_physionet2019(column) for column in header}
    except SchemaError as exc:
        raise ConfigError(f"{path.name}: {exc.detail}") from exc
    rows: list[tuple[int, dict[str, float]]] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.strip().split("|")
        if len(cells) != len(header):
            raise ConfigError(
                f"{path.name}:{number}: {len(cells)} fields, header has {len(header)}"
            )
        try:
            values = {column: float(cell) for column, cell in zip(header, cells, strict=True)}
        except ValueError as exc:
            raise ConfigError(f"{path.name}:{number}: malformed line: {exc}") from exc
        if any(math.isinf(value) for value in values.values()):
            raise ConfigError(f"{path.name}:{number}: infinite value")
        if math.isnan(values["ICULOS"]):
            raise ConfigError(f"{path.name}:{number}: no ICULOS")
        rows.append((number, {k: v for k, v in values.items() if not math.isnan(v)}))
    if not rows:
        raise ConfigError(f"{path.name}: no rows")
    patient_id = path.stem
    try:
        events = [replay_event(_admit(patient_id, rows[0][1], anchor), TopicKind.ADT, 0)]
        for number, values in sorted(rows, key=lambda row: (row[1]["ICULOS"], row[0])):
            hours = values["ICULOS"]
            groups: dict[TopicKind, list[Observation]] = {}
            for column, value in values.items():
                info = codes[column]
                if info is None:
                    continue  # ICULOS, HospAdmTime, Unit1/2, SepsisLabel: not observations
                if info.category is Category.DESCRIPTOR:
                    continue  # Age and Gender: sent once, in the admit event
                kind = TopicKind.LABS if info.category is Category.LAB else TopicKind.VITALS
                groups.setdefault(kind, []).append(
                    Observation(code=info.code, value=value, unit=info.unit)
                )
            for kind, observations in groups.items():
                event = ObservationEvent(
                    event_id=f"p19-{patient_id}-{number}-{kind.value}",
                    patient_id=patient_id,
                    event_time=anchor + timedelta(hours=hours),
                    source=_SOURCE,
                    observations=tuple(observations),
                )
                events.append(replay_event(event, kind, len(events)))
    except ValueError as exc:  # a patient id or value that the event records refuse
        raise ConfigError(f"{path.name}: {one_line(exc)}") from exc
    return events


def _admit(patient_id: str, first: dict[str, float], anchor: datetime) -> AdtEvent:
    gender = first.get("Gender")
    icu_type = None
    if first.get("Unit1") == 1 and first.get("Unit2") != 1:
        icu_type = IcuType.MEDICAL
    elif first.get("Unit2") == 1 and first.get("Unit1") != 1:
        icu_type = IcuType.SURGICAL
    hospital_hours = first.get("HospAdmTime")
    return AdtEvent(
        event_id=f"p19-{patient_id}-admit",
        patient_id=patient_id,
        event_time=anchor,
        source=_SOURCE,
        action="admit",
        age_years=first.get("Age"),
        sex=None if gender is None else ("male" if gender == 1 else "female"),
        icu_type=icu_type,
        hospital_admit_time=(
            None
            if hospital_hours is None or hospital_hours > 0
            else anchor + timedelta(hours=hospital_hours)
        ),
    )
