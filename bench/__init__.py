"""Benchmarks of Vigil on the running local stack; ``python -m bench.run`` runs them all.

Results land in ``bench/results/`` (one JSON file per benchmark) and are summarised in
``BENCHMARKS.md``.
"""
