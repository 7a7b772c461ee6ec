"""The controller's TLS material: a self-signed CA created on first start and a server certificate it signs.

Agents pin the CA certificate at enrollment (``--ca-cert``); the admin CLI uses it too. The fingerprint
(sha256 of the CA's DER) is printed with every enrollment token so operators can check it out of band.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsMaterial:
    ca_cert_pem: bytes
    server_cert_pem: bytes
    server_key_pem: bytes
    ca_path: Path

    @property
    def ca_fingerprint(self) -> str:
        return ca_fingerprint(self.ca_cert_pem)


def ca_fingerprint(ca_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(ca_pem)
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san_list(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(["localhost", "127.0.0.1", "::1", socket.gethostname(), *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def load_or_create(tls_dir: Path, hosts: list[str] | None = None) -> TlsMaterial:
    """Create the CA and server certificate on first start; reuse them afterwards."""
    tls_dir = Path(tls_dir)
    tls_dir.mkdir(parents=True, exist_ok=True)
    ca_crt, ca_key = tls_dir / "ca.pem", tls_dir / "ca.key"
    srv_crt, srv_key = tls_dir / "server.pem", tls_dir / "server.key"
    now = dt.datetime.now(dt.UTC)
    if not ca_crt.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slmops controller CA")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        _write_private(ca_key, _key_pem(key))
        ca_crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        srv_crt.unlink(missing_ok=True)
        log.info("created the controller CA at %s", ca_crt)
    ca_cert = x509.load_pem_x509_certificate(ca_crt.read_bytes())
    if not srv_crt.exists():
        ca_private = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slmops controller")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(_san_list(hosts or [])), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_private, hashes.SHA256())  # type: ignore[arg-type]
        )
        _write_private(srv_key, _key_pem(key))
        srv_crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return TlsMaterial(ca_crt.read_bytes(), srv_crt.read_bytes(), srv_key.read_bytes(), ca_crt)
