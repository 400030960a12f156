"""The pure core (``streams/core``) imports no I/O library, checked in a fresh interpreter."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import streams.core

FORBIDDEN = (
    "faust",
    "aiokafka",
    "kafka",
    "redis",
    "tritonclient",
    "torch",
    "prometheus_client",
    "httpx",
)

# Imports every module of the package, then reports what ended up in sys.modules.
_PROBE = """
import importlib, json, pkgutil, sys
import streams.core as core
names = sorted(m.name for m in pkgutil.iter_modules(core.__path__, core.__name__ + "."))
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "modules": sorted(sys.modules)}))
"""


def _core_modules() -> set[str]:
    return {f"streams.core.{info.name}" for info in pkgutil.iter_modules(streams.core.__path__)}


def test_core_imports_no_io_library():
    root = Path(streams.core.__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(done.stdout)
    # The probe really imported the whole core, including the modules that matter most.
    assert set(report["imported"]) == _core_modules()
    for name in ("state", "alerting", "breaker", "pipeline", "validation"):
        assert f"streams.core.{name}" in report["modules"]
    leaked = sorted(module for module in report["modules"] if module.split(".")[0] in FORBIDDEN)
    assert leaked == []


def test_probe_would_see_a_forbidden_import():
    # Guard against a probe that cannot fail: the same check spots a deliberate import.
    done = subprocess.run(
        [sys.executable, "-c", "import json, sys, httpx; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "httpx" in {module.split(".")[0] for module in json.loads(done.stdout)}
