"""A second worker joining in the middle of a backlog changes no score and no alert.

When a second worker joins, the first one hands partitions over while it holds records
back to merge the input topics in event-time order. Those records used to be released
all at once, out of order: a discharge or hours of labs read ahead were applied before
the vitals they were held for, and two workers scored 2,354 (patient, time) keys fewer
than one, with 1,315 other risks (``bench.scaling --join-after 3``, 200 stays). Now the
first worker finishes what it released, gives the held records up unacknowledged, and
whoever owns each partition next reads them again and merges them in order
(``OrderedIngest.settle``, docs/worker.md "Rebalances").

The same 30 real stays are processed by one worker, then, on fresh topics, by a worker
that a second one joins once the first has scored (the first is frozen while the second
starts, so the join finds a backlog on any machine): the scores and alerts must be the
same records (wall-clock fields and topic prefixes aside; a record repeated by
at-least-once delivery counts once, as consumers upsert by id). The first worker's log
must show that it gave records up, so the test does exercise a hand-over with records
held.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from streams.adapters.topics import create_topics
from streams.replay import physionet2012_events, produce, read_length_of_stay
from streams.settings import WorkerSettings
from vigil.stack.settings import StackSettings
from vigil.testing.outputs import comparable, read_records, wait_until_accounted
from vigil.testing.workers import running_worker, worker_env

DEMO = Path(__file__).resolve().parents[2] / "data" / "physionet2012-demo"
#: Enough backlog that the first worker still holds records when it sees the rebalance:
#: thawed, it works for up to a heartbeat (3 s) before it learns of it, and with 30 stays
#: it had only 67-229 records left then, none in 2 of about 8 runs on 6 Dec.
N_STAYS = 60
FREEZE_AT_MOST_S = 6.0  # the session timeout is 10 s
THAW_S = 0.5
JOIN_DEADLINE_S = 120.0
GAVE_UP = re.compile(r"gave up (\d+) records held for ordering")

Outputs = dict[str, set[str]]  # topic kind -> normalised records as sorted JSON


def _outputs(stack: StackSettings, prefix: str) -> Outputs:
    return {
        kind: {
            json.dumps(comparable(r), sort_keys=True)
            for r in read_records(stack.kafka_bootstrap, f"{prefix}.{kind}")
        }
        for kind in ("scores", "alerts")
    }


def _prepare(stack: StackSettings, prefix: str, events: list[Any]) -> None:
    create_topics(
        WorkerSettings(kafka_bootstrap=stack.kafka_bootstrap, topic_prefix=prefix, app_id=prefix)
    )
    assert produce(events, bootstrap=stack.kafka_bootstrap, topic_prefix=prefix) == len(events)


def _env(stack: StackSettings, prefix: str, data_dir: Path) -> dict[str, str]:
    # OOD off, as in test_determinism.py: the merge order is what is under test.
    # Step scoring, the default (docs/replay.md, "Determinism of step scoring").
    return worker_env(
        stack,
        prefix=prefix,
        app_id=prefix,
        data_dir=data_dir,
        triton_ood_model="",
    )


def _joining(log: Path, at_most_s: float) -> bool:
    """Wait until the worker logging to ``log`` starts to join its group (aiokafka logs
    the partitions it revokes first), for at most ``at_most_s``; whether it did."""
    started = time.monotonic()
    while time.monotonic() - started < at_most_s:
        if log.exists() and "Revoking previously assigned partitions" in log.read_text():
            return True
        time.sleep(0.1)
    return False


def _frozen_until_joining(first: subprocess.Popen[bytes], second_log: Path) -> None:
    """Keep the first worker frozen (SIGSTOP) until the second starts to join, thawing it
    for a moment every FREEZE_AT_MOST_S so that its heartbeats keep it in the group (the
    session timeout is 10 s): however slowly the second starts, the first still holds
    most of its backlog when the hand-over comes."""
    started = time.monotonic()
    while time.monotonic() - started < JOIN_DEADLINE_S:
        os.killpg(first.pid, signal.SIGSTOP)
        try:
            if _joining(second_log, FREEZE_AT_MOST_S):
                return
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        time.sleep(THAW_S)
    raise AssertionError(f"the second worker did not start to join in {JOIN_DEADLINE_S:.0f} s")


def _first_score(stack: StackSettings, prefix: str, deadline_s: float) -> None:
    started = time.monotonic()
    while not read_records(stack.kafka_bootstrap, f"{prefix}.scores"):
        assert time.monotonic() - started < deadline_s, "no score from the first worker"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_worker_joining_mid_backlog_changes_no_score_or_alert(
    stack: StackSettings, unique: str, tmp_path: Path
) -> None:
    paths = sorted((DEMO / "set-a").glob("*.txt"))[:N_STAYS]
    events = list(
        physionet2012_events(paths, length_of_stay=read_length_of_stay(DEMO / "Outcomes-a.txt"))
    )
    ids = {json.loads(e.payload)["event_id"] for e in events}

    alone = f"reb{unique}one"
    _prepare(stack, alone, events)
    log = tmp_path / "alone.log"
    with running_worker(_env(stack, alone, tmp_path / "alone"), log) as worker:
        wait_until_accounted(stack.kafka_bootstrap, alone, ids, worker, log, 300)
    one = _outputs(stack, alone)

    pair = f"reb{unique}two"
    _prepare(stack, pair, events)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with running_worker(_env(stack, pair, tmp_path / "first"), first_log) as first:
        _first_score(stack, pair, 120)
        # The first worker is frozen in the middle of its backlog while the second starts
        # (seconds of imports), and goes on once the second begins to join: the
        # hand-over then finds records held, however fast this machine is.
        with running_worker(_env(stack, pair, tmp_path / "second"), second_log) as second:
            _frozen_until_joining(first, second_log)
            wait_until_accounted(stack.kafka_bootstrap, pair, ids, first, first_log, 300)
            assert second.poll() is None, second_log.read_text()[-3000:]
    two = _outputs(stack, pair)

    given_up = [int(n) for n in GAVE_UP.findall(first_log.read_text())]
    assert given_up, (
        "the second worker joined after the first had merged its whole backlog: no "
        "hand-over with records held happened, so the test proved nothing"
    )
    for kind in ("scores", "alerts"):
        only_one, only_two = one[kind] - two[kind], two[kind] - one[kind]
        differing = len(only_one) + len(only_two)
        assert differing == 0, (
            f"{kind}: {len(only_one)} only with one worker, {len(only_two)} only with two "
            f"(of {len(one[kind])}); the first worker gave up {given_up} held records"
        )
