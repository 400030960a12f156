"""Settings of the local stack (``vigil stack``): ports, directories, versions."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["KAFKA_VERSION", "StackSettings"]

#: The Apache Kafka release run locally. 3.9 is the last 3.x line (KRaft, Java 17); Faust's
#: aiokafka client was verified against it here (see docs/stack.md).
KAFKA_VERSION = "3.9.1"


class StackSettings(BaseSettings):
    """Where and how ``vigil stack`` runs Kafka, Redis, Triton and Prometheus.

    Every field can be set from the environment with the ``VIGIL_STACK_`` prefix, for
    example ``VIGIL_STACK_KAFKA_PORT=19092``.
    """

    model_config = SettingsConfigDict(env_prefix="VIGIL_STACK_", frozen=True, extra="forbid")

    host: str = Field(default="127.0.0.1", description="Address every service binds to.")
    state_dir: Path = Field(
        default=Path(".vigil/stack"),
        description="Data, logs and pid files of the local services (git-ignored).",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "vigil",
        description="Downloaded service binaries (Kafka jars), shared by checkouts.",
    )
    triton_repo: Path = Field(default=Path("triton_repo"), description="Triton model repository.")
    prometheus_rules_dir: Path = Field(
        default=Path("deploy/prometheus/rules"), description="Prometheus rule files to load."
    )
    kafka_version: str = Field(default=KAFKA_VERSION)
    kafka_port: int = Field(default=9092, ge=1, le=65535)
    kafka_controller_port: int = Field(default=9093, ge=1, le=65535)
    kafka_heap_mb: int = Field(default=512, ge=128)
    redis_port: int = Field(default=6379, ge=1, le=65535)
    triton_http_port: int = Field(default=8000, ge=1, le=65535)
    triton_grpc_port: int = Field(default=8001, ge=1, le=65535)
    triton_metrics_port: int = Field(default=8002, ge=1, le=65535)
    prometheus_port: int = Field(default=9090, ge=1, le=65535)
    worker_metrics_ports: tuple[int, ...] = Field(
        default=(9108, 9109, 9110, 9111),
        description="Loopback ports where Prometheus looks for Vigil workers' /metrics.",
    )
    start_timeout_seconds: float = Field(default=180.0, gt=0)
    stop_timeout_seconds: float = Field(default=20.0, gt=0)
    install_missing: bool = Field(
        default=True,
        description="Install Redis/Prometheus with apt-get when missing and allowed (root).",
    )

    def resolved(self) -> StackSettings:
        """Return a copy with every relative directory made absolute (against the cwd)."""
        return self.model_copy(
            update={
                "state_dir": self.state_dir.resolve(),
                "cache_dir": self.cache_dir.expanduser().resolve(),
                "triton_repo": self.triton_repo.resolve(),
                "prometheus_rules_dir": self.prometheus_rules_dir.resolve(),
            }
        )

    @property
    def kafka_bootstrap(self) -> str:
        """Kafka bootstrap address, ``host:port``."""
        return f"{self.host}:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        """Redis URL for clients."""
        return f"redis://{self.host}:{self.redis_port}/0"

    @property
    def triton_http_url(self) -> str:
        """Triton HTTP address, ``host:port`` (the form tritonclient expects)."""
        return f"{self.host}:{self.triton_http_port}"

    @property
    def triton_grpc_url(self) -> str:
        """Triton gRPC address, ``host:port``."""
        return f"{self.host}:{self.triton_grpc_port}"

    @property
    def prometheus_url(self) -> str:
        """Prometheus base URL."""
        return f"http://{self.host}:{self.prometheus_port}"
