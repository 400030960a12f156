"""Client security from the worker settings: TLS and SASL options for every client.

One set of ``VIGIL_KAFKA_*``, ``VIGIL_REDIS_*`` and ``VIGIL_TRITON_*`` variables
(:class:`~streams.settings.WorkerSettings`, which also rejects unsafe combinations)
secures every client Vigil builds:

* Faust (aiokafka inside): :func:`faust_credentials`, for ``faust.App(broker_credentials=)``.
* aiokafka used directly: :func:`aiokafka_options`.
* kafka-python (topic admin, consumer lag, replay, record, demo, evaluate):
  :func:`kafka_python_options`.
* Redis: :func:`redis_options`, for ``Redis.from_url(settings.redis_url, **options)``.
* Triton gRPC: :func:`triton_client_options` and :func:`triton_headers`.

Secrets leave their ``SecretStr`` only here, and as :class:`RedactedStr`, a ``str`` whose
``repr`` is masked: kafka-python logs its whole configuration at DEBUG
(``KafkaAdminClient``), and a dict of options that ends up in a log line or a traceback
shows ``'**********'`` instead of the password.
"""

from __future__ import annotations

import ssl
from typing import Any

import faust

from streams.settings import WorkerSettings

__all__ = [
    "RedactedStr",
    "aiokafka_options",
    "faust_credentials",
    "kafka_python_options",
    "kafka_ssl_context",
    "redis_options",
    "triton_client_options",
    "triton_headers",
]


class RedactedStr(str):
    """A secret handed to a client library: a plain ``str`` whose ``repr`` is masked."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'**********'"


def _secret(settings_value: Any) -> RedactedStr | None:
    return None if settings_value is None else RedactedStr(settings_value.get_secret_value())


def kafka_ssl_context(settings: WorkerSettings) -> ssl.SSLContext | None:
    """The TLS context for Kafka (``SSL``/``SASL_SSL``), else None.

    Verifies the broker's certificate and host name against ``kafka_ssl_cafile`` (the
    system CAs when unset) and presents ``kafka_ssl_certfile`` for mutual TLS.
    """
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH,
        cafile=None if settings.kafka_ssl_cafile is None else str(settings.kafka_ssl_cafile),
    )
    if settings.kafka_ssl_certfile is not None:
        keyfile = settings.kafka_ssl_keyfile
        context.load_cert_chain(
            str(settings.kafka_ssl_certfile), None if keyfile is None else str(keyfile)
        )
    return context


def faust_credentials(settings: WorkerSettings) -> faust.types.auth.CredentialsT | None:
    """``broker_credentials`` for ``faust.App``; None for ``PLAINTEXT``.

    Faust derives aiokafka's ``security_protocol`` from the credentials' type and from
    whether they carry a TLS context, so ``SASL_SSL`` must come with one.
    """
    context = kafka_ssl_context(settings)
    mechanism = settings.kafka_sasl_mechanism
    if mechanism is None:
        return None if context is None else faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=_secret(settings.kafka_sasl_password),
        ssl_context=context,
        mechanism=mechanism,
    )


def aiokafka_options(settings: WorkerSettings) -> dict[str, Any]:
    """Security keyword arguments for an aiokafka client (consumer, producer, admin)."""
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    context = kafka_ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_sasl_mechanism is not None:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = _secret(settings.kafka_sasl_password)
    return options


def kafka_python_options(settings: WorkerSettings) -> dict[str, Any]:
    """Security keyword arguments for a kafka-python client (admin, producer, consumer)."""
    # The same context as aiokafka, so that both libraries verify the broker alike.
    return aiokafka_options(settings)


def redis_options(settings: WorkerSettings) -> dict[str, Any]:
    """Keyword arguments for ``Redis.from_url(settings.redis_url, ...)``: credentials, TLS.

    A ``rediss://`` URL turns TLS on; the server certificate and host name are verified
    against ``redis_ssl_cafile`` (the system CAs when unset).
    """
    options: dict[str, Any] = {}
    if settings.redis_password is not None:
        options["password"] = _secret(settings.redis_password)
    if settings.redis_username is not None:
        options["username"] = settings.redis_username
    if settings.redis_url.startswith("rediss://"):
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = True
        if settings.redis_ssl_cafile is not None:
            options["ssl_ca_certs"] = str(settings.redis_ssl_cafile)
    return options


def triton_client_options(settings: WorkerSettings) -> dict[str, Any]:
    """Keyword arguments for tritonclient's gRPC ``InferenceServerClient`` (TLS)."""
    if not settings.triton_ssl:
        return {}
    files = {
        "root_certificates": settings.triton_ssl_cafile,
        "private_key": settings.triton_ssl_keyfile,
        "certificate_chain": settings.triton_ssl_certfile,
    }
    return {"ssl": True, **{k: str(v) for k, v in files.items() if v is not None}}


def triton_headers(settings: WorkerSettings) -> dict[str, str] | None:
    """gRPC metadata sent with every Triton request (the bearer token), or None."""
    token = _secret(settings.triton_auth_token)
    return None if token is None else {"authorization": RedactedStr(f"Bearer {token}")}
