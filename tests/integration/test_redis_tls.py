"""External Redis over TLS (`rediss://`), as a cert-manager-issued certificate would serve it:
the relay verifies the server against RELAY_REDIS_CA_FILE and logs in as its ACL user; the
operator's load reader verifies it against the Secret's CA. A real redis-server (Debian's
build has TLS) with a certificate from a CA made here; TLS only, its plain port off.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gamecluster.children import REDIS_PORT
from gamecluster.desired import Inputs, desired
from gamecluster.load import ReadyPod, RedisAuth, RedisLoadSource
from gamecluster.manifests import redis_tls
from gamecluster.manifests.secrets import RedisPasswords
from gamecluster.spec import parse
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


def test_a_managed_tls_shard_is_ready_by_its_own_probe_and_has_no_plain_port(
    tmp_path: Path,
) -> None:
    """spec.redis.tls as a shard runs it: the operator's flags (support.tls uses them) with a
    certificate naming only the pods' DNS names, and the StatefulSet's readiness probe run
    as the kubelet would: it logs in over TLS (redis-cli checks the chain, not the name, so
    127.0.0.1 need not be in the certificate), and fails on a wrong password."""
    server, _ = tls.tls_redis(tmp_path, dns_names=["*.arena-redis.games.svc"])
    try:
        spec = parse({"redis": {"tls": {"secretName": "arena-tls"}}})
        meta = {"name": "arena", "namespace": "games", "uid": "u"}
        inputs = Inputs(relay_image="img", jwt_secret="s", redis_passwords=RedisPasswords("r", "o"))
        (sts,) = [m for m in desired(spec, meta, inputs) if m["kind"] == "StatefulSet"]
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        command = [
            part.replace(redis_tls.DIR, str(tmp_path)).replace(
                f"-p {REDIS_PORT}", f"-p {server.port}"
            )
            for part in container["readinessProbe"]["exec"]["command"]
        ]

        def probe(password: str) -> int:
            env = {**os.environ, "REDISCLI_AUTH": password}
            return subprocess.run(command, env=env, capture_output=True, timeout=10).returncode

        assert probe(redis_acl.OPERATOR_PASSWORD) == 0
        assert probe("not-the-password") != 0
        plain = subprocess.run(
            ["redis-cli", "-p", str(server.port), "ping"], capture_output=True, timeout=10
        )
        assert b"PONG" not in plain.stdout  # the port speaks TLS only
    finally:
        server.stop()
