"""``ct_denoise`` on a real Triton server (started here on free ports with copies of the
shipped ``ct_denoise`` and ``imaging``), and the worker's imaging path through it: a
low-dose CT study is denoised before segmentation and a later study of the same patient is
registered to it.

**Simulated / synthetic:** the low-dose study is a SIMULATED 10 % acquisition of a real
MSD patch; the later study is the same patch warped by a known SYNTHETIC deformation.
The patient is a test fixture.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from models.ct_denoise.export import example_inputs, load_denoiser
from models.ct_denoise.network import ServedDenoiser
from models.ct_denoise.simulate import simulate_dose
from models.registration.evaluate import make_synthetic
from streams.adapters.image_source import HeatmapStore, ImageSource
from streams.adapters.models import ModelCalls
from streams.adapters.prior_store import PriorStore
from streams.adapters.triton import TritonScorer
from streams.core.breaker import CircuitBreaker
from streams.core.events import ImagingEvent
from streams.core.imaging import StudyAnalysis
from streams.metrics import WorkerMetrics
from tests.imaging_files import ct_patches
from vigil.testing.triton_server import running_triton

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def triton_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("ct_denoise_triton")
    with running_triton(("ct_denoise", "imaging"), workdir, source=REPO / "triton_repo") as url:
        yield url


def _infer(
    url: str, image: np.ndarray[Any, Any], dose: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    client = grpcclient.InferenceServerClient(url)
    tensors = []
    for name, array in (("image", image), ("dose_fraction", dose)):
        tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = client.infer("ct_denoise", tensors)
    out: np.ndarray[Any, Any] = result.as_numpy("denoised")
    return out


@pytest.mark.parametrize("side", [48, 64])
def test_served_denoiser_matches_the_eager_network(triton_url: str, side: int) -> None:
    net, _ = load_denoiser(REPO / "models" / "weights" / "ct_denoise.pt")
    images, doses = example_inputs(side)
    got = _infer(triton_url, images.numpy(), doses.numpy())
    with torch.no_grad():
        (expected,) = ServedDenoiser(net).eval()(images, doses)
    assert got.shape == (3, 1, side, side)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


def test_a_bad_dose_is_refused_with_invalid_arg(triton_url: str) -> None:
    image = np.zeros((1, 1, 48, 48), np.float32)
    with pytest.raises(InferenceServerException, match="dose_fraction"):
        _infer(triton_url, image, np.array([[1.5]], np.float32))


def _npz(image: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, image=image.astype(np.float32))
    return buffer.getvalue()


def _scorer(url: str, model: str) -> TritonScorer:
    return TritonScorer(
        url,
        model,
        timeout_seconds=20.0,
        retries=0,
        breaker=CircuitBreaker(5, 10.0, time.monotonic),
        batch_max_size=1,
        batch_max_wait_ms=0,
        metrics=WorkerMetrics(CollectorRegistry()),
    )


def _study(n: int, image: np.ndarray[Any, Any], dose: float | None) -> ImagingEvent:
    return ImagingEvent(
        event_id=f"fixture-ct-{n}",
        patient_id="fixture-bed-7",
        event_time=T0 + timedelta(days=n),
        source="ct-denoise-test",
        study_id=f"study-{n}",
        modality="CT",
        inline_data=_npz(image),
        dose_fraction=dose,
    )


def test_low_dose_study_is_denoised_and_the_next_one_registered(
    triton_url: str, tmp_path: Path
) -> None:
    images, masks = ct_patches()
    index = int(np.argmax(masks.reshape(masks.shape[0], -1).sum(axis=1)))
    real = images[index].astype(np.float32)
    low = simulate_dose(real[None, None], 0.1, seed=11)[0, 0]
    later = make_synthetic(real, masks[index] > 0, np.random.default_rng(5)).new

    async def run() -> list[StudyAnalysis]:
        denoiser, imager = _scorer(triton_url, "ct_denoise"), _scorer(triton_url, "imaging")
        calls = ModelCalls(
            scorer=_scorer(triton_url, "deterioration"),
            explainer=_scorer(triton_url, "deterioration_explain"),
            ood_scorer=None,
            imager=imager,
            images=ImageSource(file_root=tmp_path, max_bytes=1 << 20),
            heatmaps=HeatmapStore(tmp_path / "heatmaps"),
            metrics=WorkerMetrics(CollectorRegistry()),
            denoiser=denoiser,
            denoise_below=0.5,
            priors=PriorStore(tmp_path / "priors"),
            registration_iterations=30,
        )
        for scorer in (denoiser, imager):
            await scorer.start()
        try:
            return [
                await calls.analyse(_study(0, low, 0.1)),
                await calls.analyse(_study(1, later, 1.0)),
            ]
        finally:
            for scorer in (denoiser, imager):
                await scorer.close()
            await calls.images.close()

    first, second = asyncio.run(run())
    assert first.denoising is not None
    assert first.denoising.applied
    assert (first.denoising.reason, first.denoising.model) == ("low_dose", "ct_denoise")
    assert first.denoising.dose_fraction == pytest.approx(0.1)
    assert first.registration is None  # no prior yet
    assert second.denoising is not None
    assert not second.denoising.applied
    assert second.denoising.reason == "full_dose"
    note = second.registration
    assert note is not None
    assert note.prior_study_id == "study-0"
    assert note.prior_event_time == T0
    assert note.folding_fraction == 0.0
    assert note.min_jacobian > 0.0
    assert note.ncc_after >= note.ncc_before
