"""The gateway's per-message CPU path without sockets or Kafka, for an instruction count:
parse, map, each event's JSON and the ACK of the first N messages that ``bench.gateway``
makes from the 40 demo stays.

Counted with valgrind's callgrind as the difference of two runs, so that the interpreter's
start, the imports and the making of the messages cancel out::

    PYTHONPATH=$PWD valgrind --tool=callgrind .venv/bin/python -m bench.gateway_path 400
    PYTHONPATH=$PWD valgrind --tool=callgrind .venv/bin/python -m bench.gateway_path 0
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from bench.gateway import _messages
from streams.gateway.hl7_ack import build_ack
from streams.gateway.hl7_map import MappingOptions, map_parsed
from streams.gateway.hl7_parse import parse_hl7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, help="messages to run through the path")
    args = parser.parse_args()
    messages = _messages(40)[: args.count]
    options = MappingOptions()
    now = datetime(2026, 12, 6, tzinfo=UTC)
    for raw in messages:
        message = parse_hl7(raw, max_bytes=options.max_message_bytes)
        mapped = map_parsed(message, options)
        for event in mapped.events:
            _ = event.payload
        build_ack(message, "AA", control_id=mapped.control_id, ack_id="x", now=now)


if __name__ == "__main__":
    main()
