"""Latency per imaging event of the worker's imaging path (``ModelCalls.analyse``) with and
without the CT denoiser and the registration to the prior study, on a throwaway Triton
serving the shipped ``ct_denoise`` and ``imaging``.

Run from the repository root::

    PYTHONPATH=$PWD python -m bench.ct_dose_latency --events 40

Studies: real MSD sample patches (test patients); low-dose ones SIMULATED at 10 %; the
patient linkage is a test fixture. Three configurations, measured in the same run (so
compare them as ratios on a shared machine): ``baseline`` (full dose declared, no prior:
fetch, decode, imaging), ``denoise`` (10 % dose: + ``ct_denoise``), ``denoise-register``
(+ registration to the previous study of the same patient).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from models.ct_denoise.simulate import simulate_dose
from streams.adapters.image_source import HeatmapStore, ImageSource
from streams.adapters.models import ModelCalls
from streams.adapters.prior_store import PriorStore
from streams.adapters.triton import TritonScorer
from streams.core.breaker import CircuitBreaker
from streams.core.events import ImagingEvent
from streams.metrics import WorkerMetrics
from vigil.testing.triton_server import running_triton

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def _npz(image: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, image=image.astype(np.float32))
    return buffer.getvalue()


def _scorer(url: str, model: str) -> TritonScorer:
    return TritonScorer(
        url,
        model,
        timeout_seconds=30.0,
        retries=0,
        breaker=CircuitBreaker(5, 10.0, time.monotonic),
        batch_max_size=1,
        batch_max_wait_ms=0,
        metrics=WorkerMetrics(CollectorRegistry()),
    )


async def _measure(url: str, root: Path, events: int, iterations: int) -> dict[str, object]:
    with np.load("data/msd-lung-ct-sample/msd_lung_ct_sample.npz") as data:
        images = data["images"][:, 0].astype(np.float32)
    low = simulate_dose(images[:, None], 0.1, seed=1)[:, 0]
    imager, denoiser = _scorer(url, "imaging"), _scorer(url, "ct_denoise")
    for scorer in (imager, denoiser):
        await scorer.start()
    results: dict[str, object] = {}
    try:
        for name, dose, register in (
            ("baseline", 1.0, False),
            ("denoise", 0.1, False),
            ("denoise-register", 0.1, True),
        ):
            calls = ModelCalls(
                scorer=_scorer(url, "deterioration"),
                explainer=_scorer(url, "deterioration_explain"),
                ood_scorer=None,
                imager=imager,
                images=ImageSource(file_root=root, max_bytes=1 << 20),
                heatmaps=HeatmapStore(root / name / "heatmaps"),
                metrics=WorkerMetrics(CollectorRegistry()),
                denoiser=denoiser,
                priors=PriorStore(root / name / "priors") if register else None,
                registration_iterations=iterations,
            )
            seconds = []
            for i in range(events + 2):
                pixels = low[i % low.shape[0]] if dose < 1 else images[i % images.shape[0]]
                study = ImagingEvent(
                    event_id=f"bench-{name}-{i}",
                    patient_id="fixture-bench",
                    event_time=T0 + timedelta(hours=i),
                    source="bench",
                    study_id=f"{name}-{i}",
                    modality="CT",
                    inline_data=_npz(pixels),
                    dose_fraction=dose,
                )
                started = time.perf_counter()
                await calls.analyse(study)
                if i >= 2:  # the first two warm the path (and give the first prior)
                    seconds.append(time.perf_counter() - started)
            await calls.images.close()
            results[name] = {
                "events": len(seconds),
                "p50_ms": round(1000 * float(np.percentile(seconds, 50)), 1),
                "p99_ms": round(1000 * float(np.percentile(seconds, 99)), 1),
            }
    finally:
        for scorer in (imager, denoiser):
            await scorer.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument(
        "--iterations", type=int, default=200, help="registration steps (the chosen setting)"
    )
    parser.add_argument("--ready-seconds", type=float, default=600.0, help="Triton start limit")
    parser.add_argument(
        "--source",
        type=Path,
        default=Path("triton_repo"),
        help="model repository to serve (another checkout's, for a before/after pair)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = ("ct_denoise", "imaging")
        with running_triton(
            models, root, source=args.source, ready_seconds=args.ready_seconds
        ) as url:
            report = asyncio.run(_measure(url, root, args.events, args.iterations))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
