"""The gateway's pure modules import no I/O library (checked in a fresh interpreter).

``fhir_map`` and ``hl7_replay`` are pure too but import from ``streams.replay``, whose
package ``__init__`` loads the Kafka producer, so they are not probed here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PURE = (
    "streams.gateway.codemap",
    "streams.gateway.hl7_parse",
    "streams.gateway.hl7_map",
    "streams.gateway.hl7_ack",
    "streams.gateway.hl7_write",
    "streams.gateway.fhir_out",
    "streams.gateway.history",
)
FORBIDDEN = ("kafka", "aiokafka", "redis", "aiohttp", "prometheus_client", "faust", "httpx")
_PROBE = """
import importlib, json, sys
for name in {names!r}:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def test_pure_gateway_modules_import_no_io_library() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(names=PURE)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    modules = json.loads(done.stdout)
    assert set(PURE) <= set(modules)
    assert sorted(m for m in modules if m.split(".")[0] in FORBIDDEN) == []
