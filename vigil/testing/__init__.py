"""Test helpers that the benchmarks share with the test suite (importable, unlike ``tests``).

- :mod:`vigil.testing.fuzz_corpus`, :mod:`vigil.testing.fuzz_harness`: seeded valid and
  adversarial records and the processor invariants (needs the ``dev`` extra: hypothesis).
- :mod:`vigil.testing.fuzz_kafka`: the same stream through a real worker and Kafka.
- :mod:`vigil.testing.faults`: the fault-injection harness of the fault matrix.
- :mod:`vigil.testing.workers`, :mod:`vigil.testing.outputs`: start and stop worker
  processes, read their output topics.

The package sits above everything it drives (:mod:`streams`, :mod:`vigil.stack`) and
below :mod:`bench` and ``tests``; nothing else in Vigil imports it.
"""
