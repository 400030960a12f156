"""**Test fixture**: imaging studies attached to replayed ICU stays.

PhysioNet ICU stays have no images. To exercise the imaging branch end to end, this module
writes real sample images (``data/msd-lung-ct-sample``: CT patches of the imaging model's
test patients, as DICOM; ``data/pneumoniamnist-sample``: validation X-rays, as PNG) into a
directory and yields ``imaging`` events that link them to stays by a seeded rule that
knows nothing of the stays' outcomes. Whatever a study does to a fixture stay's score says
nothing clinical: it is a plumbing check, and every event it yields carries
``source = "imaging-fixture"`` and ``metadata.fixture = true``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt

from streams.core.events import ImagingEvent, TopicKind
from streams.replay.event import ReplayEvent

__all__ = [
    "CT_SAMPLE",
    "XRAY_SAMPLE",
    "dicom_bytes",
    "imaging_fixture_events",
    "png_bytes",
]

_DATA = Path(__file__).resolve().parents[2] / "data"
CT_SAMPLE = _DATA / "msd-lung-ct-sample" / "msd_lung_ct_sample.npz"
XRAY_SAMPLE = _DATA / "pneumoniamnist-sample" / "pneumoniamnist_sample.npz"
SOURCE = "imaging-fixture"


def dicom_bytes(image01: npt.NDArray[np.float32], *, monochrome1: bool = False) -> bytes:
    """A single-frame CT DICOM whose VOI window maps its stored values back onto
    ``image01`` (``[H, W]`` in [0, 1]).

    Stored values are ``round(1000 x)`` (12 bits); rescale intercept -1000 gives HU in
    [-1000, 0], and the window (centre -500, width 1000) maps that range onto [0, 1].
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[image01.tobytes().hex()])
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
    """An 8-bit greyscale PNG of ``image``."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _pool(directory: Path) -> list[tuple[str, str, Path]]:
    """Write every sample image once; returns ``(name, modality, path)``."""
    directory.mkdir(parents=True, exist_ok=True)
    pool: list[tuple[str, str, Path]] = []
    with np.load(CT_SAMPLE) as ct:
        for i, image in enumerate(ct["images"][:, 0]):
            path = directory / f"ct-{i}.dcm"
            path.write_bytes(dicom_bytes(image))
            pool.append((f"ct-{i}", "CT", path))
    with np.load(XRAY_SAMPLE) as xray:
        for i, image in enumerate(xray["val_images"]):
            path = directory / f"cr-{i}.png"
            path.write_bytes(png_bytes(image))
            pool.append((f"cr-{i}", "CR", path))
    return pool


def imaging_fixture_events(
    stays: Sequence[tuple[str, datetime]],
    directory: Path,
    *,
    hours: Sequence[float] = (12.0,),
    seed: int = 7,
) -> Iterator[ReplayEvent]:
    """Fixture studies for ``stays``: one study per stay at each of ``hours`` after its
    admission, the image drawn by ``numpy.random.default_rng(seed)`` from the samples.

    Args:
        stays: ``(patient_id, admission time)`` of the stays that get studies.
        directory: Where the image files are written (the worker's
            ``VIGIL_IMAGING_FILE_ROOT`` or a folder inside it).
        hours: When, after admission, each stay's studies are taken.
        seed: Image draw.

    Yields:
        Imaging events in ``stays`` order, then ``hours`` order (merge them with the
        stays' other events in event time before producing).
    """
    pool = _pool(directory)
    rng = np.random.default_rng(seed)
    seq = 0
    for patient_id, admitted in stays:
        for hour in hours:
            name, modality, path = pool[int(rng.integers(len(pool)))]
            when = admitted + timedelta(hours=hour)
            event = ImagingEvent(
                event_id=f"{patient_id}-fixture-study-{hour:g}h",
                patient_id=patient_id,
                event_time=when,
                source=SOURCE,
                study_id=f"fixture-{patient_id}-{hour:g}h",
                modality=modality,
                image_uri=path.resolve().as_uri(),
                content_type="application/dicom" if modality == "CT" else "image/png",
                metadata={"fixture": True, "sample": name},
            )
            yield ReplayEvent(
                when,
                patient_id,
                seq,
                TopicKind.IMAGING,
                event.model_dump_json().encode(),
                key=patient_id.encode(),
            )
            seq += 1
