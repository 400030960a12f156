"""Pure numpy operations of the imaging branch: what the worker needs around Triton.

No torch, no I/O: the stream can import this module to prepare a request for the
``imaging`` model and to turn its outputs into a finding.

* :func:`preprocess_image`: any 2-D image -> the model input ``[1,S,S]`` float32 in
  ``[0, 1]`` (``S`` = :data:`IMAGE_SIZE`), by :func:`resize` (separable triangle filter,
  widened when shrinking, so downsampling averages instead of aliasing).
* :func:`label_components`: 8-connected components of a binary mask.
* :func:`lesion_mask`: ``mask_probability`` -> the lesion mask: the components at the
  threshold whose highest probability reaches the peak threshold (a confident core).
* :func:`summarise_segmentation`: ``mask_probability`` and the thresholds -> lesion count
  and area (pixels of the model grid).
* :func:`heatmap_png` / :func:`heatmap_npz`: a CAM heatmap as artifact bytes.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections import deque
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "IMAGE_SIZE",
    "heatmap_npz",
    "heatmap_png",
    "label_components",
    "lesion_mask",
    "lesion_summary",
    "preprocess_image",
    "resize",
    "summarise_segmentation",
]

IMAGE_SIZE: Final[int] = 64
"""Side of the square model input, pixels."""

_NEIGHBOURS: Final[tuple[tuple[int, int], ...]] = tuple(
    (dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
)


def _weights(n_in: int, n_out: int) -> npt.NDArray[np.float64]:
    """``[n_out, n_in]`` triangle-filter weights (half-pixel centres, rows sum to 1)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    taps = np.arange(n_in)
    w = np.clip(1.0 - np.abs(taps[None, :] - centres[:, None]) / support, 0.0, None)
    normalised: npt.NDArray[np.float64] = w / w.sum(axis=1, keepdims=True)
    return normalised


def resize(image: npt.ArrayLike, height: int, width: int) -> npt.NDArray[np.float32]:
    """Resizes a 2-D image with a separable triangle (bilinear) filter.

    Upsampling is bilinear interpolation with half-pixel centres (as torch's
    ``align_corners=False``, edges clamped); downsampling widens the filter to the scale
    factor, so every input pixel contributes (antialiased, as PIL's bilinear).

    Args:
        image: ``[H,W]`` array.
        height: Output rows.
        width: Output columns.

    Returns:
        ``[height,width]`` float32.
    """
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2 or min(array.shape) < 1 or height < 1 or width < 1:
        raise ValueError(f"resize needs a non-empty 2-D image, got shape {array.shape}")
    out = _weights(array.shape[0], height) @ array @ _weights(array.shape[1], width).T
    return out.astype(np.float32)


def preprocess_image(image: npt.ArrayLike, size: int = IMAGE_SIZE) -> npt.NDArray[np.float32]:
    """The ``imaging`` model input for one image.

    Intensities: ``uint8`` is divided by 255, ``uint16`` by 65535; floats are taken as
    already scaled to ``[0, 1]`` (a CT slice must be windowed first, as the training
    patches were) and clipped to it. Then the image is resized to ``size x size``
    (aspect ratio not kept: the training images are square).

    Args:
        image: ``[H,W]`` or ``[1,H,W]`` grey-level image.
        size: Output side (the served model takes :data:`IMAGE_SIZE`).

    Returns:
        ``[1,size,size]`` float32 in ``[0, 1]``.

    Raises:
        ValueError: Not a single-channel 2-D image, or non-finite values.
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"expected a [H,W] or [1,H,W] image, got shape {array.shape}")
    if array.dtype == np.uint8:
        scaled = array.astype(np.float64) / 255.0
    elif array.dtype == np.uint16:
        scaled = array.astype(np.float64) / 65535.0
    else:
        scaled = array.astype(np.float64)
        if not np.isfinite(scaled).all():
            raise ValueError("image has non-finite values")
        scaled = np.clip(scaled, 0.0, 1.0)
    return np.clip(resize(scaled, size, size), 0.0, 1.0)[None]


def label_components(mask: npt.ArrayLike) -> tuple[npt.NDArray[np.int32], int]:
    """8-connected components of a binary mask.

    Args:
        mask: ``[H,W]``, truthy where foreground.

    Returns:
        ``[H,W]`` labels (0 background, 1..n in raster order of first pixel) and ``n``.
    """
    fg = np.asarray(mask).astype(bool)
    if fg.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {fg.shape}")
    labels = np.zeros(fg.shape, dtype=np.int32)
    rows, cols = fg.shape
    count = 0
    for y, x in zip(*np.nonzero(fg), strict=True):
        if labels[y, x]:
            continue
        count += 1
        labels[y, x] = count
        queue = deque([(int(y), int(x))])
        while queue:
            cy, cx = queue.popleft()
            for dy, dx in _NEIGHBOURS:
                ny, nx = cy + dy, cx + dx
                if 0 <= ny < rows and 0 <= nx < cols and fg[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = count
                    queue.append((ny, nx))
    return labels, count


def lesion_mask(
    mask_probability: npt.ArrayLike, threshold: float, peak_threshold: float = 0.0
) -> npt.NDArray[np.bool_]:
    """The predicted lesions of one mask: components with a confident core.

    A lesion is an 8-connected component of ``probability >= threshold`` whose highest
    probability reaches ``peak_threshold`` (hysteresis: the threshold draws the outline,
    the peak decides whether the component is kept). A ``peak_threshold`` at or below
    ``threshold`` keeps every component.

    Args:
        mask_probability: ``[H,W]`` or ``[1,H,W]`` per-pixel lesion probability.
        threshold: The outline: pixels with probability ``>= threshold``.
        peak_threshold: A component is kept when its highest probability is
            ``>= peak_threshold`` (the model card's ``lesion_peak_threshold``).

    Returns:
        ``[H,W]`` boolean lesion mask.
    """
    probability = np.asarray(mask_probability, dtype=np.float32)
    if probability.ndim == 3 and probability.shape[0] == 1:
        probability = probability[0]
    foreground = probability >= threshold
    if peak_threshold <= threshold or not foreground.any():
        return foreground
    labels, count = label_components(foreground)
    peaks = np.zeros(count + 1, dtype=np.float32)
    np.maximum.at(peaks, labels[foreground], probability[foreground])
    keep = peaks >= peak_threshold
    keep[0] = False
    return np.asarray(keep[labels], dtype=np.bool_)


def summarise_segmentation(
    mask_probability: npt.ArrayLike, threshold: float, peak_threshold: float = 0.0
) -> tuple[int, int]:
    """Lesion count and area of one predicted mask.

    Args:
        mask_probability: ``[H,W]`` or ``[1,H,W]`` per-pixel lesion probability (the
            model's ``mask_probability`` for one image).
        threshold: Pixels with probability ``>= threshold`` are lesion (the model card's
            ``mask_threshold`` is the operating point chosen for lesion recall).
        peak_threshold: Components whose highest probability is below this are dropped
            (:func:`lesion_mask`; the model card's ``lesion_peak_threshold``).

    Returns:
        ``(lesion_count, lesion_area_pixels)``: 8-connected components and foreground
        pixels on the model's ``IMAGE_SIZE`` grid (multiply the area by the squared
        original pixel spacing times ``(original side / IMAGE_SIZE)^2`` for mm^2).
    """
    return lesion_summary(lesion_mask(mask_probability, threshold, peak_threshold))


def lesion_summary(lesions: npt.ArrayLike) -> tuple[int, int]:
    """``(lesion_count, lesion_area_pixels)`` of a ``[H,W]`` lesion mask (:func:`lesion_mask`):
    its 8-connected components and its foreground pixels."""
    mask = np.asarray(lesions, dtype=bool)
    _, count = label_components(mask)
    return count, int(mask.sum())


def _as_heatmap(cam: npt.ArrayLike) -> npt.NDArray[np.float32]:
    heatmap = np.asarray(cam, dtype=np.float32)
    if heatmap.ndim == 3 and heatmap.shape[0] == 1:
        heatmap = heatmap[0]
    if heatmap.ndim != 2:
        raise ValueError(f"expected a [H,W] or [1,H,W] heatmap, got shape {heatmap.shape}")
    return np.clip(np.nan_to_num(heatmap), 0.0, 1.0)


def heatmap_png(cam: npt.ArrayLike) -> bytes:
    """A ``[0, 1]`` heatmap (the model's ``cam`` for one image) as an 8-bit grey PNG."""
    pixels = np.round(_as_heatmap(cam) * 255.0).astype(np.uint8)
    height, width = pixels.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def heatmap_npz(cam: npt.ArrayLike, **metadata: Any) -> bytes:
    """A heatmap (float32 ``cam``) and scalar metadata as compressed NPZ bytes.

    Args:
        cam: ``[H,W]`` or ``[1,H,W]`` heatmap in ``[0, 1]``.
        **metadata: Scalars stored beside it (for example ``class_probability``).
    """
    buffer = io.BytesIO()
    extras = {key: np.asarray(value) for key, value in metadata.items()}
    np.savez_compressed(buffer, cam=_as_heatmap(cam), **extras)
    return buffer.getvalue()
