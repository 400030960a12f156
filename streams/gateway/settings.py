"""Settings of ``vigil gateway``: one frozen class, environment prefix ``VIGIL_GATEWAY_``.

Both listeners bind to loopback by default. Bound anywhere else, the gateway refuses to
start unless the listener is protected: MLLP (which has no credentials of its own) needs
TLS with client certificates (mutual TLS), HTTP needs TLS and a bearer token or client
certificates. Secrets are ``SecretStr`` and never echoed in errors.
"""

from __future__ import annotations

import ipaddress
from datetime import tzinfo
from pathlib import Path
from typing import Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.gateway.codemap import load_code_map
from streams.gateway.hl7_map import MappingOptions

__all__ = ["GatewaySettings", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GatewaySettings(BaseSettings):
    """Everything ``vigil gateway`` needs, read from ``VIGIL_GATEWAY_*`` variables."""

    model_config = SettingsConfigDict(
        env_prefix="VIGIL_GATEWAY_", frozen=True, extra="forbid", hide_input_in_errors=True
    )

    # --- Listeners ---------------------------------------------------------------------
    mllp_host: str = Field(default="127.0.0.1", description="Address MLLP listens on.")
    mllp_port: int = Field(default=2575, ge=1, le=65535, description="MLLP port (HL7 v2).")
    http_host: str = Field(default="127.0.0.1", description="Address HTTP listens on.")
    http_port: int = Field(
        default=8090, ge=1, le=65535, description="HTTP port: /health, /metrics, FHIR."
    )
    fhir_base: str = Field(default="/fhir", pattern=r"^/[A-Za-z0-9/_-]*[A-Za-z0-9_-]$")
    max_connections: int = Field(
        default=64, ge=1, le=10_000, description="Open MLLP connections; more are closed."
    )
    max_message_bytes: int = Field(
        default=524_288,
        ge=1024,
        le=524_288,
        description="Largest HL7 message or FHIR body, bytes: its dead-letter record (base64 "
        "at worst, 4/3 of it) must stay under Kafka's default 1 MB record limit.",
    )
    frame_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="A frame must arrive whole within this time of its start byte; a "
        "slower one (slow-loris) is dropped and the connection closed.",
    )
    idle_timeout_seconds: float = Field(
        default=300.0, gt=0, le=86_400, description="Close an MLLP connection idle this long."
    )
    mllp_max_in_flight: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="Messages of one MLLP connection handled at once when its sender "
        "pipelines (sends before the previous ACK came); ACKs still go out in order.",
    )

    # --- Security ----------------------------------------------------------------------
    tls_certfile: FilePath | None = Field(
        default=None, description="Server certificate (PEM): both listeners speak TLS."
    )
    tls_keyfile: FilePath | None = Field(default=None, description="Its private key (PEM).")
    tls_client_cafile: FilePath | None = Field(
        default=None, description="CA (PEM) of client certificates: mutual TLS, required."
    )
    auth_token: SecretStr | None = Field(
        default=None,
        description="Bearer token every HTTP request except /health must carry.",
    )

    # --- Kafka -------------------------------------------------------------------------
    kafka_bootstrap: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: FilePath | None = None
    kafka_ssl_certfile: FilePath | None = None
    kafka_ssl_keyfile: FilePath | None = None
    topic_prefix: str = Field(default="vigil", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    kafka_delivery_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="A message whose events Kafka has not acknowledged in this time is "
        "answered AR (the sender resends; the duplicate is dropped by event id).",
    )
    kafka_linger_ms: int = Field(default=1, ge=0, le=1000)
    kafka_retry_seconds: float = Field(
        default=2.0, gt=0, le=60, description="Pause between tries to reach Kafka."
    )
    deadletter_max_payload_bytes: int = Field(
        default=524_288,
        ge=1024,
        le=524_288,
        description="Bytes of a refused message kept in its dead-letter record (all of it "
        "up to max_message_bytes).",
    )

    # --- Redis (FHIR out reads the worker's cache) ---------------------------------------
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        pattern=r"^rediss?://[^@]*$",
        description="redis:// or rediss:// without credentials (see redis_password).",
    )
    redis_username: str | None = None
    redis_password: SecretStr | None = None

    history_hours: float = Field(
        default=24.0,
        ge=0,
        le=24 * 14,
        description="RiskAssessment history: scores of the last this many hours (Kafka time) "
        "read from the scores topic at start, then followed; 0 serves Redis's latest only.",
    )
    history_max_patients: int = Field(default=10_000, ge=1, le=1_000_000)
    history_per_patient: int = Field(default=96, ge=1, le=10_000)

    # --- HL7 v2 mapping ----------------------------------------------------------------
    code_map_file: FilePath | None = Field(
        default=None, description="JSON table of local OBX codes (docs/gateway.md)."
    )
    naive_time_zone: str | None = Field(
        default=None,
        description="IANA zone of HL7 timestamps without an offset (e.g. Europe/London); "
        "empty: such a timestamp is refused (AE).",
    )
    unknown_codes: Literal["reject", "skip"] = Field(
        default="reject",
        description="An OBX whose code neither LOINC nor the table knows: reject the "
        "message (AE, dead-letter) or skip that OBX (counted).",
    )
    patient_id_field: Literal["PID-3", "PV1-19"] = Field(
        default="PID-3", description="Patient id: PID-3's first identifier, or PV1-19."
    )
    source: str = Field(
        default="hl7-gateway",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$",
        description="The source of events from HL7 v2.",
    )
    fhir_source: str = Field(
        default="fhir-gateway",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$",
        description="The source of events from FHIR.",
    )
    application: str = Field(default="VIGIL", max_length=64, description="MSH-3 of ACKs.")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("naive_time_zone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not a known IANA time zone") from None
        return value

    @model_validator(mode="after")
    def _check_security(self) -> Self:
        """Refuse an unprotected listener off loopback, and half-configured TLS."""
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("VIGIL_GATEWAY_TLS_CERTFILE and _TLS_KEYFILE go together")
        if self.tls_client_cafile is not None and self.tls_certfile is None:
            raise ValueError("VIGIL_GATEWAY_TLS_CLIENT_CAFILE needs VIGIL_GATEWAY_TLS_CERTFILE")
        mutual = self.tls_client_cafile is not None
        if not is_loopback(self.mllp_host) and not mutual:
            raise ValueError(
                "MLLP bound off loopback needs mutual TLS: set VIGIL_GATEWAY_TLS_CERTFILE, "
                "_TLS_KEYFILE and _TLS_CLIENT_CAFILE"
            )
        tls = self.tls_certfile is not None
        if not is_loopback(self.http_host) and not (tls and (mutual or self.auth_token)):
            raise ValueError(
                "HTTP bound off loopback needs TLS and VIGIL_GATEWAY_AUTH_TOKEN "
                "(or client certificates)"
            )
        kafka_files = (self.kafka_ssl_cafile, self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        if not self.kafka_security_protocol.endswith("SSL") and any(kafka_files):
            raise ValueError(
                "VIGIL_GATEWAY_KAFKA_SSL_* needs _KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL"
            )
        sasl = self.kafka_security_protocol.startswith("SASL_")
        credentials = (self.kafka_sasl_mechanism, self.kafka_sasl_username)
        if sasl and (None in credentials or self.kafka_sasl_password is None):
            raise ValueError(
                f"VIGIL_GATEWAY_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "_KAFKA_SASL_MECHANISM, _KAFKA_SASL_USERNAME and _KAFKA_SASL_PASSWORD"
            )
        if not sasl and (any(c is not None for c in credentials) or self.kafka_sasl_password):
            raise ValueError("VIGIL_GATEWAY_KAFKA_SASL_* needs a SASL_ security protocol")
        return self

    @property
    def zone(self) -> tzinfo | None:
        """Zone of naive HL7 timestamps, None to refuse them."""
        return None if self.naive_time_zone is None else ZoneInfo(self.naive_time_zone)

    def mapping_options(self) -> MappingOptions:
        """The HL7 mapping options these settings describe.

        Raises:
            ConfigError: The code map file is unreadable or invalid.
        """
        path: Path | None = self.code_map_file
        return MappingOptions(
            codes=load_code_map(path),
            max_message_bytes=self.max_message_bytes,
            naive_time_zone=self.zone,
            unknown_codes=self.unknown_codes,
            patient_id_field=self.patient_id_field,
            source=self.source,
        )

    def topic(self, kind: str) -> str:
        """Full topic name of a kind such as ``vitals``."""
        return f"{self.topic_prefix}.{kind}"
