"""The console's own audit trail: one JSON line per user action, appended to a file.

Alert actions are also audited by the worker on ``vigil.audit`` (the ack names the user);
this file adds what only the console sees: sign-in, sign-out, failed and refused sign-ins,
refused actions. Each line: ``time`` (UTC, RFC 3339), ``event``, ``user``, ``method``,
``outcome`` and, for alert actions, ``action``, ``patient_id``, ``alert_id``, ``ack_id``.
The client address is recorded for sign-in events. Log lines carry the event and outcome
only, never a patient identifier.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from threading import Lock

__all__ = ["AuditTrail"]

_log = logging.getLogger("streams.console.audit")


class AuditTrail:
    """Appends audit lines to ``path`` (created with mode 0600).

    Args:
        path: The JSON Lines file.
        clock: Wall clock (UTC).
    """

    def __init__(self, path: Path, clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.path = path
        self.clock = clock
        self._lock = Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, event: str, *, user: str, outcome: str, **fields: str | None) -> None:
        """Append one line (``fields`` with None values are left out)."""
        line = {
            "time": self.clock().isoformat().replace("+00:00", "Z"),
            "event": event,
            "user": user,
            "outcome": outcome,
            **{k: v for k, v in fields.items() if v is not None},
        }
        text = json.dumps(line, sort_keys=True) + "\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        _log.info("audit: %s %s", event, outcome)

    def read(self) -> list[dict[str, str]]:
        """Every line so far (tests, the admin)."""
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text(encoding="utf-8").splitlines() if x]
