"""Wire records of every Vigil topic: pydantic v2 models, JSON on the wire.

Every record is frozen, forbids unknown fields and carries ``schema_version: 1``.
Datetimes are timezone-aware and normalised to UTC; on the wire they are RFC 3339
strings (``2024-05-01T12:00:00Z``). Bytes travel as base64url (RFC 4648 §5).

Input topics (keyed by ``patient_id``): ``vitals`` and ``labs`` carry
:class:`ObservationEvent`, ``adt`` carries :class:`AdtEvent`, ``imaging`` carries
:class:`ImagingEvent`. Output topics: ``scores`` (:class:`ScoreRecord`), ``alerts``
(:class:`AlertRecord`), ``deadletter`` (:class:`DeadLetterRecord`). ``acks`` (input, keyed by
``patient_id``) carries :class:`AckEvent`, actions of clinicians on an alert; ``audit``
(output) carries :class:`AuditRecord`, one per alert state change and per accepted action.
``findings`` (output, keyed by ``patient_id``) carries :class:`FindingRecord`, what the
imaging model read in one study.

These models check structure only. Code vocabulary, units, physiological ranges and
clock checks live in :mod:`streams.core.validation`.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from vigil.errors import ConfigError

__all__ = [
    "DEFAULT_PREFIX",
    "INPUT_TOPICS",
    "MAX_INLINE_IMAGE_BYTES",
    "MAX_OBSERVATIONS",
    "AckEvent",
    "AdtEvent",
    "AlertRecord",
    "AuditRecord",
    "DeadLetterReason",
    "DeadLetterRecord",
    "DenoisingNote",
    "ExplanationRecord",
    "FindingRecord",
    "IcuType",
    "ImagingEvent",
    "ImagingReference",
    "InputEvent",
    "News2Score",
    "Observation",
    "ObservationEvent",
    "OffsetRange",
    "OodRecord",
    "Provenance",
    "RegistrationNote",
    "ScoreRecord",
    "TopicKind",
    "make_alert_id",
    "make_audit_id",
    "make_finding_id",
    "topic_name",
]

DEFAULT_PREFIX: Final = "vigil"
MAX_OBSERVATIONS: Final = 256
MAX_INLINE_IMAGE_BYTES: Final = 1_048_576
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class TopicKind(StrEnum):
    """The kinds of topic Vigil uses; the full name is ``<prefix>.<kind>``."""

    VITALS = "vitals"
    LABS = "labs"
    IMAGING = "imaging"
    ADT = "adt"
    SCORES = "scores"
    ALERTS = "alerts"
    DEADLETTER = "deadletter"
    FINDINGS = "findings"
    ACKS = "acks"
    AUDIT = "audit"
    EXPLANATIONS = "explanations"


INPUT_TOPICS: Final = frozenset(
    {TopicKind.VITALS, TopicKind.LABS, TopicKind.IMAGING, TopicKind.ADT}
)


def topic_name(kind: TopicKind, prefix: str = DEFAULT_PREFIX) -> str:
    """Return the full Kafka topic name, for example ``vigil.vitals``.

    Raises:
        ConfigError: ``prefix`` is empty or has characters Kafka does not allow.
    """
    if _TOPIC_PREFIX.fullmatch(prefix) is None:
        raise ConfigError(f"invalid topic prefix {prefix!r}: use 1-200 of [A-Za-z0-9._-]")
    return f"{prefix}.{kind.value}"


class DeadLetterReason(StrEnum):
    """Why a record went to the dead-letter topic (a bounded metric label)."""

    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_JSON = "invalid_json"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    NAIVE_TIMESTAMP = "naive_timestamp"
    UNKNOWN_CODE = "unknown_code"
    UNKNOWN_UNIT = "unknown_unit"
    NON_FINITE = "non_finite"
    FUTURE_EVENT = "future_event"
    TOO_LATE = "too_late"
    DUPLICATE = "duplicate"
    UNKNOWN_ALERT = "unknown_alert"
    ALERT_RESOLVED = "alert_resolved"
    MISSING_USER = "missing_user"
    MISSING_REASON = "missing_reason"
    SNOOZE_EXPIRED = "snooze_expired"
    SNOOZE_TOO_LONG = "snooze_too_long"
    IMAGE_UNAVAILABLE = "image_unavailable"
    IMAGE_UNREADABLE = "image_unreadable"
    INFERENCE_FAILED = "inference_failed"


class IcuType(StrEnum):
    """ICU type; PhysioNet 2012 ``ICUType`` 1-4 in :meth:`from_physionet` order."""

    CORONARY_CARE = "coronary_care"
    CARDIAC_SURGERY_RECOVERY = "cardiac_surgery_recovery"
    MEDICAL = "medical"
    SURGICAL = "surgical"

    @classmethod
    def from_physionet(cls, icu_type: int) -> IcuType:
        """Map PhysioNet 2012 ``ICUType`` (1 coronary, 2 cardiac surgery, 3 medical,
        4 surgical) to a member.

        Raises:
            ValueError: ``icu_type`` is not 1-4.
        """
        members = list(cls)
        if not 1 <= icu_type <= len(members):
            raise ValueError(f"ICUType must be 1-4, got {icu_type}")
        return members[icu_type - 1]

    @property
    def physionet(self) -> int:
        """The PhysioNet 2012 ``ICUType`` number (1-4)."""
        return list(IcuType).index(self) + 1


_EARLIEST_TIME: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _time_text_only(value: Any) -> Any:
    # Lax pydantic reads a number as seconds or milliseconds since the epoch (guessed from
    # its size) and a bool as a number; the wire takes RFC 3339 text only.
    if isinstance(value, int | float):
        raise ValueError("a time must be an RFC 3339 string with an offset")
    return value


def _to_utc(value: datetime) -> datetime:
    # A time near year 1 or 9999 overflows in UTC or in the state's window arithmetic.
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("time is out of range in UTC") from None
    if utc < _EARLIEST_TIME:
        raise ValueError("time is before 1970-01-01T00:00:00Z")
    return utc


UtcDatetime = Annotated[AwareDatetime, BeforeValidator(_time_text_only), AfterValidator(_to_utc)]
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")
]
PatientId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
]
Code = Annotated[
    str, StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
]
Unit = Annotated[str, StringConstraints(min_length=1, max_length=32)]
Version = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Text = Annotated[str, StringConstraints(max_length=2000)]
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Probability = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0.0, le=1.0)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )


def _integer_only(value: Any) -> Any:
    # Literal[1] alone also takes true and 1.0 (they compare equal to 1).
    if type(value) is not int:
        raise ValueError("must be the integer 1")
    return value


class _Record(_Frozen):
    """Top-level record of a topic."""

    schema_version: Annotated[Literal[1], BeforeValidator(_integer_only)] = 1


class Observation(_Frozen):
    """One measurement as sent by the source, in the source's unit.

    Attributes:
        code: Vigil code (see :mod:`streams.core.codes`), for example ``HR``.
        value: Finite number in ``unit``.
        unit: Unit spelling (see :mod:`streams.core.units`), for example ``/min``.
    """

    code: Code
    value: FiniteFloat
    unit: Unit


class _InputEvent(_Record):
    event_id: Identifier
    patient_id: PatientId
    event_time: UtcDatetime
    source: Identifier


class ObservationEvent(_InputEvent):
    """Vitals or labs measured at one time (topics ``vitals`` and ``labs``).

    Attributes:
        event_id: Unique id of this event, chosen by the producer (a UUID is fine).
        patient_id: Stay identifier; also the Kafka key.
        event_time: When the values were measured or sampled (UTC).
        source: Device or system that produced the event.
        observations: 1 to 256 observations, at most one per code.
    """

    observations: tuple[Observation, ...] = Field(min_length=1, max_length=MAX_OBSERVATIONS)

    @model_validator(mode="after")
    def _codes_unique(self) -> Self:
        codes = [observation.code for observation in self.observations]
        if len(set(codes)) != len(codes):
            raise ValueError("each code may appear at most once per event")
        return self


class AdtEvent(_InputEvent):
    """Admit, transfer, discharge or update, with the static descriptors known at the time.

    Descriptors are optional: ``None`` means not measured (``-1`` in PhysioNet data).

    Attributes:
        action: ``admit``, ``transfer``, ``discharge``, or ``update`` (the patient's
            information changed, HL7 ADT^A08: descriptors and care unit only).
        age_years: Age in years.
        sex: ``female``, ``male`` or ``other``.
        height_cm: Height in centimetres.
        weight_kg: Weight in kilograms.
        icu_type: Kind of ICU.
        care_unit: Care unit identifier (ward or bed), free text.
        hospital_admit_time: Hospital admission time (UTC), before or at ICU admission.
    """

    action: Literal["admit", "transfer", "discharge", "update"]
    age_years: FiniteFloat | None = None
    sex: Literal["female", "male", "other"] | None = None
    height_cm: FiniteFloat | None = None
    weight_kg: FiniteFloat | None = None
    icu_type: IcuType | None = None
    care_unit: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    hospital_admit_time: UtcDatetime | None = None


def _check_inline_size(value: bytes | None) -> bytes | None:
    if value is not None and len(value) > MAX_INLINE_IMAGE_BYTES:
        raise ValueError(f"inline_data exceeds {MAX_INLINE_IMAGE_BYTES} bytes")
    return value


class ImagingEvent(_InputEvent):
    """An imaging study is available (topic ``imaging``).

    Pixels travel by reference (``image_uri``) or, for small images, inline.

    Attributes:
        study_id: Study identifier (for example a DICOM Study Instance UID).
        modality: DICOM modality code, for example ``CR``, ``DX``, ``CT``, ``MR``, ``US``.
        image_uri: Where the pixels are: ``file:``, ``redis:``, ``s3:``, ``http(s):``.
        inline_data: The encoded image itself, at most 1 MiB (base64url on the wire).
        content_type: Media type of the pixels, for example ``application/dicom``.
        metadata: Study metadata (flat; at most 64 entries).
        dose_fraction: The acquisition's dose as a fraction of the site's full-dose
            protocol, in ``(0, 1]`` (for example CTDIvol over the full-dose CTDIvol); None
            when not declared. A CT study below the worker's denoising threshold is
            denoised before segmentation (docs/imaging-dose-registration.md).
    """

    study_id: Identifier
    modality: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2,3}$")]
    image_uri: (
        Annotated[
            str,
            StringConstraints(max_length=2048, pattern=r"^(file|redis|rediss|s3|https?)://\S+$"),
        ]
        | None
    ) = None
    inline_data: Annotated[bytes | None, AfterValidator(_check_inline_size)] = None
    content_type: Annotated[str, StringConstraints(pattern=r"^[a-z]+/[A-Za-z0-9.+-]+$")] | None = (
        None
    )
    metadata: dict[
        Annotated[str, StringConstraints(min_length=1, max_length=64)], FiniteFloat | str | bool
    ] = Field(default_factory=dict, max_length=64)
    dose_fraction: (
        Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0.0, le=1.0)] | None
    ) = None

    @model_validator(mode="after")
    def _has_pixels(self) -> Self:
        if self.image_uri is None and self.inline_data is None:
            raise ValueError("one of image_uri or inline_data is required")
        return self


InputEvent = ObservationEvent | AdtEvent | ImagingEvent

News2Parameter = Literal[
    "respiration_rate",
    "spo2",
    "air_or_oxygen",
    "systolic_bp",
    "pulse",
    "consciousness",
    "temperature",
]


class News2Score(_Frozen):
    """A NEWS2 score (Royal College of Physicians, 2017).

    Attributes:
        total: Aggregate score, 0-20.
        band: ``low`` (0-4), ``low_medium`` (a 3 in one parameter), ``medium`` (5-6),
            ``high`` (7+).
        parameters: Sub-score (0-3) of each parameter that was available.
        missing: Parameters that had no recent value (scored as absent).
        spo2_scale: SpO2 scale used, 1 or 2 (hypercapnic respiratory failure).
    """

    total: Annotated[int, Field(strict=True, ge=0, le=20)]
    band: Literal["low", "low_medium", "medium", "high"]
    parameters: dict[News2Parameter, Annotated[int, Field(strict=True, ge=0, le=3)]]
    missing: tuple[News2Parameter, ...] = ()
    spo2_scale: Literal[1, 2] = 1


class OffsetRange(_Frozen):
    """Inclusive range of Kafka offsets of one partition that a score consumed."""

    topic: Annotated[str, StringConstraints(min_length=1, max_length=249)]
    partition: Annotated[int, Field(strict=True, ge=0)]
    first_offset: Annotated[int, Field(strict=True, ge=0)]
    last_offset: Annotated[int, Field(strict=True, ge=0)]

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.last_offset < self.first_offset:
            raise ValueError("last_offset must be >= first_offset")
        return self


class Provenance(_Frozen):
    """What produced a score and which inputs it saw.

    Attributes:
        code_version: Version of the Vigil code (package version or git describe).
        event_ids: ``event_id`` of the input events in the state (at most 1024).
        offsets: Kafka offset ranges consumed (at most 64).
    """

    code_version: Version
    event_ids: tuple[Identifier, ...] = Field(default=(), max_length=1024)
    offsets: tuple[OffsetRange, ...] = Field(default=(), max_length=64)


class OodRecord(_Frozen):
    """The out-of-distribution detector's verdict on the scored input.

    Attributes:
        flagged: True when the input lies outside the training distribution; the alert
            policy then defers instead of alerting (``deferred_for_review``).
        distance: The detector's score (model ``ood`` output ``distance``).
        threshold: The score above which the detector flags.
        channels: The detector's channels that fired: ``representation`` (the model's
            fused features) and/or ``input`` (window statistics); empty when none did.
    """

    flagged: bool
    distance: FiniteFloat
    threshold: FiniteFloat | None = None
    channels: tuple[Literal["representation", "input"], ...] = ()


class ImagingReference(_Frozen):
    """An imaging study that a score or alert took into account.

    Attributes:
        study_id: The study.
        finding_id: Its finding on ``findings``.
        event_time: When the study was taken (UTC).
        class_probability: The imaging model's abnormality probability, 0-1.
        heatmap_uri: Where its CAM heatmap artifact is stored.
    """

    study_id: Identifier
    finding_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    event_time: UtcDatetime
    class_probability: Probability
    heatmap_uri: Annotated[str, StringConstraints(max_length=2048)] | None = None


class DenoisingNote(_Frozen):
    """Whether and how a study was denoised before segmentation.

    Attributes:
        applied: True when the segmentation read the denoised image.
        reason: Why (``low_dose``) or why not (``dose_not_declared``, ``full_dose``,
            ``not_ct``, ``denoiser_off``, ``denoiser_failed``).
        dose_fraction: The declared dose fraction, if any.
        model: Denoiser model name, when applied.
        model_version: Its version, when applied.
    """

    applied: bool
    reason: Label
    dose_fraction: (
        Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0.0, le=1.0)] | None
    ) = None
    model: Version | None = None
    model_version: Version | None = None


class RegistrationNote(_Frozen):
    """How the study compares with the patient's prior study of the same modality.

    The prior is registered to the new study by a diffeomorphic transform (stationary
    velocity field, scaling and squaring); its lesion mask is carried into the new frame.

    Attributes:
        prior_study_id: The prior study.
        prior_event_time: When it was taken (UTC).
        prior_lesion_area_fraction: Its lesion area, fraction of the image.
        warped_prior_lesion_area_fraction: The same lesion carried into the new frame
            (bilinear warp summed, not thresholded: boundary pixels count in part).
        lesion_area_change_fraction: The change in the prior's lesion area since the
            prior that the deformation implies: warped prior area minus prior area
            (fraction of the image; positive = growth). Registration-based, so a lesion
            that was not in the prior adds nothing here.
        segmented_area_change_fraction: The new study's segmented lesion area minus the
            prior's (fraction of the image): includes lesions that are new since the prior
            and any difference between the two segmentations. Its gap to
            ``lesion_area_change_fraction`` is the area the deformation does not explain.
        ncc_before: Normalised cross-correlation of the two images before registration.
        ncc_after: The same after warping the prior.
        folding_fraction: Pixels whose Jacobian determinant is not positive (0 when the
            transform is a diffeomorphism, checked on every pixel).
        min_jacobian: Smallest Jacobian determinant.
    """

    prior_study_id: Identifier
    prior_event_time: UtcDatetime
    prior_lesion_area_fraction: Probability
    warped_prior_lesion_area_fraction: Probability
    lesion_area_change_fraction: Annotated[
        float, Field(strict=True, allow_inf_nan=False, ge=-1.0, le=1.0)
    ]
    segmented_area_change_fraction: Annotated[
        float, Field(strict=True, allow_inf_nan=False, ge=-1.0, le=1.0)
    ]
    ncc_before: Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-1.0, le=1.0)]
    ncc_after: Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-1.0, le=1.0)]
    folding_fraction: Probability
    min_jacobian: FiniteFloat


class ScoreRecord(_Record):
    """A deterioration score for one patient at one state time (topic ``scores``).

    Attributes:
        patient_id: Stay identifier; also the Kafka key.
        event_time: Event time of the patient state that was scored (UTC).
        risk: Model probability of deterioration, 0-1; ``None`` when degraded.
        news2: NEWS2 score of the same state, ``None`` when it could not be computed.
        model: Model name.
        model_version: Model version.
        degraded: True when the model was not used (for example Triton unavailable).
        degraded_reason: Short reason when degraded, for example ``circuit_open``.
        provenance: Code version and inputs seen.
        processing_time: Wall-clock time the score was produced (UTC).
        ood: The out-of-distribution detector's verdict on the same input, when it was
            asked and answered.
        imaging: The imaging studies the model saw (most recent last).
    """

    patient_id: PatientId
    event_time: UtcDatetime
    risk: Probability | None
    news2: News2Score | None
    model: Version
    model_version: Version
    degraded: bool
    degraded_reason: Label | None = None
    provenance: Provenance
    processing_time: UtcDatetime
    ood: OodRecord | None = None
    imaging: tuple[ImagingReference, ...] = Field(default=(), max_length=16)

    @model_validator(mode="after")
    def _risk_or_degraded(self) -> Self:
        if self.risk is None and not self.degraded:
            raise ValueError("risk is required unless degraded")
        return self


AlertState = Literal[
    "open", "escalated", "deferred_for_review", "acknowledged", "snoozed", "resolved"
]
Severity = Literal["low", "medium", "high"]
AckAction = Literal["acknowledge", "snooze", "escalate", "resolve"]
AlertId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


class AlertRecord(_Record):
    """An alert state change for one patient (topic ``alerts``).

    Attributes:
        alert_id: Deterministic id (see :func:`make_alert_id`): every state change of one
            alert carries the same id, so consumers can upsert.
        patient_id: Stay identifier; also the Kafka key.
        event_time: Event time of the state that caused this change (UTC).
        kind: What fired, for example ``deterioration`` or ``news2``.
        severity: ``low``, ``medium`` or ``high``.
        state: ``open``, ``escalated``, ``deferred_for_review`` (the input was out of
            distribution, so the risk is not trusted; see ``reason`` and ``explanation``),
            ``acknowledged``, ``snoozed`` or ``resolved``.
        risk: Model risk at that time, 0-1, ``None`` when degraded.
        news2: NEWS2 at that time.
        reason: Machine-readable reason, for example ``risk_above_threshold``.
        explanation: Human-readable explanation (no patient identifiers).
        contributing: Codes or NEWS2 parameters that drove the alert.
        policy_version: Version of the alert policy.
        degraded: True when the alert was raised without the model.
        processing_time: Wall-clock time the record was produced (UTC).
        imaging: Imaging studies in the scored state, with their heatmap artifacts.
    """

    alert_id: AlertId
    patient_id: PatientId
    event_time: UtcDatetime
    kind: Label
    severity: Severity
    state: AlertState
    risk: Probability | None
    news2: News2Score | None
    reason: Label
    explanation: Text
    contributing: tuple[Annotated[str, StringConstraints(min_length=1, max_length=64)], ...] = (
        Field(default=(), max_length=32)
    )
    policy_version: Version
    degraded: bool
    processing_time: UtcDatetime
    imaging: tuple[ImagingReference, ...] = Field(default=(), max_length=16)


class ExplanationRecord(_Record):
    """The model's explanation of an alert change, after the alert (topic
    ``explanations``).

    An alert goes out as soon as its score exists, explained by its reason and NEWS2; the
    explain model's per-parameter contributions (several forwards of the model) follow
    here, keyed like the alert, so the explanation never delays an alert.

    Attributes:
        alert_id: The alert's id (as on ``alerts``).
        alert_state: The alert change explained (``open`` or ``escalated``).
        patient_id: Stay identifier; also the Kafka key.
        event_time: Event time of the alert change (UTC).
        model: The explaining model, for example ``deterioration_explain``.
        model_version: Its version.
        contributing: The parameters that raised the risk most, largest first.
        contributions: Each contributing parameter's change of the calibrated log-odds
            when its window is hidden (positive: it raised the risk).
        explanation: Human-readable explanation (no patient identifiers).
        processing_time: Wall-clock time the record was produced (UTC).
    """

    alert_id: AlertId
    alert_state: AlertState
    patient_id: PatientId
    event_time: UtcDatetime
    model: Label
    model_version: Version
    contributing: tuple[Annotated[str, StringConstraints(min_length=1, max_length=64)], ...] = (
        Field(default=(), max_length=32)
    )
    contributions: dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], float] = (
        Field(default_factory=dict, max_length=64)
    )
    explanation: Text
    processing_time: UtcDatetime


def make_alert_id(
    patient_id: str, kind: str, opened_time: datetime, *, policy_version: str | None = None
) -> str:
    """Return the deterministic id of the alert of ``kind`` opened at ``opened_time``.

    The id is the first 32 hex digits of a SHA-256, so it reveals no patient identifier.
    With ``policy_version`` the version is hashed too, so two policies never share ids.

    Raises:
        ValueError: ``opened_time`` is naive.
    """
    if opened_time.tzinfo is None:
        raise ValueError("opened_time must be timezone-aware")
    stamp = opened_time.astimezone(UTC).isoformat()
    parts = [patient_id, kind, stamp] + ([] if policy_version is None else [policy_version])
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


class AckEvent(_Record):
    """A clinician's action on an alert (topic ``acks``, keyed by ``patient_id``).

    ``user`` and ``reason`` are required fields; an empty one is rejected to dead-letter
    (``missing_user``, ``missing_reason``) when the action is applied.

    Attributes:
        ack_id: Unique id of this action, chosen by the producer (a retry reuses it).
        patient_id: Stay identifier; also the Kafka key.
        alert_id: The alert acted on.
        event_time: When the action was taken (UTC); snoozes are judged in event time.
        action: ``acknowledge``, ``snooze``, ``escalate`` or ``resolve``.
        user: Who acted (a staff identifier, never a patient's).
        reason: Why, free text.
        snooze_until: End of a snooze (UTC); required for ``snooze``, absent otherwise.
    """

    ack_id: Identifier
    patient_id: PatientId
    alert_id: AlertId
    event_time: UtcDatetime
    action: AckAction
    user: Annotated[str, StringConstraints(max_length=128)]
    reason: Text
    snooze_until: UtcDatetime | None = None

    @model_validator(mode="after")
    def _snooze_has_expiry(self) -> Self:
        if (self.action == "snooze") != (self.snooze_until is not None):
            raise ValueError("snooze_until is required for snooze and only for snooze")
        return self


class AuditRecord(_Record):
    """One alert state change or accepted action (topic ``audit``, keyed by patient).

    Attributes:
        audit_id: Deterministic id (alert, new state, event time, ack id): reprocessing
            yields the same id, so consumers can deduplicate.
        patient_id: Stay identifier; also the Kafka key.
        alert_id: The alert.
        event_time: Event time of the change (the score's or the action's).
        actor: ``policy`` (the alert policy) or ``user`` (an action from ``acks``).
        user: Who acted, for ``actor == "user"``.
        state: The alert's state after the change.
        action: The action, for ``actor == "user"``.
        ack_id: The action's id, for ``actor == "user"``.
        severity: Severity after the change.
        reason: Machine-readable reason, for example ``snooze_expired``.
        detail: The user's reason, or the policy's explanation.
        snooze_until: End of the snooze, for a snooze.
        policy_version: Version of the alert policy.
        processing_time: Wall-clock time the record was produced (UTC).
    """

    audit_id: AlertId
    patient_id: PatientId
    alert_id: AlertId
    event_time: UtcDatetime
    actor: Literal["policy", "user"]
    user: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    state: AlertState
    action: AckAction | None = None
    ack_id: Identifier | None = None
    severity: Severity
    reason: Label
    detail: Text = ""
    snooze_until: UtcDatetime | None = None
    policy_version: Version
    processing_time: UtcDatetime


def make_audit_id(alert_id: str, state: str, event_time: datetime, ack_id: str | None) -> str:
    """Return the deterministic id of an audit record (32 hex digits of a SHA-256).

    Raises:
        ValueError: ``event_time`` is naive.
    """
    if event_time.tzinfo is None:
        raise ValueError("event_time must be timezone-aware")
    stamp = event_time.astimezone(UTC).isoformat()
    text = "\x1f".join([alert_id, state, stamp, ack_id or ""])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class DeadLetterRecord(_Record):
    """An input record that failed validation (topic ``deadletter``).

    Attributes:
        reason: Why it failed (bounded set).
        detail: Human-readable detail, without field values.
        payload: The original bytes, as UTF-8 text or base64url (see ``payload_encoding``),
            truncated to the first ``max_payload_bytes`` of the original.
        payload_encoding: ``utf-8`` or ``base64url``.
        payload_size_bytes: Size of the original payload in bytes.
        payload_truncated: True when ``payload`` holds only a prefix of the original.
        source_topic: Topic the record was read from.
        partition: Kafka partition, ``None`` when not read from Kafka.
        offset: Kafka offset, ``None`` when not read from Kafka.
        key: Kafka key as text or base64url (see ``key_encoding``); ``None`` if absent.
        key_encoding: ``utf-8`` or ``base64url``.
        received_time: Wall-clock time the record was received (UTC).
    """

    reason: DeadLetterReason
    detail: Text
    payload: str
    payload_encoding: Literal["utf-8", "base64url"]
    payload_size_bytes: Annotated[int, Field(strict=True, ge=0)]
    payload_truncated: bool
    source_topic: Annotated[str, StringConstraints(min_length=1, max_length=249)]
    partition: Annotated[int, Field(strict=True, ge=0)] | None
    offset: Annotated[int, Field(strict=True, ge=0)] | None
    key: str | None
    key_encoding: Literal["utf-8", "base64url"] = "utf-8"
    received_time: UtcDatetime


class FindingRecord(_Record):
    """What the imaging model read in one study (topic ``findings``, keyed by patient).

    Attributes:
        finding_id: Deterministic id (patient, study, event, model version; see
            :func:`make_finding_id`): reprocessing a study yields the same id.
        patient_id: Stay identifier; also the Kafka key.
        study_id: The study.
        event_id: The ``imaging`` event that announced it.
        event_time: When the study was taken (UTC).
        modality: DICOM modality code of the study.
        model: Imaging model name.
        model_version: Imaging model version.
        class_probability: Probability that an abnormality (lesion, pneumonia) is present.
        lesion_count: Connected lesion regions in the predicted mask at ``mask_threshold``
            whose highest probability reaches ``lesion_peak_threshold``.
        lesion_area_fraction: Fraction of the image's pixels inside a predicted lesion.
        mask_threshold: The model's lesion operating point (chosen for lesion recall).
        lesion_peak_threshold: A region is a lesion only when its highest probability
            reaches this (cuts false-positive regions; 0 keeps every region).
        heatmap_uri: Where the CAM heatmap (PNG) is stored; None if it could not be.
        image_shape: Height and width of the image as read, before resizing.
        provenance: Code version and the event read.
        processing_time: Wall-clock time the record was produced (UTC).
        denoising: Whether and how the image was denoised before segmentation.
        registration: Comparison with the prior study of the same modality, when the
            patient has one.
    """

    finding_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    patient_id: PatientId
    study_id: Identifier
    event_id: Identifier
    event_time: UtcDatetime
    modality: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2,3}$")]
    model: Version
    model_version: Version
    class_probability: Probability
    lesion_count: Annotated[int, Field(strict=True, ge=0)]
    lesion_area_fraction: Probability
    mask_threshold: Probability
    lesion_peak_threshold: Probability = 0.0
    heatmap_uri: Annotated[str, StringConstraints(max_length=2048)] | None = None
    image_shape: tuple[Annotated[int, Field(strict=True, ge=1)], ...] = Field(max_length=3)
    provenance: Provenance
    processing_time: UtcDatetime
    denoising: DenoisingNote | None = None
    registration: RegistrationNote | None = None


def make_finding_id(patient_id: str, study_id: str, event_id: str, model_version: str) -> str:
    """Return the deterministic id of a study's finding (32 hex digits of a SHA-256, which
    reveal no patient identifier)."""
    parts = [patient_id, study_id, event_id, model_version]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
