"""Imaging studies without I/O: encoded bytes in, a model-ready image out.

The worker's image source (:mod:`streams.adapters.image_source`) fetches a study's bytes;
:func:`decode_image` recognises the format by its content (DICOM, PNG, NPZ or NPY, whatever
the URI or ``content_type`` claims) and returns one greyscale 2-D image, which
:func:`streams.core.imaging_ops.preprocess_image` turns into the imaging model's input. Every
failure is an :class:`~vigil.errors.ImageError` with reason ``image_unreadable``, so the
event goes to dead-letter with a message that says what was wrong.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streams.core.events import DeadLetterReason, DenoisingNote, RegistrationNote
from streams.core.imaging_ops import preprocess_image
from vigil.errors import ImageError

__all__ = [
    "MAX_IMAGE_PIXELS",
    "StudyAnalysis",
    "decode_image",
    "denoising_decision",
    "model_input",
]

#: Largest image accepted, in pixels (a 4096 x 4096 radiograph); more is refused rather
#: than decoded into memory.
MAX_IMAGE_PIXELS = 4096 * 4096

_PNG = b"\x89PNG\r\n\x1a\n"
_NPY = b"\x93NUMPY"
_ZIP = b"PK\x03\x04"


@dataclass(frozen=True)
class StudyAnalysis:
    """What the imaging model said about one study (from the Triton adapter).

    Attributes:
        embedding: ``[E]`` image embedding for the deterioration model.
        class_probability: Abnormality probability, 0-1.
        lesion_count: Lesion regions at ``mask_threshold`` with a peak at or above
            ``lesion_peak_threshold``.
        lesion_area_fraction: Fraction of pixels in a lesion, 0-1.
        mask_threshold: The model's lesion operating point.
        model_version: Imaging model version.
        image_shape: Shape of the decoded image, before resizing.
        heatmap_uri: Where the CAM heatmap artifact was stored, if it was.
        denoising: Whether and how the image was denoised before segmentation.
        registration: Comparison with the patient's prior study, if there was one.
        lesion_peak_threshold: A lesion region is kept when its highest probability
            reaches this (0 keeps every region at ``mask_threshold``).
    """

    embedding: tuple[float, ...]
    class_probability: float
    lesion_count: int
    lesion_area_fraction: float
    mask_threshold: float
    model_version: str
    image_shape: tuple[int, ...]
    heatmap_uri: str | None
    denoising: DenoisingNote | None = None
    registration: RegistrationNote | None = None
    lesion_peak_threshold: float = 0.0


def denoising_decision(
    modality: str, dose_fraction: float | None, *, below: float, enabled: bool
) -> tuple[bool, str]:
    """Whether a study goes through the CT denoiser, and the reason the finding states.

    Args:
        modality: DICOM modality code of the study.
        dose_fraction: Declared dose fraction, or None.
        below: Studies with a dose fraction strictly below this are denoised.
        enabled: False when no denoiser is configured.

    Returns:
        ``(denoise, reason)``; reasons ``low_dose``, ``not_ct``, ``dose_not_declared``,
        ``full_dose`` and ``denoiser_off``.
    """
    if modality != "CT":
        return False, "not_ct"
    if dose_fraction is None:
        return False, "dose_not_declared"
    if dose_fraction >= below:
        return False, "full_dose"
    if not enabled:
        return False, "denoiser_off"
    return True, "low_dose"


def _unreadable(detail: str) -> ImageError:
    return ImageError(DeadLetterReason.IMAGE_UNREADABLE, detail)


def decode_image(data: bytes, content_type: str | None = None) -> npt.NDArray[np.float32]:
    """Decode one study into a 2-D greyscale image scaled to ``[0, 1]``.

    Formats, recognised by their first bytes: DICOM (``DICM`` at byte 128, or any bytes
    when ``content_type`` is ``application/dicom``), PNG, NPZ (array ``image``, or its only
    array) and NPY. DICOM pixels get the modality rescale (slope, intercept) and the
    study's first VOI window (``WindowCenter``/``WindowWidth``) when it has one, else a
    min-max scaling; integer PNG/NPY/NPZ pixels are divided by their type's maximum;
    float arrays must already lie in ``[0, 1]`` (values are clipped).

    Raises:
        ImageError: Not one of these formats, not a single 2-D image, too many pixels,
            or non-finite values.
    """
    if not data:
        raise _unreadable("the study is empty (0 bytes)")
    if data.startswith(_PNG):
        image = _png(data)
    elif data.startswith(_NPY):
        image = _npy(data)
    elif data.startswith(_ZIP):
        image = _npz(data)
    elif data[128:132] == b"DICM" or content_type == "application/dicom":
        return _dicom(data)
    else:
        raise _unreadable("unrecognised image format (expected DICOM, PNG, NPZ or NPY)")
    return _scaled(image)


def model_input(image: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The imaging model's ``[1, 64, 64]`` input for a decoded image."""
    return preprocess_image(image)


def _squeezed(array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.ndim != 2:
        raise _unreadable(f"expected one 2-D image, got an array of shape {array.shape}")
    if array.shape[0] < 8 or array.shape[1] < 8:
        raise _unreadable(f"image of {array.shape[0]} x {array.shape[1]} pixels is too small")
    if array.size > MAX_IMAGE_PIXELS:
        raise _unreadable(f"image of {array.size} pixels exceeds {MAX_IMAGE_PIXELS}")
    return array


def _scaled(array: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    array = _squeezed(array)
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype.type)  # type: ignore[type-var]
        if info.min < 0 and int(array.min()) < 0:
            raise _unreadable("signed integer pixels below 0 (window the image first)")
        return (array.astype(np.float64) / float(info.max)).astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating):
        raise _unreadable(f"pixels of type {array.dtype} are not numbers")
    values = array.astype(np.float32)
    if not np.isfinite(values).all():
        raise _unreadable("the image holds non-finite values")
    return np.clip(values, 0.0, 1.0)


def _png(data: bytes) -> npt.NDArray[np.generic]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > MAX_IMAGE_PIXELS:
                raise _unreadable(f"image of {width * height} pixels exceeds {MAX_IMAGE_PIXELS}")
            picture = opened if opened.mode in ("L", "I;16", "I") else opened.convert("L")
            array = np.asarray(picture)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _unreadable(f"PNG could not be decoded: {exc}") from exc
    if array.dtype == np.int32:  # mode "I": 16-bit greyscale widened by Pillow
        if int(array.min()) < 0 or int(array.max()) > 65535:
            raise _unreadable("32-bit PNG pixels outside 0-65535")
        array = array.astype(np.uint16)
    return array


def _npy(data: bytes) -> npt.NDArray[np.generic]:
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _unreadable(f"NPY could not be read: {exc}") from exc
    return np.asarray(loaded)


def _npz(data: bytes) -> npt.NDArray[np.generic]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            names = list(archive.files)
            if "image" in names:
                name = "image"
            elif len(names) == 1:
                name = names[0]
            else:
                raise _unreadable(f"NPZ holds {len(names)} arrays and none named 'image'")
            return np.asarray(archive[name])
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _unreadable(f"NPZ could not be read: {exc}") from exc


def _dicom(data: bytes) -> npt.NDArray[np.float32]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        if rows * columns > MAX_IMAGE_PIXELS:
            raise _unreadable(f"image of {rows * columns} pixels exceeds {MAX_IMAGE_PIXELS}")
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
        if frames != 1:
            raise _unreadable(f"multi-frame DICOM ({frames} frames); send one frame per study")
        pixels = np.asarray(dataset.pixel_array, dtype=np.float64)
    except ImageError:
        raise
    except (InvalidDicomError, AttributeError, KeyError, ValueError, TypeError, OSError) as exc:
        raise _unreadable(f"DICOM could not be read: {exc}") from exc
    pixels = _squeezed(pixels).astype(np.float64)
    slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
    values = pixels * slope + intercept
    center, width = (
        _first(getattr(dataset, "WindowCenter", None)),
        _first(getattr(dataset, "WindowWidth", None)),
    )
    if center is not None and width is not None and width > 0:
        low, high = center - width / 2.0, center + width / 2.0
    else:
        low, high = float(values.min()), float(values.max())
    if not np.isfinite([low, high]).all():
        raise _unreadable("the DICOM pixels or window are not finite")
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        scaled = 1.0 - scaled  # MONOCHROME1: the lowest value is white
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def _first(value: object) -> float | None:
    if value is None:
        return None
    try:
        if isinstance(value, list | tuple) or hasattr(value, "__iter__"):
            value = next(iter(value))
        return float(value)  # type: ignore[arg-type]
    except (StopIteration, TypeError, ValueError):
        return None
