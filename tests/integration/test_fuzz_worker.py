"""Fuzzing a real worker: a few thousand records, real PhysioNet stays with generated bad
records interleaved (``vigil/testing/fuzz_kafka.py``), through ``vigil worker`` on the local stack.

The worker must stay up; every bad record must be on the dead-letter topic with its
class's reason and its own topic, partition and offset; a duplicate must be dropped; every
valid record must be cited by a score (or dead-lettered as too late).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.stack.settings import StackSettings
from vigil.testing.fuzz_kafka import run_worker_fuzz


@pytest.mark.slow
def test_worker_survives_and_dead_letters_every_bad_record(
    stack: StackSettings, tmp_path: Path
) -> None:
    report = run_worker_fuzz(
        stack.kafka_bootstrap,
        total=1500,
        bad_fraction=0.3,
        seed=7,
        workdir=tmp_path,
        timeout_seconds=110,
    )
    print(report.summary())
    assert report.worker_alive
    assert report.errors == []
    # Every class was exercised (about 450 bad records over 19 classes).
    assert len(report.classes) == 20, report.classes
