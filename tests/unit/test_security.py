"""Security settings: combinations, secrets kept out of text, loopback defaults."""

from __future__ import annotations

import ast
import importlib
import ipaddress
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import faust
import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from streams.adapters.security import (
    RedactedStr,
    aiokafka_options,
    faust_credentials,
    kafka_python_options,
    redis_options,
    triton_client_options,
    triton_headers,
)
from streams.settings import WorkerSettings
from vigil.stack.services import Kafka, Prometheus
from vigil.stack.settings import StackSettings

SECRET = "s3cret-never-shown"  # noqa: S105 - a marker to look for in text
REPO = Path(__file__).resolve().parents[2]
CA = str(Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"))


def _sasl(**changes: Any) -> dict[str, Any]:
    return {
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "vigil-worker",
        "kafka_sasl_password": SECRET,
        "kafka_ssl_cafile": CA,
    } | changes


def test_a_ca_file_exists_for_these_tests() -> None:
    assert Path(CA).is_file()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (_sasl(kafka_sasl_mechanism=None), "needs VIGIL_KAFKA_SASL_MECHANISM"),
        (_sasl(kafka_sasl_username=None), "needs VIGIL_KAFKA_SASL_USERNAME"),
        (_sasl(kafka_sasl_password=None), "VIGIL_KAFKA_SASL_PASSWORD"),
        (
            _sasl(kafka_security_protocol="PLAINTEXT", kafka_ssl_cafile=None),
            "VIGIL_KAFKA_SASL_* is set but",
        ),
        (_sasl(kafka_security_protocol="SASL_PLAINTEXT"), "VIGIL_KAFKA_SSL_* is set but"),
        (_sasl(kafka_ssl_keyfile=CA), "needs VIGIL_KAFKA_SSL_CERTFILE"),
        ({"redis_url": f"redis://:{SECRET}@127.0.0.1:6379/0"}, "must not hold credentials"),
        ({"redis_url": "http://127.0.0.1:6379"}, "redis:// or rediss://"),
        ({"redis_ssl_cafile": CA}, "needs a rediss://"),
        ({"redis_username": "vigil"}, "needs VIGIL_REDIS_PASSWORD"),
        ({"triton_ssl_cafile": CA}, "VIGIL_TRITON_SSL is false"),
        ({"triton_ssl": True, "triton_ssl_certfile": CA}, "go together"),
        ({"kafka_ssl_cafile": "/no/such/ca.pem", "kafka_security_protocol": "SSL"}, "path"),
    ],
)
def test_unsafe_combinations_are_refused_clearly(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        WorkerSettings(**values)
    assert message in str(refused.value)
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize(
    "values",
    [
        _sasl(topic_partitions=0),  # another field fails while a password is set
        _sasl(kafka_sasl_pasword=SECRET),  # a misspelt secret field
        {"redis_password": SECRET, "redis_ttl_seconds": "x"},
        {"triton_auth_token": SECRET, "triton_ssl": "maybe"},
    ],
)
def test_validation_errors_never_echo_a_secret(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as refused:
        WorkerSettings(**values)
    # str() is what reaches a log or a terminal (the CLI prints loc and msg only);
    # ValidationError.errors() still carries the input for code that asks for it.
    assert SECRET not in str(refused.value)


def test_secrets_stay_out_of_repr_and_of_client_option_text() -> None:
    settings = WorkerSettings(
        **_sasl(), redis_password=SECRET, triton_ssl=True, triton_auth_token=SECRET
    )
    for text in (
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        repr(kafka_python_options(settings)),
        repr(aiokafka_options(settings)),
        repr(redis_options(settings)),
        repr(triton_headers(settings)),
        repr(faust_credentials(settings)),
    ):
        assert SECRET not in text
    # ... while the clients still get the real value.
    assert kafka_python_options(settings)["sasl_plain_password"] == SECRET
    assert redis_options(settings)["password"] == SECRET
    assert triton_headers(settings) == {"authorization": f"Bearer {SECRET}"}


def test_redacted_str_is_the_secret_for_everything_but_repr() -> None:
    value = RedactedStr(SECRET)
    assert value == SECRET
    assert str(value) == SECRET
    assert f"{value}" == SECRET
    assert value.encode() == SECRET.encode()
    assert repr(value) == "'**********'"
    assert SECRET not in repr({"password": value})


def test_plaintext_defaults_give_plain_clients() -> None:
    settings = WorkerSettings()
    assert faust_credentials(settings) is None
    assert kafka_python_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert redis_options(settings) == {}
    assert triton_client_options(settings) == {}
    assert triton_headers(settings) is None


def test_sasl_ssl_gives_every_kafka_client_a_verifying_tls_context() -> None:
    settings = WorkerSettings(**_sasl())
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    # Faust picks aiokafka's security_protocol from the credentials: SASL_SSL needs a context.
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    for options in (kafka_python_options(settings), aiokafka_options(settings)):
        assert options["security_protocol"] == "SASL_SSL"
        assert options["sasl_mechanism"] == "SCRAM-SHA-512"
        assert options["sasl_plain_username"] == "vigil-worker"
        context = options["ssl_context"]
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname


def test_ssl_without_sasl_gives_faust_ssl_credentials() -> None:
    settings = WorkerSettings(kafka_security_protocol="SSL", kafka_ssl_cafile=CA)
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.protocol.value == "SSL"
    assert "sasl_mechanism" not in kafka_python_options(settings)


def test_rediss_verifies_the_server() -> None:
    settings = WorkerSettings(
        redis_url="rediss://cache.internal:6380/0",
        redis_username="vigil",
        redis_password=SECRET,
        redis_ssl_cafile=CA,
    )
    assert redis_options(settings) == {
        "password": SECRET,
        "username": "vigil",
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": CA,
    }


def test_triton_tls_files_go_to_the_grpc_client() -> None:
    settings = WorkerSettings(
        triton_ssl=True, triton_ssl_cafile=CA, triton_ssl_certfile=CA, triton_ssl_keyfile=CA
    )
    assert triton_client_options(settings) == {
        "ssl": True,
        "root_certificates": CA,
        "private_key": CA,
        "certificate_chain": CA,
    }


# --- every service Vigil starts binds to loopback by default ------------------------------


def _settings_classes() -> list[type[BaseSettings]]:
    """Every BaseSettings subclass in the source, found by reading it (importing only those)."""
    classes: list[type[BaseSettings]] = []
    for package in ("streams", "vigil", "models"):
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            names = [
                node.name
                for node in tree.body
                if isinstance(node, ast.ClassDef)
                and any(ast.unparse(base) == "BaseSettings" for base in node.bases)
            ]
            if names:
                module_name = ".".join(path.relative_to(REPO).with_suffix("").parts)
                module = importlib.import_module(module_name)
                classes.extend(getattr(module, name) for name in names)
    return classes


def _host(field: str, value: object) -> str | None:
    """The host in a default that names a listening or connecting address, else None."""
    text = str(value)
    if field.endswith("host"):
        return text
    if field.endswith("_url") or field.endswith("bootstrap"):
        parsed = urlsplit(text if "://" in text else f"tcp://{text}")
        return parsed.hostname
    return None


def test_every_address_default_of_every_settings_class_is_loopback() -> None:
    classes = _settings_classes()
    assert {c.__name__ for c in classes} >= {"WorkerSettings", "StackSettings"}
    checked = []
    for cls in classes:
        for name, field in cls.model_fields.items():
            host = _host(name, field.default)
            if host is None:
                continue
            checked.append(f"{cls.__name__}.{name}")
            address = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
            assert address.is_loopback, f"{cls.__name__}.{name} defaults to {host}"
    assert {
        "WorkerSettings.kafka_bootstrap",
        "WorkerSettings.redis_url",
        "WorkerSettings.triton_url",
        "WorkerSettings.metrics_host",
        "StackSettings.host",
    } <= set(checked)


def test_stack_services_listen_on_the_configured_host_only(tmp_path: Path) -> None:
    settings = StackSettings(state_dir=tmp_path)
    kafka = Kafka(settings)._server_properties()
    listeners = next(line for line in kafka.splitlines() if line.startswith("listeners="))
    hosts = {entry.split("://")[1].rsplit(":", 1)[0] for entry in listeners[10:].split(",")}
    assert hosts == {"127.0.0.1"}
    prometheus = Prometheus(settings).argv()
    assert f"--web.listen-address=127.0.0.1:{settings.prometheus_port}" in prometheus
