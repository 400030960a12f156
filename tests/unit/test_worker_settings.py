"""Worker settings refuse what the worker cannot do safely."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streams.settings import WorkerSettings


def test_the_table_store_is_memory_only() -> None:
    # A persistent store would keep states a batch stored before their changelog records
    # were in Kafka (docs/worker.md, "Processing guarantee").
    assert WorkerSettings().store == "memory://"
    with pytest.raises(ValidationError, match="store"):
        WorkerSettings(store="rocksdb://")
