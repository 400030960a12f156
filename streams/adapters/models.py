"""The worker's model calls on Triton, and how their outputs become core values.

:class:`ModelCalls` asks ``deterioration`` (with the ``ood`` detector beside it) for
every snapshot of a batch at once, ``deterioration_explain`` for the alerts that need
it, and ``imaging`` for a study; it turns their outputs into
:class:`~streams.core.pipeline.ModelAnswer`, :class:`~streams.core.alerting.OodVerdict`
and :class:`~streams.core.imaging.StudyAnalysis`. The
:class:`~streams.adapters.triton.TritonScorer` of each model groups concurrent requests
into gRPC calls of up to ``VIGIL_BATCH_MAX_SIZE`` rows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from models.imaging_ops import heatmap_png, summarise_segmentation
from streams.adapters.image_source import HeatmapStore, ImageSource
from streams.adapters.triton import ImageInput, ModelOutput, TritonScorer
from streams.core.alerting import OodVerdict
from streams.core.events import DeadLetterReason, ImagingEvent, make_finding_id
from streams.core.imaging import StudyAnalysis, decode_image, model_input
from streams.core.pipeline import ModelAnswer, Snapshot
from streams.metrics import WorkerMetrics
from vigil.errors import CircuitOpenError, InferenceError, SchemaError

__all__ = ["ModelCalls"]

log = logging.getLogger(__name__)


class ModelCalls:
    """Triton calls of the worker (see the module docstring).

    Args:
        scorer: The deterioration model.
        explainer: The explaining variant (per-parameter contributions).
        ood_scorer: The out-of-distribution detector, or None when switched off.
        imager: The imaging model, or None when switched off.
        images: Where studies' pixels are fetched.
        heatmaps: Where CAM heatmaps are stored.
        metrics: Worker metrics.
    """

    def __init__(
        self,
        *,
        scorer: TritonScorer,
        explainer: TritonScorer,
        ood_scorer: TritonScorer | None,
        imager: TritonScorer | None,
        images: ImageSource,
        heatmaps: HeatmapStore,
        metrics: WorkerMetrics,
    ) -> None:
        self.scorer = scorer
        self.explainer = explainer
        self.ood_scorer = ood_scorer
        self.imager = imager
        self.images = images
        self.heatmaps = heatmaps
        self.metrics = metrics

    def scorers(self) -> list[TritonScorer]:
        """Every configured model client (to start and close them)."""
        optional = [self.ood_scorer, self.imager]
        return [self.scorer, self.explainer, *(s for s in optional if s is not None)]

    async def score_all(
        self, snapshots: Sequence[Snapshot]
    ) -> list[tuple[ModelAnswer | None, str | None]]:
        """The model's answer (or the degraded reason) for every snapshot, in order; all
        requests go out together, so the batcher packs them into as few calls as it may."""
        return list(await asyncio.gather(*(self._score(s) for s in snapshots)))

    async def _score(self, snapshot: Snapshot) -> tuple[ModelAnswer | None, str | None]:
        images = _image_inputs(snapshot)
        ood_task = (
            asyncio.ensure_future(self._ood(self.ood_scorer, snapshot.window, images))
            if self.ood_scorer is not None
            else None
        )
        reason = None
        try:
            output: ModelOutput = await self.scorer.score(snapshot.window, images)
        except CircuitOpenError:
            reason = "circuit_open"
        except InferenceError as exc:
            log.warning("scoring failed, degraded to NEWS2: %s", exc)
            reason = "inference_error"
        verdict = await ood_task if ood_task is not None else None
        if reason is not None:
            self.metrics.degraded.set(1)
            return None, reason
        self.metrics.degraded.set(0)
        if verdict is not None and verdict.flagged:
            self.metrics.ood.labels(self.scorer.model).inc()
        return ModelAnswer(output.risk, self.scorer.model_version, ood=verdict), None

    async def _ood(
        self, scorer: TritonScorer, window: Any, images: list[ImageInput]
    ) -> OodVerdict | None:
        """The OOD detector's verdict on the same inputs; None if it cannot answer (the
        score then goes out without one, and the alert policy treats it as in-distribution,
        which ``docs/alerting.md`` states)."""
        try:
            output = await scorer.score(window, images)
            distance = float(output.extra["distance"].reshape(-1)[0])
            flagged = bool(output.extra["ood"].reshape(-1)[0])
            threshold = float(scorer.parameters.get("threshold", "nan"))
        except (CircuitOpenError, InferenceError, KeyError, ValueError) as exc:
            log.warning("OOD verdict unavailable: %s", exc)
            return None
        channels = tuple(
            channel
            for channel in ("representation", "input")
            if f"{channel}_ood" in output.extra
            and bool(output.extra[f"{channel}_ood"].reshape(-1)[0])
        )
        return OodVerdict(
            distance=distance, threshold=threshold, flagged=flagged, channels=channels
        )

    async def explain_all(self, snapshots: Sequence[Snapshot]) -> list[Any]:
        """Per-parameter contributions for each snapshot (None where the explain model
        failed: the alert is then explained by NEWS2)."""
        return list(await asyncio.gather(*(self._explain(s) for s in snapshots)))

    async def _explain(self, snapshot: Snapshot) -> Any:
        try:
            output = await self.explainer.score(snapshot.window, _image_inputs(snapshot))
        except InferenceError as exc:
            log.warning("explanation unavailable, alert explained by NEWS2: %s", exc)
            return None
        return output.contributions

    async def analyse(self, study: ImagingEvent) -> StudyAnalysis:
        """Fetch, decode and score one study on the imaging model; store its heatmap.

        Raises:
            SchemaError: The pixels are unavailable or unreadable (``ImageError``), or the
                imaging model failed (``inference_failed``).
        """
        imager = self.imager
        if imager is None:  # pragma: no cover - callers check
            raise InferenceError("imaging is not configured")
        data = await self.images.fetch(study)
        image = await asyncio.to_thread(decode_image, data, study.content_type)
        pixels = await asyncio.to_thread(model_input, image)
        try:
            output = await imager.infer({"image": pixels})
            mask = output.extra["mask_probability"]
            probability = float(np.asarray(output.extra["class_probability"]).reshape(-1)[0])
            embedding = np.asarray(output.extra["embedding"], dtype=np.float64).reshape(-1)
            cam = output.extra["cam"]
        except (InferenceError, KeyError) as exc:
            raise SchemaError(
                DeadLetterReason.INFERENCE_FAILED, f"imaging model {imager.model!r}: {exc}"
            ) from exc
        if not (np.isfinite(embedding).all() and np.isfinite(probability)):
            raise SchemaError(DeadLetterReason.INFERENCE_FAILED, "non-finite imaging output")
        threshold = float(imager.parameters.get("mask_threshold", "0.5"))
        count, area = summarise_segmentation(mask, threshold)
        finding_id = make_finding_id(
            study.patient_id, study.study_id, study.event_id, imager.model_version
        )
        try:
            heatmap_uri: str | None = await self.heatmaps.put(finding_id, heatmap_png(cam))
        except OSError as exc:
            # The finding still goes out; its heatmap reference is empty and the log says why.
            log.warning("heatmap not stored: %s", type(exc).__name__)
            heatmap_uri = None
        return StudyAnalysis(
            embedding=tuple(float(x) for x in embedding),
            class_probability=min(max(probability, 0.0), 1.0),
            lesion_count=count,
            lesion_area_fraction=area / float(np.asarray(mask).size),
            mask_threshold=threshold,
            model_version=imager.model_version,
            image_shape=tuple(int(n) for n in image.shape),
            heatmap_uri=heatmap_uri,
        )


def _image_inputs(snapshot: Snapshot) -> list[ImageInput]:
    return [ImageInput(age, emb) for age, emb in snapshot.images]
