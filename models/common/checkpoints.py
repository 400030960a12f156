"""Reading what training writes: one error for every way a checkpoint file can be wrong."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import torch

from vigil.errors import ModelError

__all__ = ["checkpoint_errors", "read_checkpoint"]

_BAD_FILE: Final[tuple[type[Exception], ...]] = (
    OSError,
    KeyError,
    TypeError,
    ValueError,
    AttributeError,
    RuntimeError,
    pickle.UnpicklingError,
)
"""A missing or unreadable file, a missing key, or weights of another shape."""


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The saved dictionary (tensors and plain metadata only, on the CPU)."""
    payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return payload


@contextmanager
def checkpoint_errors(path: Path, what: str) -> Iterator[None]:
    """Turns any failure to read or rebuild from ``path`` inside the block into
    ``ModelError("cannot load <what> <path>: ...")``.

    Args:
        path: The file being read.
        what: What it should be, for example ``"deterioration checkpoint"``.
    """
    try:
        yield
    except _BAD_FILE as exc:
        raise ModelError(f"cannot load {what} {path}: {exc}") from exc
