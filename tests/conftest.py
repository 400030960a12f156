"""Shared fixtures: keep the developer's environment out of tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _isolate_vigil_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop VIGIL_* variables (except the stack's own) so settings start from defaults."""
    for key in list(os.environ):
        if key.startswith("VIGIL_") and not key.startswith("VIGIL_STACK_"):
            monkeypatch.delenv(key)
