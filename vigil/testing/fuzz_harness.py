"""Feed a fuzz stream through the pure core as the worker does, and check the invariants.

:func:`feed` plays each :class:`~vigil.testing.fuzz_corpus.Item` through
:meth:`Processor.ingest` (or :meth:`Processor.ingest_ack`), finishes every snapshot with
a deterministic model answer (risk from NEWS2), and records the outputs. :func:`check`
returns the broken invariants as text, each naming the mutation class involved.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from streams.core.events import DeadLetterRecord, ImagingEvent, TopicKind
from streams.core.imaging import StudyAnalysis
from streams.core.pipeline import ModelAnswer, Processor, Snapshot
from streams.core.state import Origin, Outcome, PatientState
from vigil.testing.fuzz_corpus import Item

__all__ = ["Outcome", "Run", "assign_origins", "check", "feed", "outcome_of"]


def assign_origins(items: list[Item], prefix: str) -> list[Origin]:
    """Kafka-like origins: offsets count up per topic and partition in stream order."""
    offsets: Counter[tuple[str, int]] = Counter()
    origins = []
    for item in items:
        topic = f"{prefix}.{item.kind.value}"
        origins.append(Origin(topic, item.partition, offsets[topic, item.partition]))
        offsets[topic, item.partition] += 1
    return origins


def _answer(snapshot: Snapshot) -> ModelAnswer:
    return ModelAnswer(risk=min(1.0, 0.02 + snapshot.news2.total / 12), model_version="fuzz")


def _analysis(study: ImagingEvent) -> StudyAnalysis:
    # What the imaging adapter would hand over, derived from the study id.
    digest = hashlib.sha256(study.study_id.encode()).digest()
    return StudyAnalysis(
        embedding=tuple(b / 255 for b in digest * 2),
        class_probability=digest[0] / 255,
        lesion_count=digest[1] % 3,
        lesion_area_fraction=digest[2] / 2550,
        mask_threshold=0.5,
        model_version="fuzz",
        image_shape=(64, 64),
        heatmap_uri=None,
    )


def _snapshot_view(snapshot: Snapshot) -> tuple[Any, ...]:
    window = snapshot.window
    arrays = (window.values, window.mask, window.delta_hours, window.statics, window.static_mask)
    return (
        snapshot.patient_id,
        snapshot.at,
        snapshot.event_ids,
        snapshot.offsets,
        snapshot.images,
        tuple(sorted(snapshot.latest.items())),
        snapshot.news2.total,
        tuple(a.tobytes() for a in arrays),
    )


@dataclass
class Run:
    """What a stream produced.

    Attributes:
        results: Per item: the dead letter (or None) and the outcome (or None).
        outputs: Per item, a digest of what it produced besides a dead letter: outcome,
            snapshot, score, alerts and audit records (the final flush last).
        cited: Every event id cited by a snapshot, in order.
        states: Final patient states, as dicts.
    """

    results: list[tuple[DeadLetterRecord | None, str | None]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    cited: list[str] = field(default_factory=list)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)


def _score(processor: Processor, states: dict[str, PatientState], snap: Snapshot) -> list[Any]:
    score, decisions = processor.finish(states, snap, _answer(snap))
    alerts = processor.alert_records(snap, score, decisions, None)
    audits = processor.audit_records(alerts)
    return [
        _snapshot_view(snap),
        score.model_dump_json(),
        *(a.model_dump_json() for a in alerts),
        *(a.model_dump_json() for a in audits),
    ]


def _digest(produced: list[Any]) -> str:
    # Outputs are compared, not kept: a long run would hold every feature window.
    return hashlib.sha256(repr(produced).encode()).hexdigest()


def _resolve_ack(item: Item, states: dict[str, PatientState]) -> bytes:
    state = states.get(item.patient_id)
    active = None if state is None else state.alert.get("active")
    payload = dict(item.payload)
    if active is not None:
        payload["alert_id"] = active["id"]
    return json.dumps(payload).encode()


def feed(processor: Processor, items: list[Item], origins: list[Origin], *, flush: bool) -> Run:
    """Play ``items`` (with their ``origins``) through ``processor``.

    Args:
        flush: At the end, snapshot and score every patient with inputs not yet cited.
    """
    states: dict[str, PatientState] = {}
    run = Run()
    for item, origin in zip(items, origins, strict=True):
        produced: list[Any] = []
        if item.kind is TopicKind.ACKS:
            raw = _resolve_ack(item, states) if item.dynamic else item.raw
            ack = processor.ingest_ack(states, item.key, raw, origin)
            run.results.append((ack.deadletter, None))
            if ack.alert is not None:
                produced.append(ack.alert.model_dump_json())
            if ack.audit is not None:
                produced.append(ack.audit.model_dump_json())
        else:
            result = processor.ingest(states, item.kind, item.key, item.raw, origin)
            run.results.append((result.deadletter, outcome_of(result.outcome)))
            produced.append((result.patient_id, outcome_of(result.outcome), result.artifacts))
            snapshot = result.snapshot
            if result.imaging is not None:  # as the worker does once the pixels are read
                study = processor.add_study(
                    states, result.imaging, _analysis(result.imaging), origin
                )
                produced.append((outcome_of(study.outcome), study.finding, study.deadletter))
                snapshot = study.snapshot
            if snapshot is not None:
                run.cited.extend(snapshot.event_ids)
                produced.extend(_score(processor, states, snapshot))
        run.outputs.append(_digest(produced))
    if flush:
        final: list[Any] = []
        for state in states.values():
            if state.pending_ids:
                snap = processor.snapshot(state)
                run.cited.extend(snap.event_ids)
                final.extend(_score(processor, states, snap))
        run.outputs.append(_digest(final))
    run.states = {pid: state.to_dict() for pid, state in states.items()}
    return run


def outcome_of(outcome: Outcome | None) -> str | None:
    """The outcome's value, None when the record was rejected at the edge."""
    return None if outcome is None else outcome.value


def _origin_errors(item: Item, origin: Origin, dead: DeadLetterRecord) -> list[str]:
    errors = []
    where = (dead.source_topic, dead.partition, dead.offset)
    if where != (origin.topic, origin.partition, origin.offset):
        errors.append(f"{item.cls}: dead letter names {where}, record came from {origin}")
    if dead.payload_size_bytes != len(item.raw):
        errors.append(
            f"{item.cls}: payload_size_bytes {dead.payload_size_bytes} != {len(item.raw)}"
        )
    if dead.payload_encoding == "utf-8" and not item.raw.startswith(dead.payload.encode()):
        errors.append(f"{item.cls}: dead-letter payload is not the record's bytes")
    key = None if item.key is None else item.key.decode("utf-8", "replace")
    if dead.key_encoding == "utf-8" and dead.key != key:
        errors.append(f"{item.cls}: dead-letter key {dead.key!r} is not the record's key")
    return errors


def check(items: list[Item], origins: list[Origin], mixed: Run, clean: Run) -> list[str]:
    """Broken invariants of a mixed run against the run of its valid records alone.

    * every bad record is dead-lettered with its class's reason and its own origin (a
      duplicate is dropped instead: outcome ``duplicate``, nothing emitted);
    * every valid record produces exactly what it produces without the bad ones around
      it, and the final states are the same;
    * every valid event is cited once (after the final flush), a duplicate never twice.
    """
    errors: list[str] = []
    valid_outputs = []
    for item, origin, (dead, outcome), produced in zip(
        items, origins, mixed.results, mixed.outputs, strict=False
    ):
        if item.cls == "duplicate":
            if dead is not None or outcome != Outcome.DUPLICATE.value:
                errors.append(f"duplicate: outcome {outcome}, dead letter {dead and dead.reason}")
            if produced != _digest([(item.patient_id, Outcome.DUPLICATE.value, ())]):
                errors.append("duplicate: produced outputs")
        elif item.bad:
            if dead is None:
                errors.append(f"{item.cls}: not dead-lettered (outcome {outcome})")
                continue
            if dead.reason is not item.expected:
                errors.append(f"{item.cls}: reason {dead.reason.value}, expected {item.expected}")
            errors.extend(_origin_errors(item, origin, dead))
        else:
            valid_outputs.append(produced)
    valid_outputs.append(mixed.outputs[-1])  # the final flush
    if valid_outputs != clean.outputs:
        first = next(
            (
                n
                for n, (a, b) in enumerate(zip(valid_outputs, clean.outputs, strict=False))
                if a != b
            ),
            None,
        )
        errors.append(f"valid records produced other outputs among bad ones (first at {first})")
    if mixed.states != clean.states:
        errors.append("final states differ from the valid-only run")
    counts = Counter(mixed.cited)
    twice = [i for i, n in counts.items() if n > 1]
    if twice:
        errors.append(f"cited more than once: {twice[:5]}")
    expected = {
        i.event_id
        for i in items
        if not i.bad and i.kind is not TopicKind.ACKS and i.event_id is not None
    }
    missing = expected - set(counts)
    if missing:
        errors.append(f"valid events never cited: {sorted(missing)[:5]}")
    stray = set(counts) - expected
    if stray:
        errors.append(f"cited ids that are not valid events: {sorted(stray)[:5]}")
    return errors
