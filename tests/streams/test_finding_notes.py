"""A finding says whether and how its study was denoised and, with a prior study, what
registration found (``Processor.add_study``; the notes come from the worker's imaging
path, tested against a real Triton in tests/integration/test_ct_denoise_serving.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from streams.core.events import DenoisingNote, FindingRecord, ImagingEvent, RegistrationNote
from streams.core.imaging import StudyAnalysis
from streams.core.pipeline import Processor, ProcessorConfig
from streams.core.state import Origin, PatientState

T0 = datetime(2025, 2, 1, tzinfo=UTC)


def _analysis(**notes: object) -> StudyAnalysis:
    return StudyAnalysis(
        embedding=(0.0,) * 64,
        class_probability=0.8,
        lesion_count=1,
        lesion_area_fraction=0.05,
        mask_threshold=0.65,
        model_version="1",
        image_shape=(48, 48),
        heatmap_uri=None,
        **notes,  # type: ignore[arg-type]
    )


def _event(n: int) -> ImagingEvent:
    return ImagingEvent(
        event_id=f"e{n}",
        patient_id="fixture-1",
        event_time=T0 + timedelta(hours=n),
        source="test",
        study_id=f"s{n}",
        modality="CT",
        image_uri="file:///x.npz",
        dose_fraction=0.1,
    )


def test_the_finding_carries_both_notes_through_its_schema() -> None:
    processor = Processor(ProcessorConfig(), lambda: T0 + timedelta(days=1))
    states: dict[str, PatientState] = {}
    denoising = DenoisingNote(
        applied=True, reason="low_dose", dose_fraction=0.1, model="ct_denoise", model_version="1"
    )
    registration = RegistrationNote(
        prior_study_id="s0",
        prior_event_time=T0,
        prior_lesion_area_fraction=0.04,
        warped_prior_lesion_area_fraction=0.045,
        lesion_area_change_fraction=0.005,
        segmented_area_change_fraction=0.007,
        ncc_before=0.7,
        ncc_after=0.95,
        folding_fraction=0.0,
        min_jacobian=0.6,
    )
    applied = processor.add_study(
        states,
        _event(1),
        _analysis(denoising=denoising, registration=registration),
        Origin("img", 0, 5),
    )
    finding = applied.finding
    assert finding is not None
    decoded = FindingRecord.model_validate_json(finding.model_dump_json())
    assert decoded.denoising == denoising
    assert decoded.registration == registration
    wire = json.loads(finding.model_dump_json())
    assert wire["registration"]["prior_study_id"] == "s0"
    assert wire["denoising"]["reason"] == "low_dose"


def test_a_finding_without_notes_stays_valid() -> None:
    processor = Processor(ProcessorConfig(), lambda: T0 + timedelta(days=1))
    applied = processor.add_study({}, _event(2), _analysis(), Origin("img", 0, 6))
    assert applied.finding is not None
    assert applied.finding.denoising is None
    assert applied.finding.registration is None
