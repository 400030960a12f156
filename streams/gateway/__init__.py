"""``vigil gateway``: hospital interfaces in (HL7 v2 over MLLP), Vigil's input topics out.

Pure modules (no I/O): :mod:`~streams.gateway.hl7_parse` (bytes to a parsed message),
:mod:`~streams.gateway.hl7_map` (message to input events), :mod:`~streams.gateway.hl7_ack`
(ACKs), :mod:`~streams.gateway.hl7_write` (events to messages, for tests and benchmarks)
and :mod:`~streams.gateway.codemap` (local codes). The server adapters import these, never
the other way; ``streams.core`` never imports the gateway. See ``docs/gateway.md``.
"""

from __future__ import annotations

from streams.gateway.codemap import DEFAULT_CODE_MAP, CodeMap, load_code_map
from streams.gateway.hl7_map import GatewayEvent, MappedMessage, MappingOptions, map_hl7

__all__ = [
    "DEFAULT_CODE_MAP",
    "CodeMap",
    "GatewayEvent",
    "MappedMessage",
    "MappingOptions",
    "load_code_map",
    "map_hl7",
]
