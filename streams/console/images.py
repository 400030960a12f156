"""The CAM heatmap of an imaging finding laid over its image, as a PNG.

The heatmap is read only from ``artifact_dir`` (the worker's ``VIGIL_ARTIFACT_DIR``): a
``heatmap_uri`` that resolves elsewhere is refused. The image is read only from a local
``file:`` URI inside ``image_root`` (decoded by :func:`streams.core.imaging.decode_image`);
without it the heatmap is shown alone, on black. Red shows where the model looked, and the
page says so in words.
"""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image

from streams.core.events import FindingRecord
from streams.core.imaging import decode_image
from vigil.errors import ImageError

__all__ = ["overlay_png"]


def _local(uri: str | None, root: Path) -> Path | None:
    if uri is None:
        return None
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        return None
    path = Path(unquote(parts.path)).resolve()
    if not path.is_relative_to(root.resolve()):
        return None
    return path if path.is_file() else None


def overlay_png(
    finding: FindingRecord, image_uri: str | None, artifact_dir: Path, image_root: Path
) -> bytes | None:
    """PNG of the heatmap (red, half opaque where it is hot) over the grey image.

    Returns:
        The PNG, or None when the heatmap is missing or outside ``artifact_dir``.
    """
    heat_path = _local(finding.heatmap_uri, artifact_dir)
    if heat_path is None:
        return None
    with Image.open(heat_path) as heat_image:
        heat = np.asarray(heat_image.convert("L"), dtype=np.float32) / 255.0
    height, width = heat.shape
    grey = np.zeros((height, width), dtype=np.float32)
    image_path = _local(image_uri, image_root)
    if image_path is not None:
        try:
            pixels = decode_image(image_path.read_bytes())
            base = Image.fromarray(np.uint8(np.clip(pixels, 0, 1) * 255)).resize((width, height))
            grey = np.asarray(base, dtype=np.float32) / 255.0
        except (ImageError, OSError, ValueError):
            pass
    alpha = 0.6 * heat
    rgb = np.stack([grey, grey, grey], axis=-1)
    red = np.array([1.0, 0.1, 0.1], dtype=np.float32)
    out = rgb * (1 - alpha[..., None]) + red * alpha[..., None]
    buffer = io.BytesIO()
    Image.fromarray(np.uint8(np.clip(out, 0, 1) * 255)).save(buffer, "PNG")
    return buffer.getvalue()
