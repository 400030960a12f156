"""ManagedProcess: a service started and stopped from a long-lived process (a test that
restarts Kafka, say) leaves no zombie and no ResourceWarning behind."""

from __future__ import annotations

import gc
import sys
import time
import warnings
from pathlib import Path

from vigil.stack.process import ManagedProcess


def test_start_then_stop_in_one_process(tmp_path: Path) -> None:
    service = ManagedProcess("sleeper", tmp_path / "sleeper.pid", tmp_path / "sleeper.log")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        pid = service.start([sys.executable, "-c", "import time; time.sleep(60)"])
        gc.collect()  # the Popen must stay referenced while the service runs
        assert service.pid() == pid
        started = time.monotonic()
        assert service.stop(timeout_seconds=10.0) is True
        gc.collect()
    # SIGTERM ends it at once; an unreaped zombie would count as running until the timeout.
    assert time.monotonic() - started < 5.0
    assert service.pid() is None
    assert service.stop(timeout_seconds=1.0) is False


def test_a_service_that_exits_by_itself_is_seen_gone(tmp_path: Path) -> None:
    service = ManagedProcess("brief", tmp_path / "brief.pid", tmp_path / "brief.log")
    service.start([sys.executable, "-c", "import time; time.sleep(0.3)"])
    deadline = time.monotonic() + 10
    while service.pid() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.pid() is None
