"""Property tests of the pure core against malformed and adversarial records.

Streams of valid events (vitals, labs, imaging, ADT, acks) with bad records interleaved
(:mod:`vigil.testing.fuzz_corpus`) go through :class:`Processor` as the worker feeds it. The
processor must never raise; every bad record must be dead-lettered with the reason of its
mutation class and its own origin; a duplicate must be dropped; and the valid records must
produce exactly the states, snapshots, scores and alerts they produce without the bad ones.
Example counts come from the hypothesis profile ``HYPOTHESIS_PROFILE`` (``ci`` or
``bench``, see ``conftest.py``).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from streams.core.pipeline import Processor, ProcessorConfig
from vigil.testing.fuzz_corpus import MUTATIONS, DrawPicker, Item, StreamSpec, build_stream
from vigil.testing.fuzz_harness import assign_origins, check, feed

FUZZ = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
NOW = datetime(2024, 6, 1, tzinfo=UTC)
CONFIG = ProcessorConfig(code_version="fuzz")
CLASSES = (*MUTATIONS, "duplicate", "too_late")


def run_and_check(items: list[Item]) -> list[str]:
    origins = assign_origins(items, "fz")
    processor = Processor(CONFIG, clock=lambda: NOW)
    mixed = feed(processor, items, origins, flush=True)
    valid = [(i, o) for i, o in zip(items, origins, strict=True) if not i.bad]
    clean = feed(processor, [i for i, _ in valid], [o for _, o in valid], flush=True)
    for item in items:
        note(f"{item.kind.value:8} {item.cls:18} {item.raw[:160]!r}")
    return check(items, origins, mixed, clean)


@FUZZ
@given(data=st.data())
def test_mixed_stream_bad_records_dead_lettered_valid_ones_unaffected(data: st.DataObject) -> None:
    pick = DrawPicker(data)
    patients = [f"p{n}" for n in range(pick.integer(1, 5))]
    spec = StreamSpec(
        patients=patients, valid=pick.integer(len(patients), 30), bad=pick.integer(1, 25), now=NOW
    )
    assert run_and_check(build_stream(pick, spec)) == []


@pytest.mark.parametrize("cls", CLASSES)
@settings(FUZZ, max_examples=max(3, FUZZ.max_examples // 3))
@given(data=st.data())
def test_each_mutation_class(cls: str, data: st.DataObject) -> None:
    pick = DrawPicker(data)
    spec = StreamSpec(
        patients=["p0", "p1"],
        valid=pick.integer(2, 12),
        bad=pick.integer(1, 6),
        now=NOW,
        classes=(cls,),
    )
    assert run_and_check(build_stream(pick, spec)) == []
