"""Encoded imaging studies for tests: DICOM, PNG and NPZ bytes of real sample images.

The samples are real (``data/msd-lung-ct-sample``, ``data/pneumoniamnist-sample``); linking
them to ICU stays in a test is a **fixture**: PhysioNet stays have no images.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

DATA = Path(__file__).resolve().parents[1] / "data"
CT_SAMPLE = DATA / "msd-lung-ct-sample" / "msd_lung_ct_sample.npz"
XRAY_SAMPLE = DATA / "pneumoniamnist-sample" / "pneumoniamnist_sample.npz"


def ct_patches() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """The CT sample: ``images [9, 48, 48]`` in [0, 1] and ``masks [9, 48, 48]``."""
    with np.load(CT_SAMPLE) as data:
        return data["images"][:, 0], data["masks"][:, 0]


def xrays() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Validation X-rays of the sample (never trained on): ``[32, 28, 28]`` and labels."""
    with np.load(XRAY_SAMPLE) as data:
        return data["val_images"], data["val_labels"].reshape(-1)


def dicom_bytes(image01: npt.NDArray[np.float32], *, monochrome1: bool = False) -> bytes:
    """A CT DICOM whose VOI window maps the stored values back onto ``image01``.

    Stored values are ``round(1000 x)``; rescale intercept -1000 gives HU in [-1000, 0],
    and the window (centre -500, width 1000) maps that range onto [0, 1].
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = image01.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1000
    ds.WindowCenter, ds.WindowWidth = -500, 1000
    stored = np.round(np.clip(image01, 0, 1) * 1000).astype(np.uint16)
    if monochrome1:
        stored = (1000 - stored).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def png_bytes(image: npt.NDArray[np.uint8]) -> bytes:
    """An 8-bit greyscale PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def npz_bytes(image: npt.NDArray[np.generic]) -> bytes:
    """An NPZ holding ``image``."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, image=image)
    return buffer.getvalue()
