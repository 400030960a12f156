"""A bounded, in-memory history of each patient's scores, for ``GET /fhir/RiskAssessment``.

Fed from the ``scores`` topic (:mod:`streams.gateway.history_feed`). Bounded twice: at most
``per_patient`` scores per patient (the newest by event time) and ``max_patients`` patients
(the least recently updated is forgotten first). A score seen again (the worker reprocessing
after a restart) replaces the one with the same event time and model version. Pure: no I/O.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from datetime import datetime

from streams.core.events import ScoreRecord

__all__ = ["ScoreHistory"]

_Key = tuple[datetime, str, str]


class ScoreHistory:
    """The latest scores of the most recently scored patients.

    Args:
        max_patients: Patients kept (least recently updated dropped first).
        per_patient: Scores kept per patient (oldest event time dropped first).
    """

    def __init__(self, *, max_patients: int, per_patient: int) -> None:
        self._max_patients = max_patients
        self._per_patient = per_patient
        self._patients: OrderedDict[str, list[tuple[_Key, ScoreRecord]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._patients)

    def add(self, score: ScoreRecord) -> None:
        """Remember ``score`` (replacing a copy with the same time and model version)."""
        scores = self._patients.pop(score.patient_id, [])
        key = (score.event_time, score.model, score.model_version)
        keys = [k for k, _ in scores]
        at = bisect.bisect_left(keys, key)
        if at < len(scores) and scores[at][0] == key:
            scores[at] = (key, score)
        else:
            scores.insert(at, (key, score))
        del scores[: max(0, len(scores) - self._per_patient)]
        self._patients[score.patient_id] = scores
        while len(self._patients) > self._max_patients:
            self._patients.popitem(last=False)

    def scores(self, patient_id: str) -> list[ScoreRecord]:
        """The patient's scores, newest event time first (empty when unknown)."""
        return [score for _, score in reversed(self._patients.get(patient_id, []))]
