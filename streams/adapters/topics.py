"""Kafka topic administration: create Vigil's topics and check they exist."""

from __future__ import annotations

import contextlib

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streams.adapters.security import kafka_python_options
from streams.core.events import TopicKind, topic_name
from streams.settings import WorkerSettings
from vigil.errors import TopicError

__all__ = ["REQUIRED_TOPICS", "create_topics", "missing_topics"]

REQUIRED_TOPICS: tuple[TopicKind, ...] = (
    TopicKind.VITALS,
    TopicKind.LABS,
    TopicKind.IMAGING,
    TopicKind.ADT,
    TopicKind.SCORES,
    TopicKind.ALERTS,
    TopicKind.DEADLETTER,
    TopicKind.ACKS,
    TopicKind.AUDIT,
    TopicKind.FINDINGS,
    TopicKind.EXPLANATIONS,
)


def _names(settings: WorkerSettings) -> list[str]:
    return [topic_name(kind, settings.topic_prefix) for kind in REQUIRED_TOPICS]


def _admin(settings: WorkerSettings) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id="vigil-topics",
            request_timeout_ms=int(settings.kafka_admin_timeout_seconds * 1000),
            bootstrap_timeout_ms=int(settings.kafka_admin_timeout_seconds * 1000),
            **kafka_python_options(settings),
        )
    except KafkaError as exc:
        raise TopicError(
            f"cannot reach Kafka at {settings.kafka_bootstrap} over "
            f"{settings.kafka_security_protocol} (with SASL or TLS, check the credentials "
            f"and the CA file): {exc}"
        ) from exc


def create_topics(settings: WorkerSettings) -> list[str]:
    """Create the missing Vigil topics with the configured partitions and replication.

    Returns:
        Names of the topics created (existing ones are left as they are).
    """
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
        wanted = [name for name in _names(settings) if name not in existing]
        if wanted:
            # Another worker may create them concurrently: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [
                        NewTopic(name, settings.topic_partitions, settings.topic_replication)
                        for name in wanted
                    ]
                )
        return wanted
    except KafkaError as exc:
        raise TopicError(f"topic creation failed: {exc}") from exc
    finally:
        admin.close()


def missing_topics(settings: WorkerSettings) -> list[str]:
    """Names of required topics that do not exist."""
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
    except KafkaError as exc:
        raise TopicError(f"cannot list topics: {exc}") from exc
    finally:
        admin.close()
    return [name for name in _names(settings) if name not in existing]
