"""Hypothesis profiles of the fuzz tests, chosen with ``HYPOTHESIS_PROFILE`` (default ``ci``).

``ci`` keeps each test to a few seconds on a shared 2-core machine; ``bench`` runs many
more examples (minutes). Registering does not load a profile: only the fuzz tests use them.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

_SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]

settings.register_profile(
    "ci", max_examples=15, deadline=None, suppress_health_check=_SLOW_DATA, derandomize=False
)
settings.register_profile(
    "bench", max_examples=400, deadline=None, suppress_health_check=_SLOW_DATA
)
