"""Throwaway secured services on loopback for the security tests (no Docker).

* :func:`make_ca`: a test CA, a server certificate for 127.0.0.1/localhost and a client
  certificate (PEM).
* :func:`start_redis`: ``redis-server`` with ``requirepass`` on a free port.
* :func:`start_kafka`: a one-node KRaft Kafka whose client listener is SASL_SSL with
  SCRAM-SHA-512 (users added at ``kafka-storage format`` time with ``--add-scram``);
  inter-broker and controller traffic stay on PLAINTEXT loopback listeners.

Each starts as a child process of the test run, on ports the OS reports free (never the
main stack's), and is stopped by the caller. A service that does not come up raises.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vigil.stack import provision
from vigil.stack.settings import StackSettings
from vigil.testing.workers import free_port


@dataclass(frozen=True)
class Pki:
    """Files of a test CA and of a server certificate signed by it."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    server_pem: Path
    """Key and certificate chain in one file (Kafka's PEM keystore)."""
    client_cert: Path
    """A client certificate (for mutual TLS) signed by the CA."""
    client_key: Path


def _client_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca_name: x509.Name, now: dt.datetime
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vigil test client")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([x509.OID_CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def make_ca(folder: Path) -> Pki:
    """A CA, a server certificate valid for 127.0.0.1 and localhost and a client
    certificate, for one day."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vigil test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = server.public_bytes(serialization.Encoding.PEM)
    folder.mkdir(parents=True, exist_ok=True)
    pki = Pki(
        ca_cert=folder / "ca.pem",
        server_cert=folder / "server.crt",
        server_key=folder / "server.key",
        server_pem=folder / "server.pem",
        client_cert=folder / "client.crt",
        client_key=folder / "client.key",
    )
    pki.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(cert_pem)
    pki.server_key.write_bytes(key_pem)
    pki.server_pem.write_bytes(key_pem + cert_pem)
    client_cert, client_key = _client_certificate(ca_key, ca_name, now)
    pki.client_cert.write_bytes(client_cert)
    pki.client_key.write_bytes(client_key)
    return pki


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextlib.contextmanager
def start_redis(folder: Path, password: str) -> Iterator[int]:
    """``redis-server`` on a free loopback port requiring ``password``; yields the port."""
    binary = provision.debian_program("redis-server", "redis-server", install=True)
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # The password goes through a config file, not argv (visible to every local user).
    config = folder / "redis.conf"
    config.write_text(
        f'bind 127.0.0.1\nport {port}\nrequirepass "{password}"\nsave ""\n'
        f"appendonly no\ndir {folder}\nprotected-mode yes\n"
    )
    config.chmod(0o600)
    log = folder / "redis.log"
    with log.open("wb") as out:
        process = subprocess.Popen([binary, str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(port=port, password=password, socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.RedisError as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {exc}\n{_tail(log)}") from exc
                time.sleep(0.1)
        client.close()
        yield port
    finally:
        _stop(process)


@dataclass(frozen=True)
class SecuredKafka:
    """A running SASL_SSL Kafka: where clients connect and the SCRAM user's credentials."""

    bootstrap: str
    """The SASL_SSL listener."""
    plaintext_bootstrap: str
    """The inter-broker PLAINTEXT listener (loopback; for checks only)."""
    username: str
    password: str
    ca_cert: Path


@contextlib.contextmanager
def start_kafka(folder: Path, pki: Pki, username: str, password: str) -> Iterator[SecuredKafka]:
    """A one-node KRaft broker with a SASL_SSL (SCRAM-SHA-512) listener on loopback.

    Raises:
        RuntimeError: The broker was not answering on its SASL_SSL listener within 60 s.
    """
    stack = StackSettings().resolved()
    classpath = provision.kafka_classpath(stack.cache_dir, stack.kafka_version)
    folder.mkdir(parents=True, exist_ok=True)
    secure, internal, controller = free_port(), free_port(), free_port()
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller}",
        "listeners": (
            f"SECURE://127.0.0.1:{secure},BROKER://127.0.0.1:{internal},"
            f"CONTROLLER://127.0.0.1:{controller}"
        ),
        "advertised.listeners": f"SECURE://127.0.0.1:{secure},BROKER://127.0.0.1:{internal}",
        "listener.security.protocol.map": ("SECURE:SASL_SSL,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT"),
        "inter.broker.listener.name": "BROKER",
        "controller.listener.names": "CONTROLLER",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "listener.name.secure.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(pki.server_pem),
        "log.dirs": str(folder / "data"),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
    }
    config = folder / "server.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    log4j = folder / "log4j.properties"
    log4j.write_text(
        "log4j.rootLogger=WARN, stdout\n"
        "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
    )
    java = [
        "java",
        "-Xmx384m",
        "-Xms64m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{log4j}",
        "-cp",
        classpath,
    ]
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    formatted = subprocess.run(
        [
            *java,
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id}",
            f"--config={config}",
            "--add-scram",
            f"SCRAM-SHA-512=[name={username},password={password}]",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if formatted.returncode != 0:
        raise RuntimeError(f"kafka storage format failed:\n{formatted.stdout}{formatted.stderr}")
    log = folder / "kafka.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*java, "kafka.Kafka", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", secure), 1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kafka did not start:\n{_tail(log)}")
            time.sleep(0.25)
        yield SecuredKafka(
            bootstrap=f"127.0.0.1:{secure}",
            plaintext_bootstrap=f"127.0.0.1:{internal}",
            username=username,
            password=password,
            ca_cert=pki.ca_cert,
        )
    finally:
        _stop(process)
