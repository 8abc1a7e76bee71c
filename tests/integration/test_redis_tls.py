"""External Redis over TLS (`rediss://`), as a cert-manager-issued certificate would serve it:
the relay verifies the server against RELAY_REDIS_CA_FILE and logs in as its ACL user; the
operator's load reader verifies it against the Secret's CA. A real redis-server (Debian's
build has TLS) with a certificate from a CA made here; TLS only, its plain port off.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gamecluster.load import ReadyPod, RedisAuth, RedisLoadSource
from gamecluster_client import Connection as RelayClient
from relay import contract
from support import redis_acl
from support.processes import LOOPBACK, RedisProcess, free_port
from support.waiting import eventually

pytestmark = pytest.mark.integration


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1: (ca.crt, tls.crt, tls.key)."""
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
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(key))
    return paths


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisProcess, Path]]:
    """A redis-server with the operator's ACL file serving TLS only (plain port off)."""
    ca, cert, key = make_pki(tmp_path)
    port = free_port()
    server = redis_acl.acl_redis(
        tmp_path,
        [
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(cert),
            "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca),
            "--tls-auth-clients", "no",
        ],
        port=port,
    )  # fmt: skip
    yield server, ca
    server.stop()


async def test_relay_and_load_reader_verify_the_server_and_log_in_over_tls(
    tls_redis: tuple[RedisProcess, Path], relay_factory, tmp_path: Path
) -> None:
    server, ca = tls_redis
    url = f"rediss://{LOOPBACK}:{server.port}/0"
    login = {
        contract.ENV_REDIS_USERNAME: contract.RELAY_REDIS_USER,
        contract.ENV_REDIS_PASSWORD: redis_acl.RELAY_PASSWORD,
        contract.ENV_LOAD_REPORT_SECONDS: "0.2",
    }
    pod = relay_factory("tls", redis_urls=[url], env={**login, contract.ENV_REDIS_CA_FILE: str(ca)})
    async with RelayClient(pod.url) as member, RelayClient(pod.url) as publisher:
        position = await member.join("secure")
        ack = await publisher.publish("secure", "over tls", id="t1")
        assert ack is not None and ack["offset"] == 1
        assert (await member.receive(timeout=5))["data"] == "over tls"
        # The operator's reader: the CA as the Secret's PEM text (secretRef.caKey).
        source = RedisLoadSource()
        pods = [ReadyPod("tls", None)]
        auth = RedisAuth(contract.OPERATOR_REDIS_USER, redis_acl.OPERATOR_PASSWORD)
        untrusted = source.read(url, pods, datetime.now(UTC), auth)
        assert untrusted.total is None and "certificate verify failed" in str(untrusted.unknown)
        trusted = RedisAuth(auth.username, auth.password, ca.read_text())
        await eventually(
            lambda: source.read(url, pods, datetime.now(UTC), trusted).total == 2,
            10,
            "the load report read over TLS",
        )
    assert position["offset"] == 0
    pod.stop()
    redis_acl.no_secret_in_logs(tmp_path)


async def test_a_relay_without_the_ca_stays_unready_and_says_why(
    tls_redis: tuple[RedisProcess, Path], relay_factory, tmp_path: Path
) -> None:
    server, _ = tls_redis
    pod = relay_factory(
        "no-ca",
        redis_urls=[f"rediss://{LOOPBACK}:{server.port}/0"],
        env={
            contract.ENV_REDIS_USERNAME: contract.RELAY_REDIS_USER,
            contract.ENV_REDIS_PASSWORD: redis_acl.RELAY_PASSWORD,
        },
        ready=False,
    )
    await eventually(lambda: "certificate verify failed" in pod.tail(), 10, "the refused TLS")
    assert pod.status() == 503
    pod.stop()
    redis_acl.no_secret_in_logs(tmp_path)
