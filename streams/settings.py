"""Settings of the Vigil worker (``vigil worker``): one frozen class, env prefix ``VIGIL_``."""

from __future__ import annotations

import hashlib
import os
import socket
from datetime import timedelta
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, FilePath, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["WorkerSettings"]


class WorkerSettings(BaseSettings):
    """Everything the streaming worker needs, read from ``VIGIL_*`` environment variables.

    Durations are given in seconds (``*_seconds``) and exposed as ``timedelta`` properties.
    """

    # hide_input_in_errors: a validation error never echoes a value (it may be a secret).
    model_config = SettingsConfigDict(
        env_prefix="VIGIL_", frozen=True, extra="forbid", hide_input_in_errors=True
    )

    # --- Kafka -------------------------------------------------------------------------
    kafka_bootstrap: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: FilePath | None = Field(
        default=None, description="CA bundle (PEM) for the brokers; None = system CAs."
    )
    kafka_ssl_certfile: FilePath | None = Field(
        default=None, description="Client certificate (PEM) for mutual TLS."
    )
    kafka_ssl_keyfile: FilePath | None = Field(
        default=None, description="Private key (PEM) of the client certificate."
    )
    topic_prefix: str = Field(default="vigil", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    topic_partitions: int = Field(default=8, ge=1, le=1024)
    topic_replication: int = Field(default=1, ge=1, le=16)
    app_id: str = Field(default="vigil-worker", description="Consumer group and changelog prefix.")
    store: str = Field(
        default="memory://",
        pattern=r"^memory://$",
        description="Faust table store: memory:// only. The changelog is the durable copy; "
        "a persistent store would keep states the changelog never got (docs/worker.md, "
        "Processing guarantee).",
    )
    data_dir: str = Field(default=".vigil/worker", description="Faust data directory.")
    kafka_group_instance_id: str | None = Field(
        default=None,
        description="Static group membership id (one per worker, kept across restarts): a "
        "restarted worker takes its partitions back at once instead of waiting for the "
        "group to time its old session out (docs/reliability.md). Empty: derived from the "
        "host name and the data directory, which are stable across restarts and differ "
        "between workers of one host (see kafka_static_membership).",
    )
    kafka_static_membership: bool = Field(
        default=True,
        description="Join the consumer group as a static member (KIP-345) under "
        "kafka_group_instance_id or its derived default; false joins as a dynamic member.",
    )
    kafka_session_timeout_seconds: float = Field(
        default=10.0,
        ge=6,
        le=1800,
        description="How long Kafka waits for a silent worker before giving its "
        "partitions to the others (heartbeats every 3 s from their own task; a batch "
        "yields to it at least every few hundred records).",
    )
    recovery_stall_seconds: float = Field(
        default=20.0,
        gt=0,
        le=3600,
        description="Table recovery: seconds without a record on an active changelog "
        "partition that has records left before the worker resumes and seeks it again "
        "(streams/adapters/faust_recovery.py, the recovery watchdog).",
    )
    recovery_stall_kicks: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Table recovery: attempts in a row to restart stalled changelog "
        "partitions (each answered by the broker, with no record from any active partition "
        "in between) before the worker stops, so that a fresh member takes its partitions.",
    )
    kafka_admin_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="How long an admin call (topic creation and checks, the consumer-lag "
        "monitor) waits to reach the cluster and for each answer. An unreachable broker, "
        "a wrong password or a TLS mismatch fails after this long (kafka-python's own "
        "default is 30 s).",
    )

    kafka_producer_batch_bytes: int = Field(
        default=256 * 1024,
        ge=16 * 1024,
        le=16 * 1024 * 1024,
        description="Largest producer batch per partition, bytes (outputs and changelog).",
    )
    kafka_producer_linger_ms: int = Field(
        default=2,
        ge=0,
        le=1000,
        description="How long the producer waits to fill a batch, ms.",
    )

    # --- Redis -------------------------------------------------------------------------
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="redis:// or rediss:// (TLS); credentials go in redis_username/password.",
    )
    redis_username: str | None = Field(default=None, description="Redis ACL user.")
    redis_password: SecretStr | None = None
    redis_ssl_cafile: FilePath | None = Field(
        default=None, description="CA bundle (PEM) for a rediss:// URL; None = system CAs."
    )
    redis_ttl_seconds: int = Field(default=6 * 3600, ge=60, description="TTL of per-patient keys.")

    # --- Triton ------------------------------------------------------------------------
    triton_url: str = Field(default="127.0.0.1:8001", description="Triton gRPC host:port.")
    triton_ssl: bool = Field(default=False, description="Reach Triton's gRPC over TLS.")
    triton_ssl_cafile: FilePath | None = Field(default=None, description="CA bundle (PEM).")
    triton_ssl_certfile: FilePath | None = Field(
        default=None, description="Client certificate (PEM) for mutual TLS."
    )
    triton_ssl_keyfile: FilePath | None = Field(
        default=None, description="Private key (PEM) of the client certificate."
    )
    triton_auth_token: SecretStr | None = Field(
        default=None,
        description="Sent as 'authorization: Bearer <token>' on every Triton request "
        "(for a gateway in front of Triton; Triton itself does not check it).",
    )
    triton_model: str = Field(
        default="deterioration",
        description="Window scoring model: scores when no step model is set, and until the "
        "step model's version is read from Triton.",
    )
    triton_step_model: str | None = Field(
        default="deterioration_step",
        description="Step (incremental) deterioration model: each score advances the "
        "patient's stored model state through the hour bins that closed since its last "
        "score instead of re-reading the whole window, and the same call gives the OOD "
        "verdict (docs/worker.md, 'Step scoring'). Empty: score with the window model "
        "(then set VIGIL_ALERT_ARM_SCORES=2 and VIGIL_ALERT_ARM_HOURS=1, its operating "
        "point, docs/alerting.md).",
    )
    step_commit_delay_hours: float = Field(
        default=1.0,
        ge=0,
        le=6,
        description="A closed hour bin is folded into the step model's stored state only once "
        "it ended this long (event time) before the scoring time; newer closed bins run "
        "provisionally, so a record of another input stream that arrives a little late "
        "still counts (docs/worker.md, 'Step scoring'). Each hour adds one bin to every "
        "step request (+23 % model compute for the first hour, BENCHMARKS.md).",
    )
    triton_step_explain_model: str | None = Field(
        default="deterioration_step_explain",
        description="Explains alerts of step-model scores (occlusion of the step model over "
        "the window); empty: they are explained by the window model's explain model.",
    )
    triton_ood_model: str | None = Field(
        default="ood",
        description="Out-of-distribution model asked alongside the scoring model, so that "
        "an out-of-distribution input yields a deferred_for_review alert instead of a "
        "confident one (docs/ood.md); empty switches it off (about doubles the Triton work "
        "per score).",
    )
    triton_explain_model: str = Field(
        default="deterioration_explain", description="Model giving alert explanations."
    )
    triton_imaging_model: str | None = Field(
        default="imaging",
        description="Imaging model (segmentation, abnormality, embedding, CAM) asked for "
        "each study on the imaging topic; empty: studies are not analysed and only count "
        "as inputs of the patient's state.",
    )
    triton_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Deadline of one Triton request. It guards against a hung server (a "
        "refused or unreachable one fails at once); a batch of 64 takes 0.3-2 s on a loaded "
        "2-core CPU (BENCHMARKS.md), so a tight deadline turns load into degraded scores.",
    )
    triton_retries: int = Field(default=2, ge=0, le=10)
    breaker_failures: int = Field(default=3, ge=1, description="Failures that open the breaker.")
    breaker_reset_seconds: float = Field(default=10.0, gt=0, description="Open-state cool-down.")
    batch_max_size: int = Field(
        default=64, ge=1, le=1024, description="Patients per Triton request (rows)."
    )
    step_batch_max_size: int = Field(
        default=256,
        ge=1,
        le=1024,
        description="Patients per request to the step model (rows): one row costs it "
        "microseconds, so a batch's scores go in a few large requests.",
    )
    batch_max_records: int = Field(
        default=2000,
        ge=1,
        le=100_000,
        description="Input records per batch: a batch is decoded, applied, scored (one "
        "model call per model), written and acknowledged as one unit (docs/worker.md).",
    )
    batch_max_ms: float = Field(
        default=20.0,
        ge=0,
        le=5000,
        description="Longest wait to fill a batch once its first record is there, in ms.",
    )
    batch_max_ms_behind: float = Field(
        default=250.0,
        ge=0,
        le=5000,
        description="The same wait while the worker is behind (its input partitions hold "
        "at least VIGIL_BATCH_MAX_RECORDS records it has not taken yet): larger batches "
        "share their per-batch work (one state write per patient, one model request per "
        "model) among more records, so a backlog drains faster (docs/worker.md, 'Batches').",
    )
    input_event_time_order: bool = Field(
        default=True,
        description="Apply the records of each partition number in event-time order across "
        "the input topics, each topic partition in offset order (streams/core/ordering.py); "
        "False applies them in arrival order.",
    )
    input_order_idle_seconds: float = Field(
        default=60.0,
        ge=0,
        le=600,
        description="An input topic partition silent this long no longer holds the others "
        "back (seconds, wall clock).",
    )
    input_order_max_held: int = Field(
        default=20_000,
        ge=1,
        le=1_000_000,
        description="Records held for ordering per partition number before the earliest is "
        "released regardless.",
    )
    batch_max_wait_ms: int = Field(
        default=2,
        ge=0,
        le=5000,
        description="Longest wait, in milliseconds, to fill a Triton request once the "
        "first row is queued. A batch of input records queues all its rows at once, so "
        "a longer wait only delays its answers (20 ms before 5 Dec: 20 ms of every "
        "event's latency per model call).",
    )

    # --- Imaging studies (streams/adapters/image_source.py) ----------------------------
    imaging_file_root: str = Field(
        default=".vigil/imaging",
        description="Directory that file: image URIs must resolve inside (others are refused).",
    )
    imaging_max_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="Largest study read, in bytes."
    )
    imaging_http_hosts: tuple[str, ...] = Field(
        default=(), description="Hosts trusted for http(s): image URIs (JSON list)."
    )
    imaging_fetch_timeout_seconds: float = Field(default=5.0, gt=0)
    artifact_dir: str = Field(
        default=".vigil/artifacts/heatmaps",
        description="Where CAM heatmaps (PNG, named by finding id) are stored.",
    )
    triton_denoise_model: str | None = Field(
        default="ct_denoise",
        description="CT denoiser asked for CT studies whose declared dose_fraction is below "
        "denoise_below_dose_fraction, before segmentation; empty switches it off "
        "(docs/imaging-dose-registration.md).",
    )
    denoise_below_dose_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="CT studies declaring a dose fraction below this are denoised.",
    )
    registration_iterations: int = Field(
        default=0,
        ge=0,
        le=2000,
        description="Optimiser steps of the registration of each study to the patient's "
        "prior study of the same modality (200, over 3 coarse-to-fine levels, is the "
        "setting chosen in docs/imaging-dose-registration.md); 0, the default, switches "
        "registration off: at 100 steps on one level it added 0.9-4 s per study, 200 "
        "steps on 3 levels cost about twice the CPU, and the batch holding the study "
        "waits for it (BENCHMARKS.md, issue 19).",
    )
    prior_dir: str | None = Field(
        default=None,
        description="Where each patient's latest study per modality is kept for registration "
        "(files named by a hash, no patient identifier); default: artifact_dir/priors.",
    )

    # --- Event time --------------------------------------------------------------------
    window_hours: int = Field(default=48, ge=1, le=24 * 14)
    score_interval_seconds: int = Field(
        default=1800, ge=0, description="Re-score a patient at most once per this event time."
    )
    lateness_seconds: int = Field(default=2 * 3600, ge=0, description="Out-of-order bound.")
    max_future_seconds: int = Field(default=300, ge=0, description="Allowed clock skew ahead.")
    silence_expiry_hours: int = Field(default=24, ge=1, description="Expire silent patients.")
    max_event_bytes: int = Field(default=256 * 1024, ge=1024)
    news2_max_age_hours: float = Field(default=6.0, gt=0, description="NEWS2 stale cut-off.")

    # --- Alerting (first policy; see docs/alerts.md) -----------------------------------
    # Operating point fitted on the validation split (docs/alerting.md).
    alert_arm_risk: float = Field(default=0.2, gt=0, lt=1)
    alert_disarm_risk: float = Field(default=0.1, gt=0, lt=1)
    # Arming persistence: the step model's point (3 scores over 2 h); the window model's
    # is 2 scores over 1 h (docs/alerting.md, "Operating point of the step model").
    alert_arm_scores: int = Field(default=3, ge=1, description="Scores at/above arm to open.")
    alert_arm_hours: float = Field(
        default=2.0, ge=0, description="Event time the arming run lasts."
    )
    alert_disarm_scores: int = Field(
        default=2, ge=1, description="Scores at/below disarm to resolve."
    )
    alert_disarm_hours: float = Field(default=1.0, ge=0)
    alert_realert_margin: float = Field(default=0.15, ge=0, le=1)
    alert_max_snooze_hours: float = Field(default=4.0, gt=0)
    alert_refractory_hours: float = Field(default=6.0, ge=0)
    alert_news2_threshold: int = Field(default=7, ge=2, le=20, description="Degraded-mode alert.")
    alert_defer_scores: int = Field(
        default=2, ge=1, description="Consecutive OOD-flagged scores to open a deferral."
    )
    alert_defer_hours: float = Field(
        default=1.0, ge=0, description="Event time that OOD-flagged run must last."
    )

    # --- Observability -----------------------------------------------------------------
    metrics_host: str = Field(default="127.0.0.1")
    metrics_port: int = Field(default=9108, ge=0, le=65535, description="0 disables /metrics.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _check_security(self) -> Self:
        """Reject setting combinations that would silently connect less securely."""
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and self.kafka_sasl_mechanism is None:
            raise ValueError(
                f"VIGIL_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "VIGIL_KAFKA_SASL_MECHANISM"
            )
        if not sasl and (
            self.kafka_sasl_mechanism is not None
            or self.kafka_sasl_username is not None
            or self.kafka_sasl_password is not None
        ):
            raise ValueError(
                "VIGIL_KAFKA_SASL_* is set but VIGIL_KAFKA_SECURITY_PROTOCOL="
                f"{self.kafka_security_protocol}: use SASL_SSL (or SASL_PLAINTEXT)"
            )
        if sasl and (not self.kafka_sasl_username or self.kafka_sasl_password is None):
            raise ValueError(
                f"VIGIL_KAFKA_SASL_MECHANISM={self.kafka_sasl_mechanism} needs "
                "VIGIL_KAFKA_SASL_USERNAME and VIGIL_KAFKA_SASL_PASSWORD"
            )
        kafka_files = (self.kafka_ssl_cafile, self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        if not self.kafka_security_protocol.endswith("SSL") and any(kafka_files):
            raise ValueError(
                "VIGIL_KAFKA_SSL_* is set but VIGIL_KAFKA_SECURITY_PROTOCOL="
                f"{self.kafka_security_protocol}: use SSL or SASL_SSL"
            )
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            raise ValueError("VIGIL_KAFKA_SSL_KEYFILE needs VIGIL_KAFKA_SSL_CERTFILE")
        url = urlsplit(self.redis_url)
        if url.scheme not in ("redis", "rediss"):
            raise ValueError("VIGIL_REDIS_URL must start with redis:// or rediss://")
        if url.password is not None or url.username is not None:
            raise ValueError(
                "VIGIL_REDIS_URL must not hold credentials: set VIGIL_REDIS_USERNAME and "
                "VIGIL_REDIS_PASSWORD"
            )
        if self.redis_ssl_cafile is not None and url.scheme != "rediss":
            raise ValueError("VIGIL_REDIS_SSL_CAFILE needs a rediss:// VIGIL_REDIS_URL")
        if self.redis_username is not None and self.redis_password is None:
            raise ValueError("VIGIL_REDIS_USERNAME needs VIGIL_REDIS_PASSWORD")
        triton_files = (self.triton_ssl_cafile, self.triton_ssl_certfile, self.triton_ssl_keyfile)
        if not self.triton_ssl and any(triton_files):
            raise ValueError("VIGIL_TRITON_SSL_* files are set but VIGIL_TRITON_SSL is false")
        if (self.triton_ssl_certfile is None) != (self.triton_ssl_keyfile is None):
            raise ValueError("VIGIL_TRITON_SSL_CERTFILE and VIGIL_TRITON_SSL_KEYFILE go together")
        return self

    @property
    def group_instance_id(self) -> str | None:
        """The static group membership id this worker joins with, or None (dynamic)."""
        if not self.kafka_static_membership:
            return None
        if self.kafka_group_instance_id:
            return self.kafka_group_instance_id
        where = os.path.abspath(self.data_dir).encode()
        digest = hashlib.sha256(where).hexdigest()[:10]
        return f"{self.app_id}-{socket.gethostname()}-{digest}"

    def topic(self, suffix: str) -> str:
        """Full topic name for a suffix such as ``"vitals"``."""
        return f"{self.topic_prefix}.{suffix}"

    @property
    def window(self) -> timedelta:
        """Feature window."""
        return timedelta(hours=self.window_hours)

    @property
    def score_interval(self) -> timedelta:
        """Minimum event time between two scores of one patient."""
        return timedelta(seconds=self.score_interval_seconds)

    @property
    def lateness(self) -> timedelta:
        """How far behind a patient's latest event time an event may arrive."""
        return timedelta(seconds=self.lateness_seconds)

    @property
    def max_future(self) -> timedelta:
        """How far ahead of the wall clock an event time may be."""
        return timedelta(seconds=self.max_future_seconds)

    @property
    def silence_expiry(self) -> timedelta:
        """Event-time silence after which a patient's state is dropped."""
        return timedelta(hours=self.silence_expiry_hours)
