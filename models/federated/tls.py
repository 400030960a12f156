"""Certificates made for one federation run: a throwaway CA and a server certificate for
the loopback address, both valid for one day (``cryptography``, EC P-256).

The CA's key is never written: only the server key (mode 0600), the server certificate
and the CA certificate the sites trust.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["RunCertificates", "make_run_certificates"]


@dataclass(frozen=True)
class RunCertificates:
    """PEM bytes of one run's CA certificate, server certificate and server key."""

    ca_certificate: bytes
    server_certificate: bytes
    server_key: bytes

    def write(self, folder: Path) -> None:
        """Writes ``ca.pem``, ``server.pem`` and ``server.key`` (0600) into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ca.pem").write_bytes(self.ca_certificate)
        (folder / "server.pem").write_bytes(self.server_certificate)
        key = folder / "server.key"
        key.write_bytes(self.server_key)
        key.chmod(0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_run_certificates(
    host: str = "127.0.0.1", valid: timedelta = timedelta(days=1)
) -> RunCertificates:
    """A fresh CA and a server certificate for ``host`` (an IP address) and localhost."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Vigil federation run CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + valid)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + valid)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(host))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return RunCertificates(
        ca_certificate=ca_cert.public_bytes(serialization.Encoding.PEM),
        server_certificate=cert.public_bytes(serialization.Encoding.PEM),
        server_key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
