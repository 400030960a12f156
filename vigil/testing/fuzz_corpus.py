"""Valid and adversarial input records for fuzzing the processor and the worker.

Every choice goes through a :class:`Picker`, so the same generators serve hypothesis
(:class:`DrawPicker`, which shrinks a failure to a small case) and plain seeded runs
(:class:`RandomPicker`, for the benchmark and the worker test). A stream is a list of
:class:`Item`: valid events of every input kind (vitals, labs, imaging, ADT, acks) in
per-patient event-time order, with bad records interleaved. Each bad record belongs to a
named mutation class (:data:`MUTATIONS`) and carries the dead-letter reason that class
must produce, so a failure names the class. Two classes are judged by the state layer:
``duplicate`` (a redelivery, dropped without a dead letter) and ``too_late``.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from hypothesis import strategies as st

from streams.core.codes import CODES, Category
from streams.core.events import DeadLetterReason, TopicKind
from streams.core.units import CONVERSIONS, accepted_units

__all__ = [
    "MUTATIONS",
    "STATE_INDEPENDENT",
    "DrawPicker",
    "Item",
    "Mutation",
    "Picker",
    "RandomPicker",
    "StreamSpec",
    "add_bad",
    "build_stream",
    "mutate",
    "replay_items",
    "valid_payload",
]

T = TypeVar("T")
R = DeadLetterReason

ANCHOR = datetime(2024, 3, 1, tzinfo=UTC)
_VITAL_CODES = tuple(c for c, i in CODES.items() if i.category in {Category.VITAL, Category.DEVICE})
_LAB_CODES = tuple(c for c, i in CODES.items() if i.category is Category.LAB)
_INTEGER_CODES = {"GCS": (3, 15), "MechVent": (0, 1)}


class Picker(Protocol):
    """Source of choices: hypothesis draws or a seeded random generator."""

    def integer(self, low: int, high: int) -> int: ...

    def real(self, low: float, high: float) -> float: ...

    def choice(self, options: Sequence[T]) -> T: ...


class DrawPicker:
    """Choices drawn from hypothesis (``st.data()``), so failures shrink."""

    def __init__(self, data: st.DataObject) -> None:
        self._data = data

    def integer(self, low: int, high: int) -> int:
        return self._data.draw(st.integers(low, high))

    def real(self, low: float, high: float) -> float:
        return self._data.draw(st.floats(low, high, allow_nan=False, allow_infinity=False))

    def choice(self, options: Sequence[T]) -> T:
        return self._data.draw(st.sampled_from(options))


class RandomPicker:
    """Choices from a seeded :class:`random.Random` (fast, for large runs)."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)  # noqa: S311 - test data, not secrets

    def integer(self, low: int, high: int) -> int:
        return self._random.randint(low, high)

    def real(self, low: float, high: float) -> float:
        return self._random.uniform(low, high)

    def choice(self, options: Sequence[T]) -> T:
        return options[self._random.randrange(len(options))]


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- valid payloads --------------------------------------------------------------------------


def _value(pick: Picker, code: str) -> float:
    info = CODES[code]
    if code in _INTEGER_CODES:
        return float(pick.integer(*_INTEGER_CODES[code]))
    if pick.integer(0, 19) == 0:  # an artifact: valid on the wire, kept out of features
        return round(info.high * 2 + 1, 2)
    return round(pick.real(info.low, info.high), 2)


def _observations(pick: Picker, codes: Sequence[str]) -> list[dict[str, Any]]:
    chosen: list[str] = []
    for _ in range(pick.integer(1, 5)):
        code = pick.choice(codes)
        if code not in chosen:
            chosen.append(code)
    return [
        {"code": c, "value": _value(pick, c), "unit": pick.choice(CONVERSIONS[c][0].spellings)}
        for c in chosen
    ]


def valid_payload(
    pick: Picker, kind: TopicKind, patient_id: str, event_id: str, at: datetime, *, first: bool
) -> dict[str, Any]:
    """A valid input record of ``kind`` (vitals, labs, imaging, adt) as a JSON object.

    Args:
        first: The patient's first ADT record (an ``admit``); later ones transfer.
    """
    head: dict[str, Any] = {
        "schema_version": 1,
        "event_id": event_id,
        "patient_id": patient_id,
        "event_time": _rfc3339(at),
    }
    if kind in (TopicKind.VITALS, TopicKind.LABS):
        codes = _VITAL_CODES if kind is TopicKind.VITALS else _LAB_CODES
        return {**head, "source": "monitor-7", "observations": _observations(pick, codes)}
    if kind is TopicKind.ADT:
        adt = {**head, "source": "his", "action": "admit" if first else "transfer"}
        if first:
            adt |= {
                "age_years": pick.integer(16, 95),
                "sex": pick.choice(("female", "male", "other", None)),
                "height_cm": round(pick.real(140, 200), 1),
                "weight_kg": round(pick.real(40, 160), 1),
                "icu_type": pick.choice(
                    ("coronary_care", "cardiac_surgery_recovery", "medical", "surgical")
                ),
            }
        adt["care_unit"] = f"ICU-{pick.integer(1, 9)}"
        return adt
    if kind is TopicKind.IMAGING:
        study = f"1.2.840.{pick.integer(1, 10**6)}"
        image: dict[str, Any] = {
            **head,
            "source": "pacs",
            "study_id": study,
            "modality": pick.choice(("CR", "DX", "CT")),
            "metadata": {"view": pick.choice(("AP", "PA")), "kvp": pick.integer(60, 130)},
        }
        if pick.integer(0, 1):
            image["image_uri"] = f"file:///images/{study}.png"
        else:
            pixels = bytes(pick.integer(0, 255) for _ in range(pick.integer(1, 48)))
            image["inline_data"] = base64.urlsafe_b64encode(pixels).decode()
            image["content_type"] = "image/png"
        return image
    raise ValueError(f"{kind} is not an event topic")


def ack_payload(
    pick: Picker, patient_id: str, ack_id: str, alert_id: str, at: datetime
) -> dict[str, Any]:
    """An action on ``alert_id`` (snoozes for 30 min to 2 h)."""
    action = pick.choice(("acknowledge", "snooze", "escalate", "resolve"))
    ack: dict[str, Any] = {
        "schema_version": 1,
        "ack_id": ack_id,
        "patient_id": patient_id,
        "alert_id": alert_id,
        "event_time": _rfc3339(at),
        "action": action,
        "user": f"rn-{pick.integer(1, 999):04d}",
        "reason": "reviewed at bedside",
    }
    if action == "snooze":
        ack["snooze_until"] = _rfc3339(at + timedelta(minutes=pick.integer(30, 120)))
    return ack


# -- mutations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What a mutation needs to know about the consumer."""

    now: datetime
    max_future: timedelta
    max_bytes: int
    other_patient: str


@dataclass(frozen=True)
class Mutated:
    raw: bytes
    key: bytes | None
    reason: DeadLetterReason


Mutate = Callable[[Picker, TopicKind, dict[str, Any], bytes, Context], Mutated]


@dataclass(frozen=True)
class Mutation:
    """A named class of bad record: which kinds it applies to and how it is made."""

    name: str
    kinds: frozenset[TopicKind]
    make: Mutate


_EVENTS = frozenset({TopicKind.VITALS, TopicKind.LABS, TopicKind.IMAGING, TopicKind.ADT})
_ALL = _EVENTS | {TopicKind.ACKS}
_OBS = frozenset({TopicKind.VITALS, TopicKind.LABS})
_REQUIRED = {
    TopicKind.VITALS: ("event_id", "patient_id", "event_time", "source", "observations"),
    TopicKind.LABS: ("event_id", "patient_id", "event_time", "source", "observations"),
    TopicKind.ADT: ("event_id", "patient_id", "event_time", "source", "action"),
    TopicKind.IMAGING: ("event_id", "patient_id", "event_time", "source", "study_id", "modality"),
    TopicKind.ACKS: ("ack_id", "patient_id", "alert_id", "event_time", "action", "user", "reason"),
}
_TEXT_FIELD = {TopicKind.ACKS: "reason"}


def _dump(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, allow_nan=True).encode()


def _key(payload: dict[str, Any]) -> bytes:
    return str(payload["patient_id"]).encode()


def _with(payload: dict[str, Any], **changes: Any) -> bytes:
    return _dump({**payload, **changes})


def _truncated(pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context) -> Mutated:
    return Mutated(raw[: pick.integer(0, len(raw) - 1)], _key(p), R.INVALID_JSON)


def _not_utf8(pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context) -> Mutated:
    field_name = _TEXT_FIELD.get(kind, "source")
    marker = "zzMARKzz"
    bad = pick.choice((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80abc"))
    return Mutated(
        _with(p, **{field_name: marker}).replace(marker.encode(), b"a" + bad + b"b"),
        _key(p),
        R.INVALID_JSON,
    )


def _not_object(
    pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context
) -> Mutated:
    options = (b"[]", b"null", b"42", b'"text"', b"true", b"", b"  ", b"[" + raw + b"]")
    return Mutated(pick.choice(options), _key(p), R.INVALID_JSON)


def _deep(pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context) -> Mutated:
    depth = pick.integer(300, min(20_000, (c.max_bytes - 16) // 2))
    return Mutated(b'{"source":' + b"[" * depth + b"]" * depth + b"}", _key(p), R.INVALID_JSON)


def _missing(pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context) -> Mutated:
    if kind in _OBS and pick.integer(0, 2) == 0:
        observations = [dict(o) for o in p["observations"]]
        del observations[pick.integer(0, len(observations) - 1)][
            pick.choice(("code", "value", "unit"))
        ]
        return Mutated(_with(p, observations=observations), _key(p), R.MISSING_FIELD)
    name = pick.choice(_REQUIRED[kind])
    return Mutated(_dump({k: v for k, v in p.items() if k != name}), _key(p), R.MISSING_FIELD)


_WRONG_TYPES: tuple[Any, ...] = (123, 4.5, True, ["x"], {"x": 1})


def _wrong_type(
    pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context
) -> Mutated:
    if kind in _OBS and pick.integer(0, 1) == 0:
        observations = [dict(o) for o in p["observations"]]
        target = observations[pick.integer(0, len(observations) - 1)]
        name = pick.choice(("code", "value", "unit"))
        bad = ("80", True, None, [80], {"v": 80}) if name == "value" else _WRONG_TYPES
        target[name] = pick.choice(bad)
        return Mutated(_with(p, observations=observations), _key(p), R.INVALID_FIELD)
    name = pick.choice(_REQUIRED[kind])
    if name == "event_time":
        bad = (1714557600, 1714557600000, True, [p[name]], {"t": p[name]})
    elif name == "observations":
        bad = ("HR", 5, {"code": "HR"}, True)
    else:
        bad = _WRONG_TYPES
    return Mutated(_with(p, **{name: pick.choice(bad)}), _key(p), R.INVALID_FIELD)


def _extra(pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context) -> Mutated:
    value = pick.choice((1, "x", None, [1], {"a": 1}))
    if kind in _OBS and pick.integer(0, 1) == 0:
        observations = [dict(o) for o in p["observations"]]
        observations[0]["flag"] = value
        return Mutated(_with(p, observations=observations), _key(p), R.INVALID_FIELD)
    return Mutated(
        _with(p, **{pick.choice(("extra", "priority", "eventTime")): value}),
        _key(p),
        R.INVALID_FIELD,
    )


def _bad_value(pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context) -> Mutated:
    common: list[dict[str, Any]] = [
        {"patient_id": pick.choice(("-starts-with-dash", "", "x" * 65, "pat ient", "pätient"))},
        {"schema_version": pick.choice((0, 2, "1", True, 1.0))},
        {"event_time" if kind is not TopicKind.ACKS else "ack_id": "not a time"},
    ]
    specific: list[dict[str, Any]]
    if kind in _OBS:
        specific = [
            {"observations": []},
            {"observations": [*p["observations"], p["observations"][0]]},  # a code twice
            {"source": "x" * 129},
        ]
    elif kind is TopicKind.ADT:
        specific = [
            {"action": pick.choice(("readmit", "ADMIT", ""))},
            {"sex": pick.choice(("F", "unknown", 1))},
            {"icu_type": pick.choice((1, "icu", "Medical"))},
            {"care_unit": "x" * 65},
        ]
    elif kind is TopicKind.IMAGING:
        specific = [
            {"modality": pick.choice(("xray", "C", "CTMR", "ct"))},
            {"image_uri": pick.choice(("ftp://host/x", "images/x.png", "file://"))},
            {"image_uri": None, "inline_data": None},
            {"inline_data": "!!not base64!!"},
            {"metadata": {"nested": {"a": 1}}},
        ]
    else:
        specific = [
            {"action": pick.choice(("ack", "snooze_all", ""))},
            {"alert_id": pick.choice(("XYZ", "0" * 31, "G" * 32))},
            {"action": "snooze", "snooze_until": None},
            {"action": "acknowledge", "snooze_until": p["event_time"]},
        ]
    change = pick.choice(common + specific)
    return Mutated(_with(p, **change), _key(p), R.INVALID_FIELD)


def _naive(pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context) -> Mutated:
    naive = p["event_time"].removesuffix("Z")
    if kind is TopicKind.ADT and pick.integer(0, 1):
        return Mutated(_with(p, hospital_admit_time=naive), _key(p), R.NAIVE_TIMESTAMP)
    return Mutated(_with(p, event_time=naive), _key(p), R.NAIVE_TIMESTAMP)


def _extreme_time(
    pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context
) -> Mutated:
    moment = pick.choice(
        (
            "0001-01-01T00:00:00Z",
            "0001-01-01T00:30:00+01:00",
            "0001-01-02T00:00:00Z",
            "1900-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999Z",
            "9999-12-31T23:59:59-01:00",
        )
    )
    return Mutated(_with(p, event_time=moment), _key(p), R.INVALID_FIELD)


def _future(pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context) -> Mutated:
    ahead = c.max_future + timedelta(seconds=pick.integer(2, 3 * 10**9))
    moment = "9999-12-31T23:59:59Z" if pick.integer(0, 9) == 0 else _rfc3339(c.now + ahead)
    return Mutated(_with(p, event_time=moment), _key(p), R.FUTURE_EVENT)


def _huge(pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context) -> Mutated:
    excess = c.max_bytes - len(raw) + pick.integer(1, 4096)
    if pick.integer(0, 1):
        return Mutated(raw + b" " * excess, _key(p), R.PAYLOAD_TOO_LARGE)
    text_field = _TEXT_FIELD.get(kind, "source")
    return Mutated(
        _with(p, **{text_field: "a" * (len(raw) + excess)}), _key(p), R.PAYLOAD_TOO_LARGE
    )


def _key_mismatch(
    pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context
) -> Mutated:
    return Mutated(raw, c.other_patient.encode(), R.INVALID_FIELD)


_NON_FINITE = (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"1" + b"0" * 400)


def _non_finite(
    pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context
) -> Mutated:
    marker = '"zzNUMzz"'
    literal = pick.choice(_NON_FINITE)
    if kind in _OBS:
        observations = [dict(o) for o in p["observations"]]
        target = observations[pick.integer(0, len(observations) - 1)]
        pressure = pick.integer(0, 3) == 0
        if pressure:  # finite on the wire, overflows when converted from kPa
            target |= {"code": "SysABP", "unit": "kPa", "value": 1.7e308}
            if sum(o["code"] == "SysABP" for o in observations) > 1:
                observations = [target]
            return Mutated(_with(p, observations=observations), _key(p), R.NON_FINITE)
        target["value"] = "zzNUMzz"
        text = _with(p, observations=observations)
    elif kind is TopicKind.ADT:
        text = _with(p, **{pick.choice(("age_years", "height_cm", "weight_kg")): "zzNUMzz"})
    elif kind is TopicKind.IMAGING:
        text = _with(p, metadata={"kvp": "zzNUMzz"})
    else:
        raise ValueError("acks carry no numbers")
    return Mutated(text.replace(marker.encode(), literal), _key(p), R.NON_FINITE)


def _unknown_code(
    pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context
) -> Mutated:
    code = pick.choice(("Serotonin", "HeartRate", "hr", "X1", "SpO2_ear", "O2Sat", "Resp"))
    observations = [dict(o) for o in p["observations"]]
    observations[pick.integer(0, len(observations) - 1)]["code"] = code
    return Mutated(_with(p, observations=observations), _key(p), R.UNKNOWN_CODE)


def _unknown_unit(
    pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context
) -> Mutated:
    observations = [dict(o) for o in p["observations"]]
    target = observations[pick.integer(0, len(observations) - 1)]
    folded = {"".join(u.split()).casefold() for u in accepted_units(target["code"])}
    units = [
        u for u in ("Hz", "furlong", "mmol", "kg/m2", "%%", "°R", "N") if u.casefold() not in folded
    ]
    target["unit"] = pick.choice(units)
    return Mutated(_with(p, observations=observations), _key(p), R.UNKNOWN_UNIT)


def _ack_missing_user(
    pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context
) -> Mutated:
    return Mutated(_with(p, user=pick.choice(("", " ", "\t\n"))), _key(p), R.MISSING_USER)


def _ack_missing_reason(
    pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context
) -> Mutated:
    return Mutated(_with(p, reason=pick.choice(("", "   "))), _key(p), R.MISSING_REASON)


def _ack_unknown_alert(
    pick: Picker, kind: TopicKind, p: dict[str, Any], raw: bytes, c: Context
) -> Mutated:
    alert_id = f"{pick.integer(0, 2**128 - 1):032x}"
    return Mutated(_with(p, alert_id=alert_id), _key(p), R.UNKNOWN_ALERT)


def _m(name: str, kinds: frozenset[TopicKind], make: Mutate) -> Mutation:
    return Mutation(name, kinds, make)


MUTATIONS: dict[str, Mutation] = {
    m.name: m
    for m in (
        _m("truncated_json", _ALL, _truncated),
        _m("invalid_utf8", _ALL, _not_utf8),
        _m("not_an_object", _ALL, _not_object),
        _m("deep_nesting", _ALL, _deep),
        _m("missing_field", _ALL, _missing),
        _m("wrong_type", _ALL, _wrong_type),
        _m("extra_field", _ALL, _extra),
        _m("bad_value", _ALL, _bad_value),
        _m("naive_timestamp", _ALL, _naive),
        _m("extreme_timestamp", _ALL, _extreme_time),
        _m("future_event", _ALL, _future),
        _m("huge_payload", _ALL, _huge),
        _m("key_mismatch", _ALL, _key_mismatch),
        _m("non_finite", _EVENTS, _non_finite),
        _m("unknown_code", _OBS, _unknown_code),
        _m("unknown_unit", _OBS, _unknown_unit),
        _m("ack_missing_user", frozenset({TopicKind.ACKS}), _ack_missing_user),
        _m("ack_missing_reason", frozenset({TopicKind.ACKS}), _ack_missing_reason),
        _m("ack_unknown_alert", frozenset({TopicKind.ACKS}), _ack_unknown_alert),
    )
}
"""Mutation classes judged at the edge (decode, or the ack's own checks)."""

STATE_INDEPENDENT = frozenset(MUTATIONS) - {"ack_missing_user", "ack_missing_reason"}
"""Classes whose reason does not depend on the patient's state (``ack_missing_*`` need the
patient to have a state, else the ack is ``unknown_alert``)."""


def mutate(
    pick: Picker, name: str, kind: TopicKind, payload: dict[str, Any], context: Context
) -> Mutated:
    """Apply mutation class ``name`` to a valid ``payload`` of ``kind``."""
    return MUTATIONS[name].make(pick, kind, payload, _dump(payload), context)


# -- streams ------------------------------------------------------------------------------------


@dataclass
class Item:
    """One record of a stream.

    Attributes:
        kind: Input topic kind (``acks`` included).
        key: Kafka key.
        raw: Kafka value; for a ``dynamic`` ack, filled in when fed (the alert id is the
            patient's active alert at that moment).
        cls: ``valid``, a :data:`MUTATIONS` name, ``duplicate`` or ``too_late``.
        expected: The dead-letter reason the record must get; None for a valid record and
            a duplicate.
        event_id: The event id (or ack id), when the record has one.
        patient_id: The patient it is about.
        partition: Partition in the processor tests (the worker test uses Kafka's).
        payload: The JSON object before encoding (valid records and dynamic acks).
    """

    kind: TopicKind
    key: bytes | None
    raw: bytes
    cls: str
    expected: DeadLetterReason | None
    event_id: str | None
    patient_id: str
    partition: int = 0
    payload: dict[str, Any] = field(default_factory=dict)
    dynamic: bool = False

    @property
    def bad(self) -> bool:
        """A record the valid-only run leaves out."""
        return self.cls != "valid"


@dataclass(frozen=True)
class StreamSpec:
    """How to build a stream.

    Attributes:
        patients: Patient ids (a valid event of each comes first: ADT admit or vitals).
        valid: Number of valid records (acks included).
        bad: Number of bad records, spread over the mutation classes.
        now: The consumer's clock; valid event times stay before it.
        lateness: The consumer's out-of-order bound (for ``too_late``).
        max_future: The consumer's clock skew allowance (for ``future_event``).
        max_bytes: The consumer's record size limit (for ``huge_payload``).
        classes: Mutation classes to use (default: all, plus duplicate and too_late).
        acks: Include acks (dynamic valid acks and ack mutations).
        start: Event time of the first record.
        prefix: Event id prefix, unique per stream.
    """

    patients: Sequence[str]
    valid: int
    bad: int
    now: datetime
    lateness: timedelta = timedelta(hours=2)
    max_future: timedelta = timedelta(minutes=5)
    max_bytes: int = 256 * 1024
    classes: Sequence[str] = (*MUTATIONS, "duplicate", "too_late")
    acks: bool = True
    start: datetime = ANCHOR
    prefix: str = "fz"


def replay_items(events: Sequence[Any]) -> list[Item]:
    """Valid items from replay events (``streams.replay.ReplayEvent``, e.g. PhysioNet)."""
    items = []
    for event in events:
        payload = json.loads(event.payload)
        items.append(
            Item(
                event.kind,
                event.key,
                event.payload,
                "valid",
                None,
                payload["event_id"],
                event.patient_id,
                0,
                payload,
            )
        )
    return items


_EVENT_KINDS = (
    TopicKind.VITALS,
    TopicKind.VITALS,
    TopicKind.LABS,
    TopicKind.ADT,
    TopicKind.IMAGING,
)


def build_stream(pick: Picker, spec: StreamSpec) -> list[Item]:
    """A stream of valid records with bad ones interleaved (see the module docstring).

    Valid records keep per-patient event-time order (5-90 min apart), so none is late.
    """
    clocks = {p: spec.start + timedelta(minutes=pick.integer(0, 600)) for p in spec.patients}
    admitted: set[str] = set()
    stream: list[Item] = []
    partitions = {p: i % 8 for i, p in enumerate(spec.patients)}
    for n in range(spec.valid):
        pid = spec.patients[n] if n < len(spec.patients) else pick.choice(spec.patients)
        clocks[pid] += timedelta(minutes=pick.integer(5, 90))
        at = min(clocks[pid], spec.now - timedelta(seconds=1))
        if spec.acks and pid in admitted and pick.integer(0, 9) == 0:
            ack_id = f"{spec.prefix}-ack-{n}"
            payload = ack_payload(pick, pid, ack_id, "0" * 32, at)
            stream.append(
                Item(
                    TopicKind.ACKS,
                    pid.encode(),
                    b"",
                    "valid",
                    None,
                    ack_id,
                    pid,
                    partitions[pid],
                    payload,
                    dynamic=True,
                )
            )
            continue
        kind = (
            TopicKind.ADT
            if pid not in admitted and pick.integer(0, 1)
            else pick.choice(_EVENT_KINDS)
        )
        event_id = f"{spec.prefix}-{n}"
        payload = valid_payload(pick, kind, pid, event_id, at, first=pid not in admitted)
        admitted.add(pid)
        stream.append(
            Item(
                kind,
                pid.encode(),
                _dump(payload),
                "valid",
                None,
                event_id,
                pid,
                partitions[pid],
                payload,
            )
        )
    return add_bad(pick, stream, spec)


def add_bad(
    pick: Picker, stream: list[Item], spec: StreamSpec, spread: int | None = None
) -> list[Item]:
    """Interleave ``spec.bad`` bad records into a stream of valid ones.

    Args:
        spread: Place each bad record at most this many records after its source (None:
            anywhere after it). A worker may expire a silent patient's state; a duplicate
            or late copy placed near its source still meets that state.
    """
    valid = [(n, i) for n, i in enumerate(stream) if i.kind is not TopicKind.ACKS]
    context = Context(spec.now, spec.max_future, spec.max_bytes, "zz-other-patient")
    placed: list[tuple[float, Item]] = [(float(n), i) for n, i in enumerate(stream)]
    for n in range(spec.bad):
        cls = pick.choice(spec.classes)
        position, source = valid[pick.integer(0, len(valid) - 1)]
        if cls == "duplicate":
            item = Item(
                source.kind,
                source.key,
                source.raw,
                cls,
                None,
                source.event_id,
                source.patient_id,
                source.partition,
            )
            if pick.integer(0, 1):  # same id, other content
                item.raw = _with(source.payload, source="replayed")
        elif cls == "too_late":
            late_at = datetime.fromisoformat(source.payload["event_time"]) - spec.lateness
            moved = {
                **source.payload,
                "event_id": f"{spec.prefix}-late-{n}",
                "event_time": _rfc3339(late_at - timedelta(minutes=pick.integer(1, 600))),
            }
            if source.kind is TopicKind.ADT:
                moved["action"] = "transfer"
            item = Item(
                source.kind,
                source.key,
                _dump(moved),
                cls,
                R.TOO_LATE,
                moved["event_id"],
                source.patient_id,
                source.partition,
            )
        else:
            kinds = sorted(MUTATIONS[cls].kinds)
            kind = (
                pick.choice(kinds)
                if spec.acks
                else pick.choice([k for k in kinds if k != TopicKind.ACKS] or kinds)
            )
            if kind is TopicKind.ACKS:
                at = datetime.fromisoformat(source.payload["event_time"])
                base = ack_payload(
                    pick, source.patient_id, f"{spec.prefix}-badack-{n}", f"{n:032x}", at
                )
            elif kind is source.kind:
                base = {**source.payload, "event_id": f"{spec.prefix}-bad-{n}"}
            else:
                at = datetime.fromisoformat(source.payload["event_time"])
                base = valid_payload(
                    pick, kind, source.patient_id, f"{spec.prefix}-bad-{n}", at, first=False
                )
            made = mutate(pick, cls, kind, base, context)
            item = Item(
                kind,
                made.key,
                made.raw,
                cls,
                made.reason,
                base.get("event_id", base.get("ack_id")),
                source.patient_id,
                source.partition,
            )
        # After its source: a duplicate repeats it, a late copy trails its stream's clock,
        # and an action on the patient comes once the patient has a state.
        room = len(stream) - position if spread is None else min(spread, len(stream) - position)
        after = pick.real(0.0, room) if room > 1 else 0.0
        placed.append((position + 0.5 + after, item))
    placed.sort(key=lambda entry: entry[0])
    return [item for _, item in placed]
