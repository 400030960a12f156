"""Where the worker keeps each patient's latest study per modality, for registration.

One ``.npz`` per (patient, modality) under a directory, named by 32 hex digits of a
SHA-256 of the pair (no patient identifier in the name), written atomically. It holds the
imaging model's input ``[S,S]``, the lesion mask at the model's threshold, the study id and
its time. Several workers may share the directory: a study replaces the stored one only if
it is newer.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tempfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from streams.core.prior_study import PriorStudy

__all__ = ["PriorStore"]


class PriorStore:
    """Prior studies on disk (see the module docstring).

    Args:
        directory: Where the files go (created when first written).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).resolve()

    def _path(self, patient_id: str, modality: str) -> Path:
        name = hashlib.sha256(f"{patient_id}\x1f{modality}".encode()).hexdigest()[:32]
        return self.directory / f"{name}.npz"

    async def get(self, patient_id: str, modality: str) -> PriorStudy | None:
        """The stored study, or None when there is none or it cannot be read."""
        return await asyncio.to_thread(self._read, self._path(patient_id, modality))

    async def put(self, patient_id: str, modality: str, study: PriorStudy) -> None:
        """Stores ``study`` unless a newer one is already stored."""
        await asyncio.to_thread(self._write, self._path(patient_id, modality), study)

    @staticmethod
    def _read(path: Path) -> PriorStudy | None:
        try:
            with np.load(path, allow_pickle=False) as archive:
                return PriorStudy(
                    study_id=str(archive["study_id"]),
                    event_time=datetime.fromtimestamp(int(archive["event_ms"]) / 1000.0, tz=UTC),
                    image=np.asarray(archive["image"], dtype=np.float32),
                    mask=np.asarray(archive["mask"]).astype(bool),
                )
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            return None

    def _write(self, path: Path, study: PriorStudy) -> None:
        current = self._read(path)
        if current is not None and current.event_time >= study.event_time:
            return
        buffer = io.BytesIO()
        np.savez(
            buffer,
            image=study.image.astype(np.float32),
            mask=study.mask.astype(np.uint8),
            study_id=np.array(study.study_id),
            event_ms=np.array(round(study.event_time.timestamp() * 1000), dtype=np.int64),
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(buffer.getvalue())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
