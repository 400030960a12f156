"""``vigil console``: the clinicians' ward console (board, patient pages, alert actions).

Layers: :mod:`.ward`, :mod:`.charts`, :mod:`.actions` and :mod:`.users` are pure (no network
I/O); :mod:`.feed` (Kafka, Redis), :mod:`.app` (Starlette) and :mod:`.server` (uvicorn) are
the adapters. See docs/console.md.
"""

from streams.console.settings import ConsoleSettings

__all__ = ["ConsoleSettings"]
