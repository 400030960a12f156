"""Settings of ``vigil console``: one frozen class, environment prefix ``VIGIL_CONSOLE_``.

The console binds to loopback by default. Bound anywhere else it refuses to start without
TLS (``tls_certfile``/``tls_keyfile``) and a fixed ``session_secret``. Kafka and Redis
connection security (TLS, SASL, Redis AUTH) is the worker's: the same ``VIGIL_KAFKA_*`` and
``VIGIL_REDIS_*`` variables (:mod:`streams.adapters.security`) apply to the console's clients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, FilePath, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.gateway.settings import is_loopback

__all__ = ["ConsoleSettings"]


class ConsoleSettings(BaseSettings):
    """Everything ``vigil console`` needs, read from ``VIGIL_CONSOLE_*`` variables."""

    model_config = SettingsConfigDict(
        env_prefix="VIGIL_CONSOLE_", frozen=True, extra="forbid", hide_input_in_errors=True
    )

    # --- Listener ----------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Address the console listens on.")
    port: int = Field(default=8088, ge=1, le=65535, description="HTTP(S) port.")
    tls_certfile: FilePath | None = Field(default=None, description="Server certificate (PEM).")
    tls_keyfile: FilePath | None = Field(default=None, description="Its private key (PEM).")

    # --- Sign-in -----------------------------------------------------------------------
    users_file: Path = Field(
        default=Path(".vigil/console/users.json"),
        description="Local users (argon2id password hashes, roles); `vigil console add-user`.",
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs session cookies; unset: a random key per start "
        "(sessions end at restart). Required off loopback.",
    )
    session_hours: float = Field(default=12.0, gt=0, le=24 * 7, description="Session lifetime.")
    max_failed_logins: int = Field(
        default=5, ge=1, le=1000, description="Failed sign-ins (per user or client) before lockout."
    )
    lockout_minutes: float = Field(default=15.0, gt=0, le=24 * 60, description="Lockout length.")
    audit_file: Path = Field(
        default=Path(".vigil/console/audit.jsonl"),
        description="The console's own audit trail (sign-in, sign-out, failures, actions).",
    )

    # --- OpenID Connect (optional) ----------------------------------------------------------
    oidc_issuer: str | None = Field(
        default=None,
        pattern=r"^https://\S+$",
        description="Issuer URL; its /.well-known/openid-configuration is read at sign-in.",
    )
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_redirect_uri: str | None = Field(
        default=None,
        pattern=r"^https?://\S+/auth/callback$",
        description="This console's callback URL as registered with the provider "
        "(…/auth/callback); unset: derived from the request.",
    )
    oidc_metadata_file: FilePath | None = Field(
        default=None,
        description="A local copy of the provider's discovery document (endpoints, JWKS "
        "URI): used instead of fetching it from the issuer.",
    )
    oidc_username_claim: str = Field(default="preferred_username", max_length=64)
    oidc_role_claim: str = Field(
        default="vigil_role",
        max_length=64,
        description="Claim holding viewer, clinician or admin (a string or a list).",
    )
    oidc_default_role: Literal["none", "viewer"] = Field(
        default="none",
        description="Role of an OIDC user whose token names none: none refuses the sign-in.",
    )

    # --- Kafka and Redis ------------------------------------------------------------------
    kafka_bootstrap: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap.")
    topic_prefix: str = Field(default="vigil", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    consumer_group: str = Field(
        default="vigil-console",
        pattern=r"^[A-Za-z0-9._-]{1,200}$",
        description="The console's own consumer group (it reads every partition; the group "
        "records its progress, so its lag can be watched).",
    )
    history_hours: float = Field(
        default=24.0,
        ge=0,
        le=24 * 14,
        description="At start, outputs of the last this many hours (Kafka time) are read "
        "back for the trends; then followed live.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        pattern=r"^rediss?://[^@]*$",
        description="The worker's Redis (latest score, open alerts) for the first board.",
    )
    artifact_dir: Path = Field(
        default=Path(".vigil/artifacts/heatmaps"),
        description="The worker's VIGIL_ARTIFACT_DIR: CAM heatmaps served from here only.",
    )
    imaging_file_root: Path = Field(
        default=Path(".vigil/imaging"),
        description="The worker's VIGIL_IMAGING_FILE_ROOT: images under the heatmaps are read "
        "from file: URIs inside it only.",
    )
    ack_clock: Literal["wall", "event"] = Field(
        default="wall",
        description="Time stamped on an action: wall (the clock; a live ward) or event (the "
        "patient's latest scored time; replays, where the worker's clock is replayed time).",
    )
    max_patients: int = Field(default=5000, ge=1, le=100_000, description="Board capacity.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _check_security(self) -> Self:
        """Refuse half-configured TLS or OIDC, and an unprotected listener off loopback."""
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("VIGIL_CONSOLE_TLS_CERTFILE and _TLS_KEYFILE go together")
        if not is_loopback(self.host) and (
            self.tls_certfile is None or self.session_secret is None
        ):
            raise ValueError(
                "the console bound off loopback needs TLS (VIGIL_CONSOLE_TLS_CERTFILE, "
                "_TLS_KEYFILE) and VIGIL_CONSOLE_SESSION_SECRET"
            )
        oidc = (self.oidc_issuer, self.oidc_client_id, self.oidc_client_secret)
        if any(v is not None for v in oidc) and None in oidc:
            raise ValueError(
                "OIDC needs VIGIL_CONSOLE_OIDC_ISSUER, _OIDC_CLIENT_ID and _OIDC_CLIENT_SECRET"
            )
        if self.session_secret is not None and len(self.session_secret.get_secret_value()) < 32:
            raise ValueError("VIGIL_CONSOLE_SESSION_SECRET must be at least 32 characters")
        return self

    @property
    def tls(self) -> bool:
        """True when the console speaks HTTPS (cookies are then ``Secure``)."""
        return self.tls_certfile is not None

    @property
    def oidc(self) -> bool:
        """True when OpenID Connect sign-in is configured."""
        return self.oidc_issuer is not None

    def topic(self, kind: str) -> str:
        """Full topic name of a kind such as ``alerts``."""
        return f"{self.topic_prefix}.{kind}"
