"""Alert actions from the console: build the :class:`~streams.core.events.AckEvent`
(pure) that the worker applies and audits on ``vigil.audit`` under the user's name.

The console checks the form (action, reason, snooze length) and that the alert is active
on its board; the worker remains the judge (an alert resolved meanwhile is dead-lettered
with ``alert_resolved``, as for any producer).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Final

from pydantic import ValidationError

from streams.core.events import AckEvent
from vigil.errors import ConfigError

__all__ = ["ACTIONS", "SNOOZE_MINUTES", "ActionError", "build_ack"]

ACTIONS: Final = ("acknowledge", "snooze", "escalate")
SNOOZE_MINUTES: Final = (15, 30, 60, 120, 240)


class ActionError(ConfigError):
    """A console form that cannot become an action (answered 400 with this message)."""


def build_ack(
    *,
    patient_id: str,
    alert_id: str,
    action: str,
    user: str,
    reason: str,
    snooze_minutes: str | None,
    at: datetime,
) -> AckEvent:
    """The ``acks`` record of one console action.

    Args:
        patient_id: The patient (the record's key).
        alert_id: The alert acted on.
        action: ``acknowledge``, ``snooze`` or ``escalate``.
        user: The signed-in user's name.
        reason: The user's reason (required, 1-500 characters).
        snooze_minutes: For a snooze, one of :data:`SNOOZE_MINUTES`.
        at: The action's event time (see ``VIGIL_CONSOLE_ACK_CLOCK``).

    Raises:
        ActionError: Unknown action, blank or long reason, bad snooze length.
    """
    if action not in ACTIONS:
        raise ActionError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
    reason = reason.strip()
    if not reason:
        raise ActionError("a reason is required")
    if len(reason) > 500:
        raise ActionError("the reason is longer than 500 characters")
    until = None
    if action == "snooze":
        try:
            minutes = int(snooze_minutes or "")
        except ValueError:
            minutes = -1
        if minutes not in SNOOZE_MINUTES:
            raise ActionError(
                f"snooze_minutes must be one of {', '.join(map(str, SNOOZE_MINUTES))}"
            )
        until = at + timedelta(minutes=minutes)
    try:
        return AckEvent(
            ack_id=f"console-{uuid.uuid4().hex}",
            patient_id=patient_id,
            alert_id=alert_id,
            event_time=at,
            action=action,
            user=user,
            reason=reason,
            snooze_until=until,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ActionError(f"invalid {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
