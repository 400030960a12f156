"""Per-patient, time-aware state: the pure core of the worker.

A :class:`PatientState` holds what the model and NEWS2 need about one patient at any
moment: the last ``window`` of irregular observations per parameter (times and values,
in canonical units, artifacts excluded), static descriptors, imaging embeddings, the
event-time watermark, recent event ids (for de-duplication), what the next score must cite
as provenance, the last score and the alert state.

Lifecycle (all in event time, never wall time):

* :meth:`PatientState.apply_observations` / :meth:`PatientState.apply_adt` take one
  validated event and return an :class:`Outcome` (accepted, duplicate, too late).
* :meth:`PatientState.due_for_score` says whether the patient should be re-scored.
* :meth:`PatientState.features` and :meth:`PatientState.news2` build the model input and
  the NEWS2 score from the same observations.
* :meth:`PatientState.take_provenance` hands over the inputs seen since the last score.
* :meth:`PatientState.expired` says when the state may be dropped (discharge or silence).

State is bounded: observations older than the window are pruned, each parameter keeps at
most :data:`MAX_POINTS_PER_CODE` points, and at most :data:`MAX_RECENT_IDS` event ids are
remembered. It round-trips through a JSON-ready ``dict`` (:meth:`to_dict` /
:meth:`from_dict`, format version 1) and through the compact binary form of
:mod:`streams.core.state_codec` (version 2, which also reads version 1) for the Faust
table and its changelog.
"""

from __future__ import annotations

import base64
import bisect
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from streams.core.events import AdtEvent, OffsetRange
from streams.core.features import (
    SERIES_CODES,
    FeatureWindow,
    StayArrays,
    build_features,
    features_at,
)
from streams.core.news2 import NEWS2_INPUT_CODES, News2Result, news2_from_observations
from streams.core.step_features import last_before, point_time
from streams.core.stepping import ModelState
from streams.core.validation import CanonicalObservation
from vigil.errors import ConfigError, StateError

__all__ = [
    "MAX_IMAGES",
    "MAX_LATE_RECORDS",
    "MAX_POINTS_PER_CODE",
    "MAX_RECENT_IDS",
    "Origin",
    "Outcome",
    "PatientState",
    "from_ms",
    "to_ms",
]

MAX_POINTS_PER_CODE = 512
"""Most observations kept per parameter (beyond the time window), bounding memory."""
MAX_RECENT_IDS = 4096
"""Most event ids remembered for de-duplication."""
MAX_PROVENANCE_IDS = 1024
"""Most event ids cited by one score (the rest are covered by offset ranges)."""
MAX_IMAGES = 4
"""Most imaging embeddings kept (the model's K)."""
MAX_LATE_RECORDS = 64
"""Most out-of-order records listed for the step model's staleness check; beyond that the
oldest two merge into one that covers both (it can only make a stored vector look stale)."""

_ICU_TYPE_NUMBER = {
    "coronary_care": 1.0,
    "cardiac_surgery_recovery": 2.0,
    "medical": 3.0,
    "surgical": 4.0,
}
_SEX_NUMBER = {"female": 0.0, "male": 1.0}
_SERIES_INDEX = {code: i for i, code in enumerate(SERIES_CODES)}


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of a timezone-aware datetime."""
    if moment.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    return int(moment.timestamp() * 1000)


def from_ms(epoch_ms: int) -> datetime:
    """UTC datetime of epoch milliseconds."""
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)


class Outcome(StrEnum):
    """What happened to one event applied to a state."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    TOO_LATE = "too_late"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an event was read: Kafka topic, partition and offset."""

    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class PatientState:
    """Everything Vigil keeps about one patient; see the module docstring.

    Times are epoch milliseconds (``*_ms``) so the state serialises compactly.
    """

    patient_id: str
    admit_ms: int | None = None
    statics: dict[str, float | None] = field(default_factory=dict)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    watermark_ms: int | None = None
    stream_watermarks: dict[str, int] = field(default_factory=dict)
    recent_ids: dict[str, int] = field(default_factory=dict)
    last_scored_ms: int | None = None
    changed: bool = False
    pending_ids: list[str] = field(default_factory=list)
    pending_offsets: dict[str, list[int]] = field(default_factory=dict)
    discharged_ms: int | None = None
    images: list[tuple[int, list[float]]] = field(default_factory=list)
    studies: list[dict[str, Any]] = field(default_factory=list)
    last_score: dict[str, Any] | None = None
    alert: dict[str, Any] = field(default_factory=dict)
    artifacts: int = 0
    model_state: ModelState | None = None
    """The step model's state after the patient's last committed bin (streams/core/stepping.py)."""
    applied: int = field(default=0, compare=False)
    """Observation records applied since this state was loaded (not persisted)."""
    late_records: list[tuple[int, int]] = field(default_factory=list, compare=False)
    """``(applied, event ms)`` of the records applied out of event-time order since the
    request that computed :attr:`model_state` (not persisted: a recovered state starts
    with none, trusting its stored vector)."""

    # -- event application ---------------------------------------------------------------

    def _admit_default(self, event_ms: int) -> None:
        # Streams without an ADT admit still need a time origin for the feature grid: the
        # earliest event time, so a late-arriving earlier event is not "before admission".
        if self.admit_ms is None or (
            "adt" not in self.stream_watermarks and event_ms < self.admit_ms
        ):
            self.admit_ms = event_ms

    def _check_order(
        self, event_id: str, event_ms: int, lateness: timedelta, stream: str
    ) -> Outcome | None:
        # Lateness is judged per input stream: Kafka orders records only within a
        # partition, so a lab that trails the vitals topic is not "late" for that.
        if event_id in self.recent_ids:
            return Outcome.DUPLICATE
        mark = self.stream_watermarks.get(stream)
        if mark is not None and event_ms < mark - _td_ms(lateness):
            return Outcome.TOO_LATE
        return None

    def _remember(self, event_id: str, event_ms: int, origin: Origin | None, stream: str) -> None:
        self.stream_watermarks[stream] = max(self.stream_watermarks.get(stream, event_ms), event_ms)
        self.recent_ids[event_id] = event_ms
        excess = len(self.recent_ids) - MAX_RECENT_IDS
        if excess > 0:
            # Linear, not a full sort: this runs on every event of a long stay.
            ids = self.recent_ids
            for stale_id in heapq.nsmallest(excess, ids, key=ids.__getitem__):
                del ids[stale_id]
        if len(self.pending_ids) < MAX_PROVENANCE_IDS:
            self.pending_ids.append(event_id)
        if origin is not None:
            key = f"{origin.topic}\x1f{origin.partition}"
            span = self.pending_offsets.get(key)
            if span is None:
                self.pending_offsets[key] = [origin.offset, origin.offset]
            else:
                span[0] = min(span[0], origin.offset)
                span[1] = max(span[1], origin.offset)
        self.watermark_ms = (
            event_ms if self.watermark_ms is None else max(self.watermark_ms, event_ms)
        )
        self.changed = True

    def apply_observations(
        self,
        event_id: str,
        event_time: datetime,
        observations: Iterable[CanonicalObservation],
        *,
        origin: Origin | None,
        lateness: timedelta,
        window: timedelta,
        stream: str = "observations",
    ) -> Outcome:
        """Add one vitals or labs event's observations in event-time order.

        Artifacts (outside the physiological range) are counted and kept out of the
        series. An event older than its stream's ``watermark - lateness`` is rejected as
        too late.

        Args:
            event_id: Unique event id (duplicates are ignored).
            event_time: Event time, timezone-aware.
            observations: Canonical observations of the event.
            origin: Kafka position of the event, for provenance; None in offline use.
            lateness: Out-of-order bound.
            window: How much history to keep.
            stream: Input stream (topic kind) the event came from; lateness is judged
                against that stream's own watermark.
        """
        event_ms = to_ms(event_time)
        rejected = self._check_order(event_id, event_ms, lateness, stream)
        if rejected is not None:
            return rejected
        self._admit_default(event_ms)
        self.applied += 1
        if self.watermark_ms is not None and event_ms < self.watermark_ms:
            self._note_late(event_ms)
        for obs in observations:
            if obs.artifact:
                self.artifacts += 1
                continue
            points = self.series.setdefault(obs.code, [])
            item = (event_ms, float(obs.value))
            if not points or points[-1][0] <= event_ms:
                points.append(item)
            else:  # late but within bound: insert after equal times, keeping arrival order
                points.insert(bisect.bisect_right(points, event_ms, key=point_time), item)
        self._remember(event_id, event_ms, origin, stream)
        self.prune(window)
        return Outcome.ACCEPTED

    def _note_late(self, event_ms: int) -> None:
        late = self.late_records
        late.append((self.applied, event_ms))
        if len(late) > MAX_LATE_RECORDS:
            (_, t0), (n1, t1) = late[0], late[1]
            late[:2] = [(n1, min(t0, t1))]

    def keep_model_state(self, model_state: ModelState, seen: int) -> None:
        """Store the step model's new vector, computed from the state as it was after
        ``seen`` applied records: the out-of-order records it already saw leave the list."""
        self.model_state = model_state
        self.late_records = [(n, t) for n, t in self.late_records if n > seen]

    def apply_adt(
        self,
        event: AdtEvent,
        *,
        origin: Origin | None,
        lateness: timedelta,
        artifacts: Iterable[CanonicalObservation] = (),
    ) -> Outcome:
        """Apply an admit, transfer, discharge or update event and its descriptors (a
        transfer or an update changes only the descriptors).

        Args:
            event: The ADT event.
            origin: Kafka position of the event.
            lateness: Out-of-order bound.
            artifacts: Canonical descriptor observations flagged as artifacts (their
                values are not used as descriptors).
        """
        event_ms = to_ms(event.event_time)
        rejected = self._check_order(event.event_id, event_ms, lateness, "adt")
        if rejected is not None:
            return rejected
        bad = {obs.code for obs in artifacts if obs.artifact}
        self.artifacts += len(bad)
        if event.action == "admit":
            self.admit_ms = event_ms if self.admit_ms is None else min(self.admit_ms, event_ms)
            self.discharged_ms = None
        elif event.action == "discharge":
            self.discharged_ms = event_ms
        self._admit_default(event_ms)
        descriptors = {
            "Age": event.age_years,
            "Height": event.height_cm,
            "Weight": event.weight_kg,
            "Gender": None if event.sex is None else _SEX_NUMBER.get(event.sex),
            "ICUType": None if event.icu_type is None else _ICU_TYPE_NUMBER[event.icu_type],
        }
        for code, value in descriptors.items():
            if value is not None and code not in bad:
                self.statics[code] = float(value)
        self._remember(event.event_id, event_ms, origin, "adt")
        return Outcome.ACCEPTED

    def add_image(
        self,
        event_time: datetime,
        embedding: Iterable[float],
        study: Mapping[str, Any] | None = None,
    ) -> None:
        """Keep an imaging embedding (the :data:`MAX_IMAGES` most recent) and, when given,
        the study's reference (``study_id``, ``finding_id``, ``class_probability``,
        ``heatmap_uri``) for the records that cite it."""
        event_ms = to_ms(event_time)
        self.images.append((event_ms, [float(x) for x in embedding]))
        self.images.sort(key=lambda item: item[0])
        del self.images[:-MAX_IMAGES]
        if study is not None:
            self.studies.append({**study, "t": event_ms})
            self.studies.sort(key=lambda item: int(item["t"]))
            del self.studies[:-MAX_IMAGES]
        self.changed = True

    def admissible(
        self, event_id: str, event_time: datetime, lateness: timedelta, stream: str
    ) -> Outcome | None:
        """Why an event would be refused (duplicate, too late), or None if it would not;
        changes nothing."""
        return self._check_order(event_id, to_ms(event_time), lateness, stream)

    def apply_study(
        self,
        event_id: str,
        event_time: datetime,
        embedding: Iterable[float],
        study: Mapping[str, Any],
        *,
        origin: Origin | None,
        lateness: timedelta,
    ) -> Outcome:
        """Add an analysed imaging study: its embedding, its reference and its provenance.

        Args:
            event_id: The ``imaging`` event's id (duplicates are ignored).
            event_time: When the study was taken.
            embedding: The imaging model's embedding.
            study: The study's reference (see :meth:`add_image`).
            origin: Kafka position of the event.
            lateness: Out-of-order bound.
        """
        event_ms = to_ms(event_time)
        rejected = self._check_order(event_id, event_ms, lateness, "imaging")
        if rejected is not None:
            return rejected
        self._admit_default(event_ms)
        self.add_image(event_time, embedding, study)
        self._remember(event_id, event_ms, origin, "imaging")
        return Outcome.ACCEPTED

    def _observation_ms(self) -> int | None:
        marks = [ms for stream, ms in self.stream_watermarks.items() if stream != "adt"]
        return max(marks) if marks else None

    def holds_since_admission(self, window: timedelta, at_ms: int) -> bool:
        """True while :meth:`prune` has dropped nothing since admission: its horizon (the
        latest observation, or ``at_ms`` before any, minus ``window``) is not past the
        admission time. Like the horizon, it ignores ADT events: a discharge far ahead of
        the data does not make the history incomplete."""
        if self.admit_ms is None:
            return False
        latest = self._observation_ms()
        return (at_ms if latest is None else latest) - _td_ms(window) <= self.admit_ms

    def prune(self, window: timedelta) -> None:
        """Drop observations older than the window before the latest observation.

        The horizon follows observations only: an ADT event far ahead (a discharge read
        before the last vitals) must not push the window past the data.
        """
        latest = self._observation_ms()
        if latest is None:
            return
        horizon = latest - _td_ms(window)
        emptied = False
        for code, points in self.series.items():
            if not points:
                emptied = True
            elif points[0][0] < horizon or len(points) > MAX_POINTS_PER_CODE:
                cut = bisect.bisect_left(points, horizon, key=point_time)
                cut = max(cut, len(points) - MAX_POINTS_PER_CODE)
                self.series[code] = points[cut:]
                emptied = emptied or cut == len(points)
        if emptied:
            self.series = {code: points for code, points in self.series.items() if points}

    # -- scoring ---------------------------------------------------------------------------

    def due_for_score(self, interval: timedelta) -> bool:
        """True when the state changed and ``interval`` of event time passed since the last
        score (or the patient was never scored, or was discharged)."""
        if not self.changed or self.watermark_ms is None:
            return False
        if self.last_scored_ms is None or self.discharged_ms is not None:
            # After discharge every late arrival is scored at once: nothing may stay
            # uncited in a state that is about to expire.
            return True
        latest = self._observation_ms()
        if latest is None:
            return False  # only ADT events so far: nothing to score yet
        return latest - self.last_scored_ms >= _td_ms(interval)

    @property
    def state_time(self) -> datetime:
        """Event time of the state: the watermark.

        Raises:
            ValueError: No event was applied yet.
        """
        if self.watermark_ms is None:
            raise ValueError("state has no event time yet")
        return from_ms(self.watermark_ms)

    @property
    def observation_time(self) -> datetime:
        """Event time of the latest observation (vitals, labs, imaging), ignoring ADT
        events; the state time when there is none.

        Raises:
            ValueError: No event was applied yet.
        """
        latest = self._observation_ms()
        return from_ms(latest) if latest is not None else self.state_time

    def observations(self) -> dict[str, list[tuple[datetime, float]]]:
        """Per-code ``(time, value)`` series, time-sorted, as the feature code expects."""
        return {code: [(from_ms(t), v) for t, v in points] for code, points in self.series.items()}

    def features(self, window: timedelta, at: datetime | None = None) -> FeatureWindow:
        """The model input at ``at`` (default: the watermark), via the shared feature code.

        Same result as ``build_features(self.observations(), ...)``, which the training
        uses, without turning every stored time into a ``datetime`` and back: the
        integer offsets go straight to :meth:`StayArrays.from_arrays` (that round trip
        was about a tenth of the worker's CPU time; see ``BENCHMARKS.md``).
        """
        end = self.state_time if at is None else at
        if self.admit_ms is None:
            return build_features(
                self.observations(), self.statics, admit_time=end, end_time=end, window=window
            )
        admit_ms = self.admit_ms
        codes: list[int] = []
        offsets_us: list[int] = []
        values: list[float] = []
        for code, points in self.series.items():
            index = _SERIES_INDEX.get(code)
            if index is None:
                continue
            for t, v in points:
                codes.append(index)
                offsets_us.append((t - admit_ms) * 1000)
                values.append(v)
        stay = StayArrays.from_arrays(
            codes, offsets_us, values, self.statics, admit_time=from_ms(admit_ms)
        )
        return features_at(stay, end, window=window)

    def news2(self, max_age: timedelta, at: datetime | None = None) -> News2Result:
        """NEWS2 from the latest observation of each input at ``at`` (default: watermark).

        Values a proxy cannot use (for example a ``MechVent`` that is not 0 or 1) are
        treated as missing rather than failing the whole score.
        """
        end = self.state_time if at is None else at
        end_ms = to_ms(end)
        latest: dict[str, tuple[float, datetime] | None] = {}
        for code in NEWS2_INPUT_CODES:
            points = self.series.get(code)
            if not points:
                continue
            index = last_before(points, end_ms + 1)  # at or before: times are integers
            if index >= 0:
                t, v = points[index]
                latest[code] = (v, from_ms(t))
        try:
            return news2_from_observations(latest, at=end, max_age=max_age)
        except ConfigError:
            cleaned = {k: v for k, v in latest.items() if k not in {"MechVent", "FiO2"}}
            return news2_from_observations(cleaned, at=end, max_age=max_age)

    def take_provenance(self) -> tuple[tuple[str, ...], tuple[OffsetRange, ...]]:
        """Return and clear the event ids and offset ranges seen since the last score."""
        ids = tuple(self.pending_ids)
        ranges = []
        for key, (first, last) in sorted(self.pending_offsets.items()):
            topic, partition = key.split("\x1f")
            ranges.append(
                OffsetRange(
                    topic=topic, partition=int(partition), first_offset=first, last_offset=last
                )
            )
        self.pending_ids = []
        self.pending_offsets = {}
        return ids, tuple(ranges)

    def mark_scored(self, score: Mapping[str, Any], at: datetime | None = None) -> None:
        """Record that the state was scored at ``at`` (default: the watermark)."""
        self.last_scored_ms = self.watermark_ms if at is None else to_ms(at)
        self.last_score = dict(score)
        self.changed = False

    # -- lifecycle -------------------------------------------------------------------------

    def expired(self, now: datetime, silence: timedelta) -> bool:
        """True when the patient was discharged, or silent for ``silence``, as of ``now``
        (an event time, for example the worker's global watermark)."""
        return self.discharged_ms is not None or _silent(self.watermark_ms, now, silence)

    def may_drop(self, now: datetime, silence: timedelta, lateness: timedelta) -> bool:
        """Whether this state may be dropped as of the event time ``now``: the lifecycle's
        end (discharged at least ``lateness`` ago, or silent for ``silence``), as
        :meth:`removable` judges a stored one."""
        fields = {"discharged_ms": self.discharged_ms, "watermark_ms": self.watermark_ms}
        return PatientState.removable(fields, now, silence, lateness)

    @staticmethod
    def removable(
        data: Mapping[str, Any], now: datetime, silence: timedelta, lateness: timedelta
    ) -> bool:
        """Whether the state stored as ``data`` (:meth:`to_dict`) can be dropped as of the
        event time ``now``: discharged at least ``lateness`` ago (late events of a
        discharged patient may still arrive until then), or, not discharged, silent for
        ``silence`` (:meth:`expired`). Reads two fields, so a worker can sweep thousands of
        states without decoding them."""
        discharged_ms = data.get("discharged_ms")
        if discharged_ms is not None:
            return to_ms(now) - int(discharged_ms) >= _td_ms(lateness)
        return _silent(data.get("watermark_ms"), now, silence)

    # -- serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for the Faust table and its changelog)."""
        return {
            "v": 1,
            "patient_id": self.patient_id,
            "admit_ms": self.admit_ms,
            "statics": self.statics,
            "series": {code: [[t, v] for t, v in pts] for code, pts in self.series.items()},
            "watermark_ms": self.watermark_ms,
            "stream_watermarks": self.stream_watermarks,
            "recent_ids": self.recent_ids,
            "last_scored_ms": self.last_scored_ms,
            "changed": self.changed,
            "pending_ids": self.pending_ids,
            "pending_offsets": self.pending_offsets,
            "discharged_ms": self.discharged_ms,
            "images": [[t, emb] for t, emb in self.images],
            "studies": self.studies,
            "last_score": self.last_score,
            "alert": self.alert,
            "artifacts": self.artifacts,
            "model_state": _model_state_dict(self.model_state),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PatientState:
        """Rebuild a state from :meth:`to_dict` output.

        Raises:
            StateError: The dict is not a version-1 state (a ``ValueError``).
        """
        if data.get("v") != 1:
            raise StateError(f"unsupported state version {data.get('v')!r}")
        return cls(
            patient_id=str(data["patient_id"]),
            admit_ms=data["admit_ms"],
            statics=dict(data["statics"]),
            series={
                code: [(int(t), float(v)) for t, v in pts] for code, pts in data["series"].items()
            },
            watermark_ms=data["watermark_ms"],
            stream_watermarks={str(k): int(v) for k, v in data["stream_watermarks"].items()},
            recent_ids={str(k): int(v) for k, v in data["recent_ids"].items()},
            last_scored_ms=data["last_scored_ms"],
            changed=bool(data["changed"]),
            pending_ids=list(data["pending_ids"]),
            pending_offsets={k: list(v) for k, v in data["pending_offsets"].items()},
            discharged_ms=data["discharged_ms"],
            images=[(int(t), list(emb)) for t, emb in data["images"]],
            studies=[dict(study) for study in data.get("studies", [])],
            last_score=data["last_score"],
            alert=dict(data["alert"]),
            artifacts=int(data["artifacts"]),
            model_state=_model_state_from(data.get("model_state")),
        )


def _model_state_dict(model_state: ModelState | None) -> dict[str, Any] | None:
    if model_state is None:
        return None
    return {
        "model": model_state.model,
        "admit_ms": model_state.admit_ms,
        "bin": model_state.bin,
        "vector": base64.b64encode(model_state.vector).decode(),
    }


def _model_state_from(data: Mapping[str, Any] | None) -> ModelState | None:
    if data is None:
        return None
    return ModelState(
        model=str(data["model"]),
        admit_ms=int(data["admit_ms"]),
        bin=int(data["bin"]),
        vector=base64.b64decode(data["vector"]),
    )


def _silent(watermark_ms: int | None, now: datetime, silence: timedelta) -> bool:
    """Nothing newer than ``watermark_ms`` for ``silence`` as of the event time ``now``."""
    return watermark_ms is not None and to_ms(now) - int(watermark_ms) >= _td_ms(silence)


def _td_ms(delta: timedelta) -> int:
    return int(delta / timedelta(milliseconds=1))
