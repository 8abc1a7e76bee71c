"""External Redis over TLS (`rediss://`), as a cert-manager-issued certificate would serve it:
the relay verifies the server against RELAY_REDIS_CA_FILE and logs in as its ACL user; the
operator's load reader verifies it against the Secret's CA. A real redis-server (Debian's
build has TLS) with a certificate from a CA made here; TLS only, its plain port off.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gamecluster.load import ReadyPod, RedisAuth, RedisLoadSource
from gamecluster_client import Connection as RelayClient
from relay import contract
from support import redis_acl, tls
from support.processes import LOOPBACK, RedisProcess
from support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisProcess, Path]]:
    """A redis-server with the operator's ACL file serving TLS only (plain port off)."""
    server, ca = tls.tls_redis(tmp_path)
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
