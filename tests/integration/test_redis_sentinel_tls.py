"""Sentinel over TLS: the relay asks TLS-only Sentinels for the master and connects to it over
TLS, verifying every certificate against RELAY_REDIS_CA_FILE with the hostname checked.

Real processes, all TLS-only (plain ports off): a master and a replica replicating over TLS,
and three Sentinels (quorum 2). The test CA's server certificate names `localhost` only, not
127.0.0.1: it verifies because the servers announce themselves and the Sentinels hand out
addresses by that name (`replica-announce-ip`, `resolve-hostnames`, `announce-hostnames`), as
the operator's pods do with their DNS names. Relays and the load reader get what the operator
renders for an external GameCluster with `redis.external.sentinelTLS`. A failover is followed
with the fence/epoch rule of test_redis_sentinel.py unchanged; a relay with the wrong CA
stays unready and says why.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio.sentinel import MasterNotFoundError

from gamecluster.load import ReadyPod, RedisLoadSource
from gamecluster_client import Connection as RelayClient
from relay import contract
from relay.broker.connection import Connector
from relay.config import RedisEndpoint
from support import external, redis_acl, tls
from support.processes import LOOPBACK, RedisProcess, stop_process
from support.sentinel import (
    FAILOVER_SECONDS,
    MASTER,
    TLS_HOST,
    SentinelProcess,
    fail_over_past_acked_writes,
    replicated,
)
from support.waiting import eventually

pytestmark = pytest.mark.integration

TlsSet = tuple[RedisProcess, RedisProcess, list[SentinelProcess], Path]


@pytest.fixture
def tls_sentinel_set(tmp_path: Path) -> Iterator[TlsSet]:
    """The master, its replica, three Sentinels, all TLS-only, and the CA that signed them."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ca, _, _ = tls.make_pki(pki, dns_names=[TLS_HOST])
    master, replica = replicated(tmp_path, tls=pki)
    sentinels = [SentinelProcess(tmp_path, master.port, quorum=2, tls=pki) for _ in range(3)]
    for sentinel in sentinels:
        sentinel.start()
    yield master, replica, sentinels, ca
    if replica.proc is not None and replica.proc.poll() is None:
        os.kill(replica.proc.pid, signal.SIGCONT)
    for process in (*(s.proc for s in sentinels), replica.proc, master.proc):
        stop_process(process)


def as_rendered(sentinels: list[SentinelProcess], ca: Path) -> external.Rendered:
    """What the operator gives relays and its load reader for an external GameCluster behind
    these Sentinels with `sentinelTLS` and the CA in its Secret."""
    return external.render(
        {
            "urls": [f"sentinel://{MASTER}"],
            "sentinels": [f"{TLS_HOST}:{s.port}" for s in sentinels],
            "sentinelTLS": True,
            "secretRef": {"name": external.SECRET, "usernameKey": "user", "caKey": "ca.crt"},
        },
        {
            "user": contract.RELAY_REDIS_USER,
            "password": redis_acl.RELAY_PASSWORD,
            "ca.crt": ca.read_text(),
        },
        ca,
    )


async def test_a_relay_follows_a_failover_over_tls_with_names_checked(
    tls_sentinel_set: TlsSet, relay_factory, tmp_path: Path
) -> None:
    master, replica, sentinels, ca = tls_sentinel_set
    assert replica.proc is not None
    # The Sentinels hand out the name the certificate carries, never an IP.
    await eventually(
        lambda: all(s.master() == (TLS_HOST, master.port) for s in sentinels),
        10,
        "every Sentinel naming the master by its hostname",
    )
    await eventually(
        lambda: all(s.cli("SENTINEL", "ckquorum", MASTER).startswith("OK") for s in sentinels),
        20,
        "the three Sentinels to find each other over TLS",
    )
    rendered = as_rendered(sentinels, ca)
    assert rendered.env[contract.ENV_REDIS_SENTINEL_TLS] == "true"
    pod = relay_factory("a", redis_urls=rendered.urls, env=rendered.env)
    # The operator's load reader asks the same Sentinels over TLS.
    reader, ready = RedisLoadSource(), [ReadyPod("a", None)]
    await eventually(
        lambda: reader.read(rendered.urls[0], ready, datetime.now(UTC), rendered.auth).total == 0,
        10,
        "the load report read through the Sentinels over TLS",
    )
    async with RelayClient(pod.url) as publisher:
        epoch, ack = await fail_over_past_acked_writes(publisher, "match", master, replica)
        await eventually(
            lambda: sentinels[0].master() == (TLS_HOST, replica.port),
            FAILOVER_SECONDS,
            "the promotion",
        )
    # The promoted replica missed offsets 4 and 5: a new epoch, as without TLS.
    async with RelayClient(pod.url) as resuming:
        joined = await resuming.join("match", since={"epoch": epoch, "offset": 5})
        assert joined["recovered"] is False and joined["epoch"] != epoch
        assert joined["offset"] >= ack["offset"]
    assert pod.status() == 200
    assert "failed over from" in pod.log.read_text()
    redis_acl.no_secret_in_logs(tmp_path)


async def test_a_relay_with_the_wrong_ca_stays_unready_and_says_why(
    tls_sentinel_set: TlsSet, relay_factory, tmp_path: Path
) -> None:
    _, _, sentinels, _ = tls_sentinel_set
    other = tmp_path / "other-pki"
    other.mkdir()
    wrong_ca, _, _ = tls.make_pki(other, dns_names=[TLS_HOST])
    pod = relay_factory(
        "wrong-ca",
        redis_urls=[f"sentinel://{MASTER}"],
        env=as_rendered(sentinels, wrong_ca).env,
        ready=False,
    )
    await eventually(
        lambda: (
            f"Sentinel {TLS_HOST}:{sentinels[0].port}" in pod.tail()
            and "certificate verify failed" in pod.tail()
        ),
        15,
        "the refused TLS, naming the Sentinel",
    )
    assert pod.status() == 503
    pod.stop()
    redis_acl.no_secret_in_logs(tmp_path)


async def test_the_hostname_is_checked_an_ip_the_certificate_lacks_is_refused(
    tls_sentinel_set: TlsSet,
) -> None:
    """The right CA, but the Sentinel asked by 127.0.0.1, which its certificate does not
    name: refused, so a Sentinel handing out IPs would be refused the same way."""
    _, _, sentinels, ca = tls_sentinel_set
    by_ip = Connector(
        sentinels=((LOOPBACK, sentinels[0].port),), ca_file=str(ca), sentinel_tls=True
    )
    by_name = Connector(
        sentinels=((TLS_HOST, sentinels[0].port),), ca_file=str(ca), sentinel_tls=True
    )
    endpoint = RedisEndpoint.parse(f"sentinel://{MASTER}")
    try:
        with pytest.raises(MasterNotFoundError, match="IP address mismatch"):
            await by_ip.master_address(endpoint, timeout=2.0)
        assert (await by_name.master_address(endpoint, timeout=2.0))[0] == TLS_HOST
    finally:
        await by_ip.aclose()
        await by_name.aclose()
