"""Vigil: event-driven ICU patient monitoring (Kafka, Faust, Triton)."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("icu-vigil")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
