"""Encoded imaging studies for tests: DICOM, PNG and NPZ bytes of real sample images.

The samples are real (``data/msd-lung-ct-sample``, ``data/pneumoniamnist-sample``); linking
them to ICU stays in a test is a **fixture**: PhysioNet stays have no images.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt

from streams.replay.imaging_fixture import CT_SAMPLE, XRAY_SAMPLE, dicom_bytes, png_bytes

__all__ = ["ct_patches", "dicom_bytes", "npz_bytes", "png_bytes", "xrays"]


def ct_patches() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """The CT sample: ``images [9, 48, 48]`` in [0, 1] and ``masks [9, 48, 48]``."""
    with np.load(CT_SAMPLE) as data:
        return data["images"][:, 0], data["masks"][:, 0]


def xrays() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Validation X-rays of the sample (never trained on): ``[32, 28, 28]`` and labels."""
    with np.load(XRAY_SAMPLE) as data:
        return data["val_images"], data["val_labels"].reshape(-1)


def npz_bytes(image: npt.NDArray[np.generic]) -> bytes:
    """An NPZ holding ``image``."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, image=image)
    return buffer.getvalue()
