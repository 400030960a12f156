"""``vigil gateway`` with TLS, client certificates and a bearer token, over real sockets."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from streams.adapters.topics import create_topics
from streams.gateway.mllp import END, START
from streams.settings import WorkerSettings
from tests.integration.gateway import Gateway, running_gateway
from tests.integration.test_gateway_mllp import good
from vigil.stack.settings import StackSettings

TOKEN = "gateway-test-token"  # noqa: S105 (a throwaway token of the test)


@dataclass(frozen=True)
class Files:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _issue(
    name: str,
    usage: x509.ObjectIdentifier,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    folder: Path,
) -> tuple[Path, Path]:
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _pki(folder: Path) -> Files:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = folder / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server = _issue("server", ExtendedKeyUsageOID.SERVER_AUTH, ca_key, ca_name, folder)
    client = _issue("client", ExtendedKeyUsageOID.CLIENT_AUTH, ca_key, ca_name, folder)
    return Files(ca_path, *server, *client)


@pytest.fixture(scope="module")
def secured(
    stack: StackSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Files]]:
    folder = tmp_path_factory.mktemp("gateway-tls")
    files = _pki(folder)
    prefix = f"gwt-{uuid.uuid4().hex[:10]}"
    create_topics(
        WorkerSettings(
            kafka_bootstrap=stack.kafka_bootstrap, topic_prefix=prefix, topic_partitions=1
        )
    )
    with running_gateway(
        folder / "gateway.log",
        bootstrap=stack.kafka_bootstrap,
        prefix=prefix,
        wait_healthy=False,  # /health is HTTPS now; the tests wait for it
        tls_certfile=str(files.server_cert),
        tls_keyfile=str(files.server_key),
        tls_client_cafile=str(files.ca),
        auth_token=TOKEN,
    ) as gateway:
        yield gateway, files


def _context(files: Files, *, with_client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files.ca))
    if with_client_cert:
        context.load_cert_chain(files.client_cert, files.client_key)
    return context


def _mllp(gateway: Gateway, context: ssl.SSLContext, message: bytes) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", gateway.mllp_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(START + message + END)
        data = b""
        while END not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _https(gateway: Gateway, files: Files, *, cert: bool) -> httpx.Client:
    return httpx.Client(
        base_url=f"https://127.0.0.1:{gateway.http_port}",
        verify=_context(files, with_client_cert=cert),
        timeout=10,
    )


def _wait_healthy(gateway: Gateway, files: Files) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with _https(gateway, files, cert=True) as client:
            try:
                if client.get("/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.3)
    raise AssertionError(gateway.log.read_text()[-3000:])


def test_mllp_over_mutual_tls(secured: tuple[Gateway, Files]) -> None:
    gateway, files = secured
    _wait_healthy(gateway, files)
    ack = _mllp(gateway, _context(files, with_client_cert=True), good("TLS1"))
    assert b"MSA|AA|TLS1" in ack
    try:
        answer = _mllp(gateway, _context(files, with_client_cert=False), good("TLS2"))
    except (ssl.SSLError, ConnectionError):
        answer = b""  # refused in the handshake (TLS 1.2) or on the first read (TLS 1.3)
    assert answer == b""


def test_https_needs_the_token(secured: tuple[Gateway, Files]) -> None:
    gateway, files = secured
    _wait_healthy(gateway, files)
    with _https(gateway, files, cert=True) as client:
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200
        assert "vigil_gateway_messages_total" in right.text
