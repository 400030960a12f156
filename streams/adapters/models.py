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
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from streams.adapters.image_source import HeatmapStore, ImageSource
from streams.adapters.prior_store import PriorStore
from streams.adapters.triton import ImageInput, ModelOutput, TritonScorer
from streams.core.alerting import OodVerdict
from streams.core.events import (
    DeadLetterReason,
    DenoisingNote,
    ImagingEvent,
    RegistrationNote,
    make_finding_id,
)
from streams.core.imaging import StudyAnalysis, decode_image, denoising_decision, model_input
from streams.core.imaging_ops import heatmap_png, lesion_mask, lesion_summary
from streams.core.pipeline import ModelAnswer, Snapshot
from streams.core.prior_study import PriorStudy
from streams.core.step_features import BINS_PER_REQUEST, StepBin, pack_bins
from streams.core.stepping import ModelState, StepRequest
from streams.metrics import WorkerMetrics
from vigil.errors import CircuitOpenError, InferenceError, SchemaError

__all__ = ["ModelCalls"]

log = logging.getLogger(__name__)


class ModelCalls:
    """Triton calls of the worker (see the module docstring).

    Args:
        scorer: The deterioration model.
        explainer: The explaining variant (per-parameter contributions).
        step_explainer: The step model's explaining model, for alerts of step-scored
            snapshots (None: those are explained by ``explainer``).
        ood_scorer: The out-of-distribution detector, or None when switched off.
        imager: The imaging model, or None when switched off.
        images: Where studies' pixels are fetched.
        heatmaps: Where CAM heatmaps are stored.
        metrics: Worker metrics.
        denoiser: The CT denoiser (``ct_denoise``), or None when switched off.
        denoise_below: Dose fraction under which a CT study is denoised.
        priors: Where each patient's latest study per modality is kept for
            registration, or None when registration is switched off.
        registration_iterations: Optimiser steps of each registration.
    """

    def __init__(
        self,
        *,
        scorer: TritonScorer,
        stepper: TritonScorer | None = None,
        explainer: TritonScorer,
        step_explainer: TritonScorer | None = None,
        ood_scorer: TritonScorer | None,
        imager: TritonScorer | None,
        images: ImageSource,
        heatmaps: HeatmapStore,
        metrics: WorkerMetrics,
        denoiser: TritonScorer | None = None,
        denoise_below: float = 0.5,
        priors: PriorStore | None = None,
        registration_iterations: int = 0,
    ) -> None:
        self.scorer = scorer
        self.stepper = stepper
        self.explainer = explainer
        self.step_explainer = step_explainer
        self.ood_scorer = ood_scorer
        self.imager = imager
        self.images = images
        self.heatmaps = heatmaps
        self.metrics = metrics
        self.denoiser = denoiser
        self.denoise_below = denoise_below
        self.priors = priors
        self.registration_iterations = registration_iterations

    def scorers(self) -> list[TritonScorer]:
        """Every configured model client (to start and close them)."""
        optional = [self.stepper, self.step_explainer, self.ood_scorer, self.imager, self.denoiser]
        return [self.scorer, self.explainer, *(s for s in optional if s is not None)]

    async def score_all(
        self, snapshots: Sequence[Snapshot]
    ) -> list[tuple[ModelAnswer | None, str | None]]:
        """The model's answer (or the degraded reason) for every snapshot, in order; all
        requests go out together, so the batcher packs them into as few calls as it may.
        Snapshots with step inputs go to the step model (:meth:`_score_steps`)."""
        stepped = [i for i, s in enumerate(snapshots) if s.step is not None]
        if self.stepper is None or not stepped:
            return list(await asyncio.gather(*(self._score(s) for s in snapshots)))
        windowed = [i for i, s in enumerate(snapshots) if s.step is None]
        answers: list[tuple[ModelAnswer | None, str | None]] = [(None, "unavailable")] * len(
            snapshots
        )
        by_step, by_window = await asyncio.gather(
            self._score_steps([snapshots[i] for i in stepped]),
            asyncio.gather(*(self._score(snapshots[i]) for i in windowed)),
        )
        for i, answer in zip(stepped, by_step, strict=True):
            answers[i] = answer
        for i, answer in zip(windowed, by_window, strict=True):
            answers[i] = answer
        return answers

    async def step_model_id(self) -> str | None:
        """``name/version`` of the step model (reads its metadata); None when it is not
        configured or not reachable yet (scores then use the window model)."""
        if self.stepper is None:
            return None
        try:
            await self.stepper.ensure_metadata()
        except InferenceError as exc:
            log.warning("step model unavailable, scoring with the window model: %s", exc)
            return None
        return f"{self.stepper.model}/{self.stepper.model_version}"

    @property
    def step_model_judges_ood(self) -> bool:
        """Whether the step model gives its own OOD verdict (read with its metadata)."""
        return self.stepper is not None and self.stepper.declares("ood")

    async def _score_steps(
        self, snapshots: Sequence[Snapshot]
    ) -> list[tuple[ModelAnswer | None, str | None]]:
        """Step-model answers for a batch's snapshots, all in one go.

        Each snapshot runs from its own request's base (its patient's stored state, or
        admission when there is none or it went stale: :mod:`streams.core.stepping`)
        through the bins that closed since, as the snapshot saw them, and its open bin,
        and commits those old enough
        (:attr:`~streams.core.stepping.StepRequest.commit_through`; the newer closed bins
        run provisionally). A snapshot with more closed bins than one request holds (a
        backlog, a long outage, a rebuild) first gets a chain of commit-only requests, a
        request per ``BINS_PER_REQUEST`` bins, over its own view; snapshots of a patient
        whose next link would be the same (same start, same bins, same values) share it.
        So a snapshot's answer depends on what it saw, never on which other snapshots
        shared its batch.
        """
        stepper = self.stepper
        assert stepper is not None  # noqa: S101 - callers check
        model_id = f"{stepper.model}/{stepper.model_version}"
        steps = [_step_of(snapshot) for snapshot in snapshots]
        rebuilds = sum(step.rebuilt for step in steps)
        if rebuilds:
            self.metrics.step_rebuilds.inc(rebuilds)
        starts: dict[int, ModelState | None] = {i: step.base for i, step in enumerate(steps)}
        failed: dict[int, str] = {}
        while True:
            links: dict[tuple[object, ...], tuple[int, tuple[StepBin, ...], list[int]]] = {}
            for i, snapshot in enumerate(snapshots):
                if i in failed:
                    continue
                pending = _after(snapshot, starts[i])
                ready = pending[: steps[i].committable(pending)][:BINS_PER_REQUEST]
                if len(pending) < BINS_PER_REQUEST or not ready:
                    continue
                key = (snapshot.patient_id, id(starts[i]), *(_bin_key(b) for b in ready))
                links.setdefault(key, (i, ready, []))[2].append(i)
            if not links:
                break
            committed = await asyncio.gather(
                *(
                    self._step(snapshots[i], starts[i], chunk, None, len(chunk))
                    for i, chunk, _ in links.values()
                ),
                return_exceptions=True,
            )
            for (i, chunk, sharing), result in zip(links.values(), committed, strict=True):
                if isinstance(result, BaseException):
                    failed.update(dict.fromkeys(sharing, _reason(result)))
                    continue
                link = ModelState(model_id, steps[i].admit_ms, chunk[-1].index, result[1])
                starts.update(dict.fromkeys(sharing, link))
        closed = {i: _after(snapshots[i], starts[i]) for i in starts if i not in failed}
        requests = {
            i: self._step(snapshots[i], starts[i], bins, steps[i].open, steps[i].committable(bins))
            for i, bins in closed.items()
        }
        results = dict(
            zip(
                requests,
                await asyncio.gather(*requests.values(), return_exceptions=True),
                strict=True,
            )
        )
        answers: list[tuple[ModelAnswer | None, str | None]] = []
        ood_wanted: list[int] = []
        for i, snapshot in enumerate(snapshots):
            if i not in results:
                answers.append((None, failed[i]))
                continue
            result = results[i]
            if isinstance(result, BaseException):
                answers.append((None, _reason(result)))
                continue
            output, vector = result
            step = snapshot.step
            assert step is not None  # noqa: S101 - callers check
            # Every step up to commit_through was committed by this request or before it.
            base = starts[i]
            last = max(-1 if base is None else base.bin, step.commit_through)
            state = ModelState(model_id, step.admit_ms, last, vector)
            verdict = _verdict(output, stepper) if "ood" in output.extra else None
            answer = ModelAnswer(
                output.risk,
                stepper.model_version,
                ood=verdict,
                model_state=state,
                model=stepper.model,
            )
            answers.append((answer, None))
            if verdict is None:
                ood_wanted.append(i)
        ood_scorer = self.ood_scorer
        if ood_wanted and ood_scorer is not None:
            # The step model declares no OOD outputs: ask the window detector.
            verdicts = await asyncio.gather(
                *(
                    self._ood(ood_scorer, snapshots[i].window, _image_inputs(snapshots[i]))
                    for i in ood_wanted
                )
            )
            for i, found in zip(ood_wanted, verdicts, strict=True):
                scored, _ = answers[i]
                assert scored is not None  # noqa: S101 - set above
                answers[i] = (dataclasses.replace(scored, ood=found), None)
        for given, _ in answers:
            if given is not None and given.ood is not None and given.ood.flagged:
                self.metrics.ood.labels(stepper.model).inc()
        self.metrics.degraded.set(1 if any(a is None for a, _ in answers) else 0)
        return answers

    async def _step(
        self,
        snapshot: Snapshot,
        base: ModelState | None,
        closed: tuple[StepBin, ...],
        current: StepBin | None,
        commit: int,
    ) -> tuple[ModelOutput, bytes]:
        """One step-model request after ``base``: ``closed``, of which the first ``commit``
        are committed, then ``current``, all run for the risk; returns the output and the
        committed state's bytes."""
        stepper = self.stepper
        assert stepper is not None  # noqa: S101 - callers check
        bins = [*closed, current] if current is not None else list(closed)
        values, mask, delta, valid = pack_bins(bins)
        width = stepper.input_dims("state")[0]
        vector = np.zeros(width, dtype=np.float32)
        if base is not None and len(base.vector) == 4 * width:
            vector = np.frombuffer(base.vector, dtype="<f4").astype(np.float32)
        statics, static_mask = (
            snapshot.statics
            if snapshot.statics is not None
            else (snapshot.window.statics, snapshot.window.static_mask)
        )
        arrays = {
            "state": vector,
            "bins_values": values,
            "bins_mask": mask,
            "bins_delta_hours": delta,
            "bins_valid": valid,
            "commit_bins": np.array([commit], dtype=np.float32),
            "statics": statics,
            "static_mask": static_mask,
            **stepper.image_arrays(_image_inputs(snapshot)),
        }
        if stepper.takes("hours_since_seen"):  # the OOD head's clock (docs/ood.md)
            arrays["hours_since_seen"] = _step_of(snapshot).hours_since_seen
        output = await stepper.infer(arrays)
        committed = np.asarray(output.extra["state_out"], dtype="<f4").reshape(-1)
        return output, committed.tobytes()

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

    def explainer_for(self, snapshot: Snapshot) -> TritonScorer:
        """The model that explains ``snapshot``'s alerts: the step model's explainer for
        a score from the step model (when configured), else the window model's."""
        if snapshot.step is not None and self.step_explainer is not None:
            return self.step_explainer
        return self.explainer

    async def _explain(self, snapshot: Snapshot) -> Any:
        try:
            explainer = self.explainer_for(snapshot)
            output = await explainer.score(snapshot.window, _image_inputs(snapshot))
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
        denoising, image = await self._denoise(study, image)
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
        peak_threshold = float(imager.parameters.get("lesion_peak_threshold", "0.0"))
        lesions = lesion_mask(
            np.asarray(mask, dtype=np.float32).reshape(pixels.shape[-2:]), threshold, peak_threshold
        )
        count, area = lesion_summary(lesions)
        finding_id = make_finding_id(
            study.patient_id, study.study_id, study.event_id, imager.model_version
        )
        try:
            heatmap_uri: str | None = await self.heatmaps.put(finding_id, heatmap_png(cam))
        except OSError as exc:
            # The finding still goes out; its heatmap reference is empty and the log says why.
            log.warning("heatmap not stored: %s", type(exc).__name__)
            heatmap_uri = None
        registration = await self._register(study, pixels[0], lesions)
        return StudyAnalysis(
            embedding=tuple(float(x) for x in embedding),
            class_probability=min(max(probability, 0.0), 1.0),
            lesion_count=count,
            lesion_area_fraction=area / float(np.asarray(mask).size),
            mask_threshold=threshold,
            lesion_peak_threshold=peak_threshold,
            model_version=imager.model_version,
            image_shape=tuple(int(n) for n in image.shape),
            heatmap_uri=heatmap_uri,
            denoising=denoising,
            registration=registration,
        )

    async def _denoise(
        self, study: ImagingEvent, image: np.ndarray[Any, np.dtype[np.float32]]
    ) -> tuple[DenoisingNote, np.ndarray[Any, np.dtype[np.float32]]]:
        """The image the segmentation reads, and the note saying whether it was denoised.

        A denoiser failure does not stop the study: the raw image is segmented and the
        note says ``denoiser_failed``.
        """
        dose = study.dose_fraction
        wanted, reason = denoising_decision(
            study.modality, dose, below=self.denoise_below, enabled=self.denoiser is not None
        )
        denoiser = self.denoiser
        if not wanted or denoiser is None or dose is None:
            return DenoisingNote(applied=False, reason=reason, dose_fraction=dose), image
        try:
            output = await denoiser.infer(
                {
                    "image": image[None].astype(np.float32),
                    "dose_fraction": np.array([dose], dtype=np.float32),
                }
            )
            denoised = np.asarray(output.extra["denoised"], dtype=np.float32).reshape(image.shape)
        except (InferenceError, KeyError, ValueError) as exc:
            log.warning("denoiser unavailable, segmenting the raw image: %s", type(exc).__name__)
            return DenoisingNote(applied=False, reason="denoiser_failed", dose_fraction=dose), image
        if not np.isfinite(denoised).all():
            return DenoisingNote(applied=False, reason="denoiser_failed", dose_fraction=dose), image
        note = DenoisingNote(
            applied=True,
            reason=reason,
            dose_fraction=dose,
            model=denoiser.model,
            model_version=denoiser.model_version,
        )
        return note, np.clip(denoised, 0.0, 1.0)

    async def _register(
        self,
        study: ImagingEvent,
        image: np.ndarray[Any, np.dtype[np.float32]],
        lesions: np.ndarray[Any, np.dtype[np.bool_]],
    ) -> RegistrationNote | None:
        """Registers the patient's prior study of the same modality to this one (None when
        there is no earlier prior or registration is off), then keeps this study as the
        prior of the next."""
        priors = self.priors
        if priors is None:
            return None
        prior = await priors.get(study.patient_id, study.modality)
        note = None
        if (
            prior is not None
            and prior.event_time < study.event_time
            and prior.study_id != study.study_id
            and prior.image.shape == image.shape
        ):
            # Imported here: registration runs torch, which the worker loads only when
            # registration is switched on (VIGIL_REGISTRATION_ITERATIONS > 0).
            from models.imaging.registration import compare_with_prior

            note = await asyncio.to_thread(
                compare_with_prior,
                prior,
                image,
                lesions,
                iterations=self.registration_iterations,
            )
        current = PriorStudy(study.study_id, study.event_time, image, lesions)
        try:
            await priors.put(study.patient_id, study.modality, current)
        except OSError as exc:
            log.warning("prior study not stored: %s", type(exc).__name__)
        return note


def _image_inputs(snapshot: Snapshot) -> list[ImageInput]:
    return [ImageInput(age, emb) for age, emb in snapshot.images]


def _after(snapshot: Snapshot, base: ModelState | None) -> tuple[StepBin, ...]:
    """The snapshot's closed bins that ``base`` has not committed yet."""
    step = snapshot.step
    assert step is not None  # noqa: S101 - callers check
    last = -1 if base is None else base.bin
    return tuple(b for b in step.closed if b.index > last)


def _step_of(snapshot: Snapshot) -> StepRequest:
    step = snapshot.step
    assert step is not None  # noqa: S101 - callers check
    return step


def _bin_key(step: StepBin) -> tuple[object, ...]:
    """What a bin contributes to a committed state: its index and inputs."""
    return (step.index, step.values.tobytes(), step.mask.tobytes(), step.delta_hours.tobytes())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, CircuitOpenError):
        return "circuit_open"
    log.warning("step scoring failed, degraded to NEWS2: %s", exc)
    return "inference_error"


def _verdict(output: ModelOutput, scorer: TritonScorer) -> OodVerdict:
    """The OOD verdict a model returns beside its risk (outputs named as ``ood``'s)."""
    channels = tuple(
        channel
        for channel in ("representation", "input")
        if f"{channel}_ood" in output.extra
        and bool(np.asarray(output.extra[f"{channel}_ood"]).reshape(-1)[0])
    )
    return OodVerdict(
        distance=float(np.asarray(output.extra["distance"]).reshape(-1)[0]),
        threshold=float(scorer.parameters.get("threshold", "nan")),
        flagged=bool(np.asarray(output.extra["ood"]).reshape(-1)[0]),
        channels=channels,
    )
