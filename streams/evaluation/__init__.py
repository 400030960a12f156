"""Offline evaluation of recorded scores and alerts against outcomes (``vigil evaluate``).

Pure computation (no I/O): :mod:`~streams.evaluation.records` (decode lines),
:mod:`~streams.evaluation.outcomes`, :mod:`~streams.evaluation.stays`,
:mod:`~streams.evaluation.bootstrap`, :mod:`~streams.evaluation.burden`,
:mod:`~streams.evaluation.utility`, :mod:`~streams.evaluation.curves`,
:mod:`~streams.evaluation.evaluate`. Files and Kafka: :mod:`~streams.evaluation.sources`;
plots and the report folder: :mod:`~streams.evaluation.plots`,
:mod:`~streams.evaluation.report`. See docs/evaluation.md.
"""
