"""A certificate authority made for a test, and a TLS-only redis-server that uses it.

A CA, and a server certificate it signed for 127.0.0.1 (as cert-manager would issue one),
so clients verify the server for real; the server runs the operator's ACL file
(support.redis_acl) with its plain port off.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gamecluster.manifests import redis_tls
from support import redis_acl
from support.processes import LOOPBACK, RedisProcess, free_port


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_pki(directory: Path, dns_names: list[str] | None = None) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1 (or for `dns_names` only, as
    cert-manager issues one for a headless Service's pods): (ca.crt, tls.crt, tls.key)."""
    names: list[x509.GeneralName] = (
        [x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
        if dns_names is None
        else [x509.DNSName(name) for name in dns_names]
    )
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("gamecluster test CA"))
        .issuer_name(_name("gamecluster test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("redis"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(names),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(key))
    return paths


def tls_redis(directory: Path, dns_names: list[str] | None = None) -> tuple[RedisProcess, Path]:
    """A started redis-server with the operator's ACL file serving TLS only, and its CA."""
    ca, _, _ = make_pki(directory, dns_names)
    port = free_port()
    # The flags the operator gives a managed shard (spec.redis.tls), the Secret's files here.
    args = redis_tls.server_args(port, directory=str(directory))
    server = redis_acl.acl_redis(directory, args, port=port)
    return server, ca
