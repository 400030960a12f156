"""Integration fixtures: the real local stack (Kafka, Redis, Triton, Prometheus).

The stack is started (idempotently) once per session. A service that cannot start
fails the tests that need it, with the tail of its log: it never turns into a skip.
"""

from __future__ import annotations

import uuid

import pytest

from vigil.errors import StackError
from vigil.stack.manager import Stack
from vigil.stack.settings import StackSettings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this folder as an integration test; run the fault matrix last
    (it stops and restarts the stack's services, and restores them)."""
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: item.path.name == "test_fault_matrix.py")


@pytest.fixture(scope="session")
def stack() -> StackSettings:
    """Start the local stack if needed and return its resolved settings."""
    local = Stack(StackSettings())
    try:
        local.up()
    except StackError as exc:
        pytest.fail(f"the local stack did not start: {exc}", pytrace=False)
    return local.settings


@pytest.fixture
def unique() -> str:
    """A unique suffix for topic, group and key names of one test."""
    return uuid.uuid4().hex[:12]
