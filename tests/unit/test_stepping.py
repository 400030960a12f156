"""The worker's step inputs (streams/core/stepping.py) against the training path's.

``bin_from_series`` builds a bin from the state's epoch-ms series; it must give exactly
what :func:`streams.core.step_features.bin_inputs` (the training and parity path, checked
against ``features_at`` in test_step_features.py) gives from the same observations as
datetimes, for every bin of real stays, open or closed: both apply one rule
(``bin_on_ticks``), so this checks the millisecond clock against the datetime one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from streams.core.events import TopicKind
from streams.core.features import DELTA_CAP_HOURS, StayArrays
from streams.core.last_seen import stay_hours_since_seen
from streams.core.pipeline import Processor, ProcessorConfig
from streams.core.state import Origin, PatientState, from_ms, to_ms
from streams.core.step_features import bin_inputs
from streams.core.stepping import ModelState, StepRequest, bin_from_series, step_request
from streams.replay import physionet2012_events, read_length_of_stay

DEMO = Path(__file__).resolve().parents[2] / "data" / "physionet2012-demo"
HOUR_MS = 3_600_000  # the model's bins are hours


def _states(n: int) -> dict[str, PatientState]:
    processor = Processor(ProcessorConfig(), lambda: datetime(2026, 1, 1, tzinfo=UTC))
    states: dict[str, PatientState] = {}
    paths = sorted((DEMO / "set-a").glob("*.txt"))[:n]
    los = read_length_of_stay(DEMO / "Outcomes-a.txt")
    for event in sorted(physionet2012_events(paths, length_of_stay=los)):
        processor.ingest(states, TopicKind(event.kind), event.key, event.payload, Origin("t", 0, 0))
    return states


def _same(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is b
    return all(
        np.array_equal(getattr(a, f), getattr(b, f)) for f in ("values", "mask", "delta_hours")
    ) and getattr(a, "index") == getattr(b, "index")  # noqa: B009


def test_bins_from_the_state_equal_the_training_path_on_real_stays() -> None:
    compared = 0
    for state in _states(8).values():
        assert state.admit_ms is not None
        admit = from_ms(state.admit_ms)
        observations = state.observations()
        for index in range(49):
            closed = bin_from_series(
                state.series, admit_ms=state.admit_ms, index=index, end_ms=None
            )
            want = bin_inputs(observations, admit_time=admit, index=index)
            assert _same(closed, want), (state.patient_id, index)
            at_ms = state.admit_ms + index * HOUR_MS + 37 * 60_000
            open_bin = bin_from_series(
                state.series, admit_ms=state.admit_ms, index=index, end_ms=at_ms
            )
            want_open = bin_inputs(
                observations, admit_time=admit, index=index, end_time=from_ms(at_ms)
            )
            assert _same(open_bin, want_open), (state.patient_id, index)
            compared += 1
    assert compared == 8 * 49


def test_a_request_starts_after_the_stored_bin_and_drops_a_stale_state() -> None:
    state = next(iter(_states(1).values()))
    assert state.admit_ms is not None
    at_ms = state.admit_ms + 10 * HOUR_MS + 5 * 60_000
    fresh = step_request(
        state.series, admit_ms=state.admit_ms, at_ms=at_ms, stored=None, model="m/1"
    )
    assert fresh.open_index == 10
    assert fresh.base is None
    assert [b.index for b in fresh.closed] == sorted(b.index for b in fresh.closed)
    assert all(b.index < 10 for b in fresh.closed)
    stored = ModelState("m/1", state.admit_ms, 6, b"\0" * 8)
    later = step_request(
        state.series, admit_ms=state.admit_ms, at_ms=at_ms, stored=stored, model="m/1"
    )
    assert later.base == stored
    assert [b.index for b in later.closed] == [b.index for b in fresh.closed if b.index > 6]
    upgraded = step_request(
        state.series, admit_ms=state.admit_ms, at_ms=at_ms, stored=stored, model="m/2"
    )
    assert upgraded.base is None  # another model version: start afresh
    moved = step_request(
        state.series,
        admit_ms=state.admit_ms - HOUR_MS,
        at_ms=at_ms,
        stored=stored,
        model="m/1",
    )
    assert moved.base is None  # another admission time: the bins moved


def test_a_late_record_in_a_committed_bin_makes_the_stored_state_stale() -> None:
    """A record applied out of event-time order that lands in a bin the stored vector
    committed: the request starts from admission again (rebuilt from the series), unless
    the series no longer reaches back to admission; one in an uncommitted bin changes
    nothing."""
    state = next(iter(_states(1).values()))
    assert state.admit_ms is not None
    admit = state.admit_ms
    at_ms = admit + 10 * HOUR_MS + 5 * 60_000
    stored = ModelState("m/1", admit, 6, b"\0" * 8)

    def request(late: list[tuple[int, int]], complete: bool = True) -> StepRequest:
        return step_request(
            state.series,
            admit_ms=admit,
            at_ms=at_ms,
            stored=stored,
            model="m/1",
            seen=9,
            late=late,
            history_complete=complete,
        )

    in_committed = [(8, admit + 6 * HOUR_MS + 59 * 60_000)]  # bin 6, committed
    after = [(8, admit + 7 * HOUR_MS)]  # bin 7, not committed yet
    stale = request(in_committed)
    assert stale.base is None
    assert stale.rebuilt
    assert stale.closed[0].index == min(b.index for b in request([]).closed + stale.closed)
    assert {b.index for b in stale.closed} >= {b.index for b in request([]).closed}
    kept = request(after)
    assert kept.base == stored
    assert not kept.rebuilt
    pruned = request(in_committed, complete=False)
    assert pruned.base == stored
    assert not pruned.rebuilt
    assert stale.seen == 9


def test_the_state_lists_out_of_order_records_until_a_vector_has_seen_them() -> None:
    processor = Processor(ProcessorConfig(), lambda: datetime(2026, 1, 1, tzinfo=UTC))
    states: dict[str, PatientState] = {}
    paths = sorted((DEMO / "set-a").glob("*.txt"))[:1]
    los = read_length_of_stay(DEMO / "Outcomes-a.txt")
    events = sorted(physionet2012_events(paths, length_of_stay=los))
    # A lab held back behind the vital signs that follow it (not past the next lab, which
    # would make it too late for its own stream): applied out of event-time order.
    held = next(
        i
        for i, e in enumerate(events)
        if e.kind == "labs"
        and i > 5
        and events[i + 1].kind != "labs"
        and events[i + 1].event_time > e.event_time
    )
    behind = held + 1
    while events[behind].kind != "labs" and behind < held + 4:
        behind += 1
    order = [*events[:held], *events[held + 1 : behind], events[held]]
    for event in order:
        processor.ingest(states, TopicKind(event.kind), event.key, event.payload, Origin("t", 0, 0))
    state = next(iter(states.values()))
    assert state.late_records == [(state.applied, to_ms(events[held].event_time))]
    state.keep_model_state(ModelState("m/1", state.admit_ms or 0, 1, b""), state.applied - 1)
    assert state.late_records == [(state.applied, to_ms(events[held].event_time))]  # not seen yet
    state.keep_model_state(ModelState("m/1", state.admit_ms or 0, 1, b""), state.applied)
    assert state.late_records == []


def test_hours_since_seen_from_the_state_equal_the_training_path_on_real_stays() -> None:
    """The OOD head's clock (streams/core/last_seen.py): the worker's epoch-ms series at a
    scoring time against the packed stay the fit reads, at every 20 minutes to 60 h (past
    the 48-hour cap, and inside bins)."""
    minutes = list(range(0, 60 * 60 + 1, 20))
    compared = 0
    for state in _states(8).values():
        assert state.admit_ms is not None
        admit = from_ms(state.admit_ms)
        stay = StayArrays.from_observations(state.observations(), {}, admit_time=admit)
        want = stay_hours_since_seen(stay, minutes)
        for row, minute in zip(want, minutes, strict=True):
            at_ms = state.admit_ms + minute * 60_000
            request = step_request(
                state.series, admit_ms=state.admit_ms, at_ms=at_ms, stored=None, model=None
            )
            np.testing.assert_array_equal(request.hours_since_seen, row)
            compared += 1
        assert float(want.min()) < 1.0  # recently observed at some scoring time
        assert float(want.max()) == DELTA_CAP_HOURS  # and unseen, or too long ago
    assert compared == 8 * len(minutes)
