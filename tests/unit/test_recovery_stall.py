"""Which changelog partitions the recovery watchdog calls stalled (a pure decision)."""

from __future__ import annotations

from streams.adapters.faust_recovery import stalled_partitions

A, B, C = "changelog[0]", "changelog[1]", "changelog[2]"


def test_only_partitions_with_records_left_and_none_received_for_the_period_stall() -> None:
    remaining = {A: 10, B: 0, C: 5}
    received = {C: 103.0}  # A: nothing since the start; B: done
    assert stalled_partitions(
        remaining, received, started_at=100.0, now=120.0, stall_seconds=20.0
    ) == [A]
    assert stalled_partitions(
        remaining, received, started_at=100.0, now=123.0, stall_seconds=20.0
    ) == [A, C]


def test_the_period_counts_from_the_later_of_start_and_last_record() -> None:
    remaining = {A: 1}
    # A record from before this recovery's start (a previous one) does not count.
    assert (
        stalled_partitions(remaining, {A: 50.0}, started_at=100.0, now=119.9, stall_seconds=20.0)
        == []
    )
    assert stalled_partitions(
        remaining, {A: 50.0}, started_at=100.0, now=120.0, stall_seconds=20.0
    ) == [A]


def test_nothing_stalls_when_nothing_is_left() -> None:
    assert stalled_partitions({}, {}, started_at=0.0, now=1e6, stall_seconds=1.0) == []
    assert stalled_partitions({A: 0}, {}, started_at=0.0, now=1e6, stall_seconds=1.0) == []
