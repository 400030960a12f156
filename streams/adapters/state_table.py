"""Patient states in the Faust table: decoded once, kept in memory, written once per batch.

The ``patients`` table (changelog-backed) holds each patient's encoded state. Decoding a
state on every record and encoding it again after it cost more CPU than everything else
the worker did per event, so :class:`StateTable` keeps the decoded
:class:`~streams.core.state.PatientState` beside the encoded value it came from, and
trusts it only while the table still holds that very value (an identity check): a
rebalance, a changelog restore or another writer replaces the value, and the state is
decoded afresh. The table itself stays the backup: every batch writes each state it
changed once (:meth:`StateTable.write`), and waits for the changelog records before its
input is acknowledged.

Encoding: the compact binary form of :mod:`streams.core.state_codec`; states written
before it (JSON dicts, ``"v": 1``) are read as they are, so a running deployment upgrades
in place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Iterator
from typing import Any, cast

import faust
from aiokafka.partitioner import murmur2

from streams.core.state import PatientState
from streams.core.state_codec import decode_state, encode_state

__all__ = ["DurableTable", "StateTable"]


class DurableTable(faust.Table[str, Any]):
    """A Faust table whose writes can be awaited until their changelog record is in Kafka.

    Faust sends changelog records through its producer's send-soon buffer, which a
    background task drains one record at a time, and before committing offsets it flushes
    that buffer with a wait that gives up after 0.1 s per message, so a commit could
    outrun the changelog and a restarted worker then restored a state older than the
    offsets it resumed from. :meth:`write` stores the value and hands the changelog record
    straight to the producer instead, returning its delivery future, so the caller can
    wait for it before acknowledging the input records. The changelog record is what
    Faust's own path would send (same topic, key and value bytes; the partition chosen by
    the producer's key partitioner, as ``use_partitioner`` asks), and its offset is
    recorded for the store as Faust records it (RocksDB keeps it to know where a restore
    starts).
    """

    _partitions_of: dict[str, int] | None = None

    def partition_of(self, key: str) -> int:
        """The changelog partition of ``key``: the partition Kafka's default partitioner
        gives the raw patient id, which is the partition of the patient's input records.

        Faust's own path hands the JSON-serialised key (``"132556"``, with quotes) to
        the producer's partitioner, which put a patient's state in another partition
        than its input (for 132556: 2 instead of 6): after a rebalance the worker that
        took the input partition did not have the state, restarted the stay from an
        empty state, and the events the state still had to cite were never cited."""
        if self._partitions_of is None:
            self._partitions_of = {}
        partition = self._partitions_of.get(key)
        if partition is None:
            partition = (murmur2(key.encode()) & 0x7FFFFFFF) % int(self.partitions or 1)
            if len(self._partitions_of) > 1_000_000:
                self._partitions_of.clear()
            self._partitions_of[key] = partition
        return partition

    def write(self, key: str, value: bytes) -> Awaitable[Any]:
        """Set ``key`` to ``value``; the result completes once Kafka holds the change."""
        self.store(key, value)
        return self.send(key, value)

    def store(self, key: str, value: bytes) -> None:
        """Set ``key`` to ``value`` in the store only (:meth:`send` makes it durable)."""
        self.data[key] = value

    def send(self, key: str, value: bytes) -> Awaitable[Any]:
        """Send the changelog record of a stored value; completes once Kafka holds it."""
        return asyncio.ensure_future(self._send_changelog_record(key, value))

    def remove(self, key: str) -> Awaitable[Any]:
        """Delete ``key``; the result completes once Kafka holds the tombstone."""
        self.data.pop(key, None)
        return asyncio.ensure_future(self._send_changelog_record(key, None))

    async def _send_changelog_record(self, key: str, value: bytes | None) -> Any:
        producer = self.app.producer
        topic = self.changelog_topic
        # The key exactly as Faust's own changelog path serialises it (JSON), so that
        # its recovery reads it back; the partition is the input's (partition_of).
        key_bytes, _ = topic.prepare_key(key, self.key_serializer)
        sent = await producer.send(
            topic.get_topic_name(),
            key_bytes,
            value,
            partition=self.partition_of(key),
            timestamp=None,
            headers=None,
        )
        metadata = await sent
        self.data.set_persisted_offset(metadata.topic_partition, metadata.offset)
        return metadata


class StateTable:
    """Decoded patient states over the Faust table (see the module docstring).

    Args:
        table: The ``patients`` table (a :class:`DurableTable`; values are encoded states).
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self._decoded: dict[str, tuple[Any, PatientState]] = {}

    def get(self, patient_id: str) -> PatientState | None:
        """The patient's state, or None; the object is shared, so a caller that changes
        it must :meth:`write` it (or :meth:`forget` it if the change is abandoned)."""
        stored = self.table.get(patient_id)
        if stored is None:
            self._decoded.pop(patient_id, None)
            return None
        cached = self._decoded.get(patient_id)
        if cached is not None and cached[0] is stored:
            return cached[1]
        state = decode_state(stored)
        self._decoded[patient_id] = (stored, state)
        return state

    def write(self, states: Iterable[PatientState]) -> list[Awaitable[Any]]:
        """Encode and store each state once; returns their changelog deliveries."""
        return self.send(self.stage(states))

    def stage(self, states: Iterable[PatientState]) -> list[tuple[str, bytes]]:
        """Encode and store each state now, as it is at this moment; nothing is sent yet
        (:meth:`send`). The next batch reads the staged states, so a batch may be applied
        while the previous one's states are still on their way to Kafka."""
        staged = []
        for state in states:
            encoded = encode_state(state)
            self.table.store(state.patient_id, encoded)
            self._decoded[state.patient_id] = (encoded, state)
            staged.append((state.patient_id, encoded))
        return staged

    def send(self, staged: Iterable[tuple[str, bytes]]) -> list[Awaitable[Any]]:
        """Send the changelog records of staged states (:meth:`stage`); returns their deliveries."""
        return [self.table.send(patient_id, encoded) for patient_id, encoded in staged]

    def forget(self, patient_ids: Iterable[str]) -> None:
        """Drop the decoded copies (their changes were not written): the next
        :meth:`get` decodes what the table holds."""
        for patient_id in patient_ids:
            self._decoded.pop(patient_id, None)

    def delete(self, patient_id: str) -> Awaitable[Any]:
        """Remove a patient's state (expiry); returns the tombstone's delivery."""
        self._decoded.pop(patient_id, None)
        return cast(Awaitable[Any], self.table.remove(patient_id))

    def patient_ids(self) -> list[str]:
        """Every patient whose state this worker holds (standby copies included)."""
        return list(self.table.keys())

    def states(self) -> Iterator[PatientState]:
        """Every state this worker holds, decoded (cached where possible)."""
        for patient_id in self.patient_ids():
            state = self.get(patient_id)
            if state is not None:
                yield state

    def encoded_sizes(self) -> list[int]:
        """Bytes of every stored state as its changelog record carries it."""
        return [len(value) for value in self.table.values() if isinstance(value, bytes)]

    def prune(self) -> None:
        """Forget decoded copies of states the table no longer holds (after a rebalance)."""
        for patient_id in [p for p in self._decoded if p not in self.table]:
            del self._decoded[patient_id]
