"""Security keyword arguments of the gateway's aiokafka clients (producer and the score
history consumer), from :class:`~streams.gateway.settings.GatewaySettings`: TLS (with a
client certificate for mutual TLS) and SASL (SCRAM or PLAIN, over SSL or not)."""

from __future__ import annotations

from typing import Any

from aiokafka.helpers import create_ssl_context

from streams.adapters.security import RedactedStr
from streams.gateway.settings import GatewaySettings

__all__ = ["kafka_options"]


def kafka_options(settings: GatewaySettings) -> dict[str, Any]:
    """``security_protocol``, ``ssl_context`` and the SASL credentials, as configured."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol.endswith("SSL"):
        files = (settings.kafka_ssl_cafile, settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
        cafile, certfile, keyfile = (None if f is None else str(f) for f in files)
        options["ssl_context"] = create_ssl_context(
            cafile=cafile, certfile=certfile, keyfile=keyfile
        )
    if settings.kafka_sasl_mechanism is not None and settings.kafka_sasl_password is not None:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = RedactedStr(
            settings.kafka_sasl_password.get_secret_value()
        )
    return options
