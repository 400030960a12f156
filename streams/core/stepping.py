"""What a patient's next step-model request holds, built from its state in O(bins).

The step model (``deterioration_step``, docs/deterioration.md, "Step model") keeps its
recurrent state and running statistics in the patient's state (:class:`ModelState`):
the vector after the last **committed** hour bin. A score at time ``at`` sends that vector
with the bins that closed since (hours with an observation, oldest first) and the **open**
bin holding ``at``; the model commits the closed bins into a new vector and runs the open
bin provisionally for the risk. Only bins are read, never the whole window, so a score
costs the same on the first hour and the hundredth.

The bin inputs follow the training path's one rule
(:func:`streams.core.step_features.bin_on_ticks`), applied to the state's integer
millisecond series without converting every stored time to a ``datetime``; a test checks
them against :func:`~streams.core.step_features.bin_inputs` on real stays.

A closed bin is **committed** (folded into the stored vector) only once its end lies
``commit_delay`` of event time behind the scoring time; closed bins newer than that are
run provisionally with the open bin, every call, until they are old enough. Records of
different input streams reach a patient's state in event-time order only as far as the
worker's merger can keep them (docs/worker.md, "Input order"); a lab that arrives after
a later vital sign still lands in a bin that is not committed yet, so the stored vector
does not depend on how the streams interleaved.

A record later than that, one that lands in a bin the stored vector has already committed
(``late``: the state lists every record applied out of event-time order),
makes the stored vector **stale**: it was computed without that record. The request then
starts from admission again, from the series (``base`` None, :attr:`StepRequest.rebuilt`),
so a score depends only on the records applied before it, never on how earlier records
were grouped into batches or which of them arrived first. That needs the series to reach
back to admission (``history_complete``); past the window the stale vector is kept, the
late record counting for NEWS2, the window models, the OOD clock and the provisional bins
only (docs/replay.md, "Determinism of step scoring").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streams.core.features import DEFAULT_STEP
from streams.core.last_seen import hours_since_seen_on_ticks
from streams.core.step_features import BINS_PER_REQUEST, StepBin, bin_on_ticks

__all__ = ["ModelState", "StepRequest", "bin_end_ms", "bin_from_series", "step_request"]

_STEP_MS = int(DEFAULT_STEP.total_seconds() * 1000)
_MS_PER_HOUR = 3_600_000.0
_MAX_SCAN_BINS = 24 * 14
"""Most bins scanned back for uncommitted steps (the longest window a state keeps)."""


@dataclass(frozen=True, slots=True)
class ModelState:
    """The step model's state for one patient.

    Attributes:
        model: ``name/version`` of the served model that wrote it; a vector is only valid
            with that model (an upgrade starts the patient afresh).
        admit_ms: Admission time the bins were aligned to (a changed admission time
            starts afresh too).
        bin: Last committed hour bin since admission (``-1``: none).
        vector: The model's state, little-endian float32, opaque here.
    """

    model: str
    admit_ms: int
    bin: int
    vector: bytes


@dataclass(frozen=True, slots=True)
class StepRequest:
    """One score's step inputs.

    Attributes:
        base: The stored model state, or None (a new patient, or a stale state).
        closed: Steps after ``base`` that closed before the open bin, oldest first.
        open: The open bin's inputs up to the scoring time, or None when nothing was
            observed in it yet (the risk is then that of the committed state).
        open_index: The bin holding the scoring time.
        admit_ms: Admission time the bins are aligned to.
        commit_through: The last bin that may be committed (bins after it are run
            provisionally): the last whose end is ``commit_delay`` before the scoring time.
        hours_since_seen: ``[P]`` hours from the scoring time back to each parameter's
            last observation (:mod:`streams.core.last_seen`; the model's OOD head reads
            it, the state having no clock).
        seen: How many records the patient's state had applied when this request was
            built (:attr:`~streams.core.state.PatientState.applied`).
        rebuilt: The stored vector was stale (a late record in a committed bin), so this
            request starts from admission.
    """

    base: ModelState | None
    closed: tuple[StepBin, ...]
    open: StepBin | None
    open_index: int
    admit_ms: int
    hours_since_seen: npt.NDArray[np.float32]
    commit_through: int
    seen: int = 0
    rebuilt: bool = False

    def committable(self, bins: Sequence[StepBin]) -> int:
        """How many leading bins of ``bins`` (oldest first) may be committed."""
        return sum(1 for b in bins if b.index <= self.commit_through)


def bin_end_ms(admit_ms: int, index: int) -> int:
    """Epoch ms at which hour bin ``index`` (since admission) ends."""
    return admit_ms + (index + 1) * _STEP_MS


def step_request(
    series: Mapping[str, Sequence[tuple[int, float]]],
    *,
    admit_ms: int,
    at_ms: int,
    stored: ModelState | None,
    model: str | None,
    commit_delay_ms: int = 0,
    seen: int = 0,
    late: Sequence[tuple[int, int]] = (),
    history_complete: bool = True,
) -> StepRequest:
    """The step inputs of a score at ``at_ms``.

    Args:
        series: The patient's observations per code, time-sorted ``(epoch ms, value)``.
        admit_ms: Admission time (bins are aligned to it).
        at_ms: Scoring time.
        stored: The patient's stored model state.
        model: ``name/version`` of the model that will answer, when known: a stored state
            written by another model (or for another admission time) is not used.
        commit_delay_ms: How far behind the scoring time a bin must end to be committed
            (at most ``BINS_PER_REQUEST - 2`` hours, so the provisional bins and the
            open one fit one request).
        seen: Records the state has applied so far.
        late: ``(applied count, event ms)`` of the records applied out of event-time order
            since ``stored`` was computed.
        history_complete: The series still holds every observation since admission (so
            a stale ``stored`` can be rebuilt from it).
    """
    open_index = max((at_ms - admit_ms) // _STEP_MS, 0)
    base = stored
    if base is not None and (
        base.admit_ms != admit_ms or (model is not None and base.model != model)
    ):
        base = None
    rebuilt = False
    if (
        base is not None
        and history_complete
        and any(t < bin_end_ms(admit_ms, base.bin) for _, t in late)
    ):
        base, rebuilt = None, True
    first = 0 if base is None else base.bin + 1
    first = max(first, open_index - _MAX_SCAN_BINS)
    closed = []
    for index in range(first, open_index):
        step = bin_from_series(series, admit_ms=admit_ms, index=index, end_ms=None)
        if step is not None:
            closed.append(step)
    current = bin_from_series(series, admit_ms=admit_ms, index=open_index, end_ms=at_ms)
    since = hours_since_seen_on_ticks(series, admit=admit_ms, at=at_ms, ticks_per_hour=_MS_PER_HOUR)
    delay_bins = min(-(-max(commit_delay_ms, 0) // _STEP_MS), BINS_PER_REQUEST - 2)
    commit_through = open_index - 1 - delay_bins
    return StepRequest(
        base,
        tuple(closed),
        current,
        open_index,
        admit_ms,
        since,
        commit_through,
        seen,
        rebuilt,
    )


def bin_from_series(
    series: Mapping[str, Sequence[tuple[int, float]]],
    *,
    admit_ms: int,
    index: int,
    end_ms: int | None,
) -> StepBin | None:
    """One bin's step inputs from the state's epoch-ms series: the training path's rule
    (:func:`streams.core.step_features.bin_on_ticks`) on a millisecond clock.

    Args:
        series: Per code, time-sorted ``(epoch ms, value)``.
        admit_ms: Admission time.
        index: The bin (``>= 0``).
        end_ms: For the open bin, the scoring time inside it; None for a closed bin.

    Returns:
        The inputs, or None when no parameter was observed in the bin.
    """
    return bin_on_ticks(
        series,
        admit=admit_ms,
        index=index,
        end=end_ms,
        step=_STEP_MS,
        ticks_per_hour=_MS_PER_HOUR,
    )
