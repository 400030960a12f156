"""GatewaySettings defaults and safety checks, the `vigil gateway` command's errors, and
the HTTP side's bearer token."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr, ValidationError

from streams.gateway.http import http_app
from streams.gateway.kafka_security import kafka_options
from streams.gateway.metrics import GatewayMetrics
from streams.gateway.settings import GatewaySettings, is_loopback
from streams.gateway.sink import KafkaSink
from tests.integration.secured import make_ca
from vigil.cli import main
from vigil.errors import ConfigError


def test_defaults_are_loopback_and_the_documented_ports() -> None:
    settings = GatewaySettings()
    assert (settings.mllp_host, settings.mllp_port) == ("127.0.0.1", 2575)
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8090)
    assert settings.fhir_base == "/fhir"
    assert settings.auth_token is None
    assert settings.topic("vitals") == "vigil.vitals"


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_GATEWAY_MLLP_PORT", "3575")
    monkeypatch.setenv("VIGIL_GATEWAY_AUTH_TOKEN", "s3cret-token")
    settings = GatewaySettings()
    assert settings.mllp_port == 3575
    assert "s3cret-token" not in repr(settings)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mllp_host": "0.0.0.0"}, "MLLP bound off loopback needs mutual TLS"),  # noqa: S104
        ({"http_host": "10.0.0.5"}, "HTTP bound off loopback needs TLS"),
        ({"http_host": "10.0.0.5", "auth_token": SecretStr("t")}, "needs TLS"),
        ({"tls_certfile": Path(__file__)}, "go together"),
        ({"naive_time_zone": "Mars/Olympus"}, "IANA"),
        ({"kafka_ssl_cafile": Path(__file__)}, "SECURITY_PROTOCOL=SSL"),
    ],
)
def test_unsafe_or_half_settings_are_refused(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GatewaySettings(**values)  # type: ignore[arg-type]


def test_off_loopback_with_tls_and_token_is_allowed() -> None:
    here = Path(__file__)
    settings = GatewaySettings(
        http_host="10.0.0.5", tls_certfile=here, tls_keyfile=here, auth_token=SecretStr("t")
    )
    assert not is_loopback(settings.http_host)
    assert is_loopback("::1")
    assert is_loopback("localhost")


def test_bad_code_map_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "codes.json"
    path.write_text("[")
    with pytest.raises(ConfigError):
        GatewaySettings(code_map_file=path).mapping_options()


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["gateway", "--mllp-port", "0"], {}, "invalid setting mllp_port"),
        (["gateway", "--http-port", "http"], {}, "Invalid value for '--http-port'"),
        (["gateway"], {"VIGIL_GATEWAY_MLLP_HOST": "0.0.0.0"}, "needs mutual TLS"),  # noqa: S104
        (["gateway", "--bogus"], {}, "No such option"),
    ],
)
def test_bad_gateway_arguments_exit_2_with_one_line(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vigil: error: ")
    assert message in err
    assert err.count("\n") == 1


def test_bearer_token_guards_everything_but_health() -> None:
    settings = GatewaySettings(auth_token=SecretStr("tok"))
    metrics = GatewayMetrics()
    app = http_app(settings, KafkaSink(settings, metrics), metrics)

    async def scenario() -> list[int]:
        async with TestClient(TestServer(app)) as client:
            statuses = []
            for path, headers in [
                ("/health", {}),
                ("/metrics", {}),
                ("/metrics", {"Authorization": "Bearer wrong"}),
                ("/metrics", {"Authorization": "Bearer tok"}),
            ]:
                response = await client.get(path, headers=headers)
                statuses.append(response.status)
            return statuses

    assert asyncio.run(scenario()) == [503, 401, 401, 200]


def test_port_in_use_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["gateway", "--mllp-port", str(port), "--http-port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vigil: error: gateway cannot listen")
    assert err.count("\n") == 1


def test_kafka_security_options(tmp_path: Path) -> None:
    pki = make_ca(tmp_path)
    secret = uuid.uuid4().hex
    settings = GatewaySettings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="gateway",
        kafka_sasl_password=SecretStr(secret),
        kafka_ssl_cafile=pki.ca_cert,
    )
    options = kafka_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_plain_password"] == secret
    assert secret not in repr(options)
    assert options["ssl_context"].verify_mode.name == "CERT_REQUIRED"
    assert kafka_options(GatewaySettings()) == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "needs _KAFKA_SASL_MECHANISM"),
        ({"kafka_sasl_username": "u"}, "needs a SASL_ security protocol"),
    ],
)
def test_half_kafka_sasl_is_refused(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GatewaySettings(**values)  # type: ignore[arg-type]
