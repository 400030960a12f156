"""``vigil gateway`` with TLS, client certificates and a bearer token, over real sockets."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import httpx
import pytest

from streams.gateway.mllp import END, START
from tests.integration.secured import Pki, make_ca
from tests.integration.test_gateway_mllp import good
from vigil.stack.settings import StackSettings
from vigil.testing.gateway import Gateway, fresh_topics, running_gateway

TOKEN = "gateway-test-token"  # noqa: S105 (a throwaway token of the test)


@pytest.fixture(scope="module")
def secured(
    stack: StackSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Pki]]:
    folder = tmp_path_factory.mktemp("gateway-tls")
    files = make_ca(folder)
    prefix = fresh_topics(stack, "gwt", partitions=1)
    with running_gateway(
        folder / "gateway.log",
        bootstrap=stack.kafka_bootstrap,
        prefix=prefix,
        wait_healthy=False,  # /health is HTTPS now; the tests wait for it
        tls_certfile=str(files.server_cert),
        tls_keyfile=str(files.server_key),
        tls_client_cafile=str(files.ca_cert),
        auth_token=TOKEN,
    ) as gateway:
        yield gateway, files


def _context(files: Pki, *, with_client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files.ca_cert))
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


def _https(gateway: Gateway, files: Pki, *, cert: bool) -> httpx.Client:
    return httpx.Client(
        base_url=f"https://127.0.0.1:{gateway.http_port}",
        verify=_context(files, with_client_cert=cert),
        timeout=10,
    )


def _wait_healthy(gateway: Gateway, files: Pki) -> None:
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


def test_mllp_over_mutual_tls(secured: tuple[Gateway, Pki]) -> None:
    gateway, files = secured
    _wait_healthy(gateway, files)
    ack = _mllp(gateway, _context(files, with_client_cert=True), good("TLS1"))
    assert b"MSA|AA|TLS1" in ack
    try:
        answer = _mllp(gateway, _context(files, with_client_cert=False), good("TLS2"))
    except (ssl.SSLError, ConnectionError):
        answer = b""  # refused in the handshake (TLS 1.2) or on the first read (TLS 1.3)
    assert answer == b""


def test_https_needs_the_token(secured: tuple[Gateway, Pki]) -> None:
    gateway, files = secured
    _wait_healthy(gateway, files)
    with _https(gateway, files, cert=True) as client:
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200
        assert "vigil_gateway_messages_total" in right.text
