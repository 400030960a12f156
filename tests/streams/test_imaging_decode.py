"""Decoding studies (DICOM, PNG, NPZ, NPY) and fetching them from files and inline data."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from streams.adapters.image_source import HeatmapStore, ImageSource
from streams.core.events import ImagingEvent
from streams.core.imaging import decode_image, model_input
from tests.imaging_files import ct_patches, dicom_bytes, npz_bytes, png_bytes, xrays
from vigil.errors import ImageError


def test_dicom_window_and_rescale_recover_the_ct_patch() -> None:
    images, _ = ct_patches()
    decoded = decode_image(dicom_bytes(images[0]))
    assert decoded.shape == (48, 48)
    assert np.abs(decoded - images[0]).max() <= 0.0006  # 1/1000 quantisation
    inverted = decode_image(dicom_bytes(images[0], monochrome1=True))
    assert np.abs(inverted - images[0]).max() <= 0.0006


def test_png_npz_npy_decode_to_the_same_pixels() -> None:
    xray = xrays()[0][0]
    expected = xray.astype(np.float32) / 255
    np.testing.assert_array_equal(decode_image(png_bytes(xray)), expected)
    np.testing.assert_array_equal(decode_image(npz_bytes(xray)), expected)
    buffer = io.BytesIO()
    np.save(buffer, xray[None])  # [1, H, W] is one image too
    np.testing.assert_array_equal(decode_image(buffer.getvalue()), expected)
    assert model_input(decode_image(png_bytes(xray))).shape == (1, 64, 64)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"GIF89a" + bytes(200), "unrecognised image format"),
        (npz_bytes(np.zeros((3, 32, 32), np.uint8)), "one 2-D image"),
        (npz_bytes(np.zeros((4, 4), np.uint8)), "too small"),
        (npz_bytes(np.full((16, 16), np.nan, np.float32)), "non-finite"),
        (npz_bytes(np.array(["a"] * 256).reshape(16, 16)), "not numbers"),
        (b"\x89PNG\r\n\x1a\n" + b"broken", "PNG could not be decoded"),
        (b"PK\x03\x04" + b"not a zip", "NPZ could not be read"),
        (bytes(128) + b"DICM" + b"junk", "DICOM could not be read"),
    ],
)
def test_unreadable_studies_are_image_errors(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message) as caught:
        decode_image(data)
    assert caught.value.reason == "image_unreadable"


def _event(**where: object) -> ImagingEvent:
    return ImagingEvent.model_validate(
        {
            "event_id": "e1",
            "patient_id": "p1",
            "event_time": datetime(2025, 1, 1, tzinfo=UTC),
            "source": "test",
            "study_id": "s1",
            "modality": "CT",
            **where,
        }
    )


def test_file_source_reads_inside_its_root_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.dcm").write_bytes(b"pixels")
    (tmp_path / "secret").write_bytes(b"secret")
    (root / "link").symlink_to(tmp_path / "secret")
    (root / "big").write_bytes(bytes(2048))
    source = ImageSource(file_root=root, max_bytes=1024)

    def fetch(uri: str) -> bytes:
        return asyncio.run(source.fetch(_event(image_uri=uri)))

    assert fetch((root / "ok.dcm").as_uri()) == b"pixels"
    assert asyncio.run(source.fetch(_event(inline_data=b"inline"))) == b"inline"
    for uri, message in [
        (f"file://{root}/../secret", "outside"),
        ((root / "link").as_uri(), "outside"),
        ((root / "missing").as_uri(), "no such file"),
        ((root / "big").as_uri(), "more than 1024"),
        (root.as_uri(), "directory"),
        ("file://elsewhere/x", "local path"),
        ("s3://bucket/key", "presigned"),
        ("https://pacs.example/x", "VIGIL_IMAGING_HTTP_HOSTS"),
        ("redis:///key", "not enabled"),
    ]:
        with pytest.raises(ImageError, match=message) as caught:
            fetch(uri)
        assert caught.value.reason == "image_unavailable"


def test_heatmaps_are_named_by_finding_id(tmp_path: Path) -> None:
    store = HeatmapStore(tmp_path / "heatmaps")
    uri = asyncio.run(store.put("ab" * 16, b"\x89PNG"))
    assert uri == (tmp_path / "heatmaps" / f"{'ab' * 16}.png").as_uri()
    assert (tmp_path / "heatmaps" / f"{'ab' * 16}.png").read_bytes() == b"\x89PNG"
    assert [p.name for p in (tmp_path / "heatmaps").iterdir()] == [f"{'ab' * 16}.png"]
    with pytest.raises(ValueError, match="hexadecimal"):
        asyncio.run(store.put("../x", b""))
