"""The four local services: how each is prepared, started and checked for health."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from abc import ABC, abstractmethod
from pathlib import Path

import httpx
import redis
import yaml
from kafka import KafkaAdminClient

from vigil.errors import StackError
from vigil.stack import provision
from vigil.stack.settings import StackSettings

__all__ = [
    "SERVICE_NAMES",
    "Kafka",
    "Prometheus",
    "Redis",
    "Service",
    "Triton",
    "make_services",
    "triton_argv",
    "triton_env",
]

SERVICE_NAMES = ("kafka", "redis", "triton", "prometheus")


class Service(ABC):
    """One local service. Subclasses say how to start it and how to tell it is healthy."""

    name: str

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.home = settings.state_dir / self.name

    @property
    @abstractmethod
    def address(self) -> str:
        """Where clients reach the service."""

    @property
    @abstractmethod
    def ports(self) -> tuple[int, ...]:
        """Every TCP port the service listens on."""

    @abstractmethod
    def argv(self) -> list[str]:
        """Prepare files (config, data directory) and return the command line."""

    def env(self) -> dict[str, str]:
        """Environment of the service process."""
        return dict(os.environ)

    @abstractmethod
    def healthy(self) -> bool:
        """Return True when the service answers its health check."""


class Kafka(Service):
    """Apache Kafka in KRaft mode: one combined broker and controller on loopback."""

    name = "kafka"

    @property
    def address(self) -> str:
        return self.settings.kafka_bootstrap

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.settings.kafka_port, self.settings.kafka_controller_port)

    def _server_properties(self) -> str:
        s = self.settings
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{s.host}:{s.kafka_controller_port}",
            "listeners": f"PLAINTEXT://{s.host}:{s.kafka_port},CONTROLLER://{s.host}:{s.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://{s.host}:{s.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.home / "data"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            # Topics are a public contract: `vigil topics create` makes them explicitly.
            "auto.create.topics.enable": "false",
            "log.retention.hours": "168",
        }
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def argv(self) -> list[str]:
        s = self.settings
        classpath = provision.kafka_classpath(s.cache_dir, s.kafka_version)
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "server.properties"
        config.write_text(self._server_properties())
        log4j = self.home / "log4j.properties"
        log4j.write_text(
            "log4j.rootLogger=WARN, stdout\n"
            "log4j.logger.kafka.server.KafkaRaftServer=INFO\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        )
        java = [
            "java",
            f"-Xmx{s.kafka_heap_mb}m",
            "-Xms64m",
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{log4j}",
            "-cp",
            classpath,
        ]
        if not (self.home / "data" / "meta.properties").exists():
            self._format(java, config)
        return [*java, "kafka.Kafka", str(config)]

    def _format(self, java: list[str], config: Path) -> None:
        # A cluster id is 16 random bytes in URL-safe base64; it may start with "-", so it
        # is passed as --cluster-id=<id>, never as a separate argument.
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        result = subprocess.run(  # noqa: S603
            [
                *java,
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={cid}",
                f"--config={config}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"kafka: storage format failed:\n{result.stdout}{result.stderr}")

    def healthy(self) -> bool:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.address,
                request_timeout_ms=3000,
                client_id="vigil-stack-health",
            )
        except Exception:  # noqa: BLE001 - any failure to connect means "not healthy yet"
            return False
        try:
            admin.list_topics()
            return True
        except Exception:  # noqa: BLE001
            return False
        finally:
            admin.close()


class Redis(Service):
    """Redis from Debian's ``redis-server``, no persistence, loopback only."""

    name = "redis"

    @property
    def address(self) -> str:
        return self.settings.redis_url

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.settings.redis_port,)

    def argv(self) -> list[str]:
        binary = provision.debian_program(
            "redis-server", "redis-server", install=self.settings.install_missing
        )
        self.home.mkdir(parents=True, exist_ok=True)
        return [
            binary,
            "--bind",
            self.settings.host,
            "--port",
            str(self.settings.redis_port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.home),
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
        ]

    def healthy(self) -> bool:
        client = redis.Redis(
            host=self.settings.host,
            port=self.settings.redis_port,
            socket_timeout=2,
            socket_connect_timeout=2,
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


def triton_argv(repo: Path, host: str, ports: tuple[int, int, int]) -> list[str]:
    """The ``tritonserver`` command line serving the model repository ``repo`` on ``host``
    with ``ports`` = (HTTP, gRPC, metrics): the stack's, and every throwaway server's
    (``vigil.testing.triton_server``), so they run the same way."""
    binary = provision.triton_server()
    http, grpc, metrics = ports
    return [
        str(binary),
        f"--model-repository={repo}",
        f"--backend-directory={binary.parent.parent / 'backends'}",
        f"--http-address={host}",
        f"--http-port={http}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc}",
        f"--metrics-address={host}",
        f"--metrics-port={metrics}",
        "--allow-gpu-metrics=false",
        "--pinned-memory-pool-byte-size=0",
        "--disable-auto-complete-config",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--log-verbose=0",
    ]


def triton_env() -> dict[str, str]:
    """The environment ``tritonserver`` runs in: the Python-backend stub finds its
    interpreter and site-packages through ``python3`` on PATH, so this virtualenv's bin
    comes first."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


class Triton(Service):
    """NVIDIA Triton Inference Server (CPU) from the ``nvidia-pytriton`` wheel."""

    name = "triton"

    @property
    def address(self) -> str:
        return self.settings.triton_grpc_url

    @property
    def ports(self) -> tuple[int, ...]:
        s = self.settings
        return (s.triton_http_port, s.triton_grpc_port, s.triton_metrics_port)

    def argv(self) -> list[str]:
        s = self.settings
        ports = (s.triton_http_port, s.triton_grpc_port, s.triton_metrics_port)
        return triton_argv(s.triton_repo, s.host, ports)

    def env(self) -> dict[str, str]:
        return triton_env()

    def healthy(self) -> bool:
        try:
            response = httpx.get(
                f"http://{self.settings.triton_http_url}/v2/health/ready", timeout=2.0
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200


class Prometheus(Service):
    """Prometheus from Debian's package, scraping Triton and Vigil workers on loopback."""

    name = "prometheus"

    @property
    def address(self) -> str:
        return self.settings.prometheus_url

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.settings.prometheus_port,)

    def config(self) -> dict[str, object]:
        """The scrape configuration for the local stack."""
        s = self.settings
        return {
            "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
            "rule_files": [str(s.prometheus_rules_dir / "*.yml")],
            "scrape_configs": [
                {
                    "job_name": "prometheus",
                    "static_configs": [{"targets": [f"{s.host}:{s.prometheus_port}"]}],
                },
                {
                    "job_name": "triton",
                    "static_configs": [{"targets": [f"{s.host}:{s.triton_metrics_port}"]}],
                },
                {
                    "job_name": "vigil-worker",
                    "static_configs": [
                        {"targets": [f"{s.host}:{p}" for p in s.worker_metrics_ports]}
                    ],
                },
            ],
        }

    def argv(self) -> list[str]:
        binary = provision.debian_program(
            "prometheus", "prometheus", install=self.settings.install_missing
        )
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        return [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.home / 'data'}",
            f"--web.listen-address={self.settings.host}:{self.settings.prometheus_port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=2d",
        ]

    def healthy(self) -> bool:
        try:
            response = httpx.get(f"{self.settings.prometheus_url}/-/ready", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200


def make_services(settings: StackSettings) -> dict[str, Service]:
    """Return every service of the stack, keyed by name, in start order."""
    return {
        "kafka": Kafka(settings),
        "redis": Redis(settings),
        "triton": Triton(settings),
        "prometheus": Prometheus(settings),
    }
