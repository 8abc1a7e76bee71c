"""Sentinel: the relay finds the master through Sentinel and follows a failover; a promoted
replica that missed acked writes is never served as the same history (a new epoch).

Real processes: a master and a replica (redis-server, with the ACL file the operator renders)
and a Sentinel (Debian's redis-sentinel package; `make system-deps` installs it). The relay
logs in as the relay's ACL user, so the failover fence's commands are proven allowed too;
the replica and the Sentinel log in as the tests' admin user (support.redis_acl), standing in
for the replication and Sentinel users an operator-run Sentinel would need.
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from gamecluster.load import ReadyPod, RedisLoadSource
from gamecluster_client import Connection as RelayClient
from relay import contract
from relay.broker.base import BrokerUnavailable
from relay.broker.connection import Connector
from relay.broker.redis import RedisBroker
from relay.config import RedisEndpoint
from relay.rooms import RoomPolicy
from support import external, redis_acl
from support.processes import LOOPBACK, RedisProcess, stop_process
from support.sentinel import (
    FAILOVER_SECONDS,
    MASTER,
    SentinelProcess,
    fail_over_past_acked_writes,
    publish_until_acked,
    replicated,
)
from support.waiting import eventually

pytestmark = pytest.mark.integration


WATCHER = "watcher"
WATCHER_PASSWORD = "watcher-" + secrets.token_urlsafe(24)
WRONG_PASSWORD = "wrong-" + secrets.token_urlsafe(24)


@pytest.fixture
def sentinel_set(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[RedisProcess, RedisProcess, SentinelProcess]]:
    """The master, its replica and a Sentinel; parametrised with True (indirect), the
    Sentinel lets in only the ACL user WATCHER."""
    users = ""
    if getattr(request, "param", False):
        users = f"user default off\nuser {WATCHER} on >{WATCHER_PASSWORD} +@all\n"
    master, replica = replicated(tmp_path)
    sentinel = SentinelProcess(tmp_path, master.port, users=users)
    if users:
        sentinel.cli_auth = (WATCHER, WATCHER_PASSWORD)
    sentinel.start()
    yield master, replica, sentinel
    if replica.proc is not None and replica.proc.poll() is None:
        os.kill(replica.proc.pid, signal.SIGCONT)
    for process in (sentinel.proc, replica.proc, master.proc):
        stop_process(process)


async def test_a_failover_to_a_replica_that_missed_acked_writes_starts_a_new_epoch(
    sentinel_set: tuple[RedisProcess, RedisProcess, SentinelProcess],
    relay_factory,
    tmp_path: Path,
) -> None:
    master, replica, sentinel = sentinel_set
    assert replica.proc is not None
    pod = relay_factory(
        "a",
        redis_urls=[f"sentinel://{MASTER}"],
        env={
            contract.ENV_REDIS_SENTINELS: f"{LOOPBACK}:{sentinel.port}",
            contract.ENV_REDIS_USERNAME: contract.RELAY_REDIS_USER,
            contract.ENV_REDIS_PASSWORD: redis_acl.RELAY_PASSWORD,
        },
    )
    async with RelayClient(pod.url) as publisher:
        epoch, ack = await fail_over_past_acked_writes(publisher, "match", master, replica)
        assert sentinel.master_port() == replica.port  # promoted
    # The promoted replica had only offsets 1-3: the same epoch there would reuse 4 and 5
    # for other events. A client resuming from what it was acked learns history broke.
    async with RelayClient(pod.url) as resuming:
        joined = await resuming.join("match", since={"epoch": epoch, "offset": 5})
        assert joined["recovered"] is False
        assert joined["epoch"] != epoch
        assert joined["offset"] >= ack["offset"]
    assert pod.status() == 200
    assert "failed over from" in pod.log.read_text()
    # The fence (SET NX claim, SCAN of the meta hashes, HSET of their epochs) ran as the
    # relay's ACL user on the promoted replica, and nothing was refused there.
    ran, refused = redis_acl.commands_run(replica)
    assert {"scan", "hset"} <= ran and refused == {}
    assert redis_acl.acl_denials(replica) == []
    redis_acl.no_secret_in_logs(tmp_path)


async def test_publishes_wait_for_the_failover_fence_then_reach_the_new_master(
    sentinel_set: tuple[RedisProcess, RedisProcess, SentinelProcess], tmp_path: Path
) -> None:
    """The publish connection (relay.broker.commands) asks Sentinel for the master on every
    connect and passes the shard's fence: after a failover it reaches the new master only
    once that master's rooms have new epochs, so no publish reuses an offset the old master
    acked. The fence is run by the shard's Pub/Sub session: held back here (the broker is
    not started), every publish is refused, deterministically; started, publishes land
    on the new master in a new epoch."""
    master, replica, sentinel = sentinel_set
    connector = Connector(
        username=contract.RELAY_REDIS_USER,
        password=SecretStr(redis_acl.RELAY_PASSWORD),
        sentinels=((LOOPBACK, sentinel.port),),
    )
    broker = RedisBroker(
        [RedisEndpoint.parse(f"sentinel://{MASTER}")],
        "fenced",
        connector=connector,
        timeout=1.0,
        probe_interval=0.5,
        probe_timeout=2.0,
    )
    policy = RoomPolicy()
    # A shard whose Pub/Sub session is not live refuses its rooms at once (ShardDown),
    # before any connection. With the session held back, the shard is marked live by hand
    # so that what is refused below is the publish connection's own fence.
    shard = broker.control_shard
    shard._ready = True
    try:
        first = await broker.publish("match", 1, ts=1, policy=policy, msg_id="e1")
        assert first.offset == 1
        assert master.cli("WAIT", "1", "5000") == "1"
        master.kill()
        await eventually(
            lambda: sentinel.master_port() == replica.port, FAILOVER_SECONDS, "the promotion"
        )

        async def fenced() -> bool:
            """A publish now: refused (Sentinel may still call the master down for a moment,
            then the fence refuses it); never stored."""
            try:
                await broker.publish("match", 2, ts=1, policy=policy, msg_id="e2")
            except BrokerUnavailable as exc:
                return "waiting for its rooms' new epochs" in str(exc)
            raise AssertionError("a publish reached the new master before its fence")

        await eventually(fenced, 15, "a publish refused by the fence")
        assert await fenced() and await fenced()  # and it stays refused
        shard._ready = False
        await broker.start()  # the Pub/Sub session fences the new master, then is ready
        await eventually(lambda: broker.ready, 15, "the shard to be ready on the new master")
        second = await broker.publish("match", 2, ts=1, policy=policy, msg_id="e2")
        assert second.epoch != first.epoch and second.offset == 2
        ran, refused = redis_acl.commands_run(replica)
        assert {"evalsha", "scan"} <= ran and refused == {}  # the publish ran there
        assert redis_acl.acl_denials(replica) == []
    finally:
        await broker.close()
    redis_acl.no_secret_in_logs(tmp_path)


@pytest.mark.parametrize("sentinel_set", [True], indirect=True)
async def test_an_external_gamecluster_behind_sentinels_with_an_acl_user_follows_a_failover(
    sentinel_set: tuple[RedisProcess, RedisProcess, SentinelProcess],
    relay_factory,
    tmp_path: Path,
) -> None:
    """The relay configured exactly as the operator renders an external GameCluster whose
    Sentinels require a login (a Sentinel ACL user): ConfigMap values, and the Secret's keys
    resolved by their secretKeyRef. It follows a failover; the load reader reads through the
    same Sentinel with the same keys; a wrong Sentinel password leaves a relay unready with
    a line that says so; no password in any log."""
    master, replica, sentinel = sentinel_set
    stored = {
        "user": contract.RELAY_REDIS_USER,
        "password": redis_acl.RELAY_PASSWORD,
        "sentinel-user": WATCHER,
        "sentinel-password": WATCHER_PASSWORD,
    }
    rendered = external.render(
        {
            "urls": [f"sentinel://{MASTER}"],
            "sentinels": [f"{LOOPBACK}:{sentinel.port}"],
            "secretRef": {
                "name": external.SECRET,
                "usernameKey": "user",
                "sentinelUsernameKey": "sentinel-user",
                "sentinelPasswordKey": "sentinel-password",
            },
        },
        stored,
    )
    env, urls, auth = rendered.env, rendered.urls, rendered.auth
    assert env[contract.ENV_REDIS_SENTINEL_USERNAME] == WATCHER
    pod = relay_factory("a", redis_urls=urls, env={**env, contract.ENV_LOAD_REPORT_SECONDS: "0.2"})
    wrong_env = {**env, contract.ENV_REDIS_SENTINEL_PASSWORD: WRONG_PASSWORD}
    wrong = relay_factory("wrong", redis_urls=urls, env=wrong_env, ready=False)
    why = "invalid username-password pair or user is disabled. (the credentials of"
    await eventually(lambda: why in wrong.log.read_text(), 15, "the refused login logged")
    assert wrong.status() == 503
    wrong.stop()

    assert auth.sentinel_username == WATCHER
    reader, ready = RedisLoadSource(), [ReadyPod("a", None)]
    await eventually(
        lambda: reader.read(urls[0], ready, datetime.now(UTC), auth).total == 0,
        10,
        "the load report read through the Sentinel",
    )
    async with RelayClient(pod.url) as publisher:
        epoch = (await publisher.join("match"))["epoch"]
        await publisher.publish("match", 1, id="e1")
        assert master.cli("WAIT", "1", "5000") == "1"
        master.kill()
        await publish_until_acked(publisher, "match", "after", "after-failover")
        assert sentinel.master_port() == replica.port  # promoted
    async with RelayClient(pod.url) as resuming:
        joined = await resuming.join("match", since={"epoch": epoch, "offset": 1})
        assert joined["recovered"] is False and joined["epoch"] != epoch
    await eventually(
        lambda: reader.read(urls[0], ready, datetime.now(UTC), auth).total == 0,
        10,
        "the load reader to follow the failover",
    )
    pod.stop()
    no_password_in_logs(tmp_path, WATCHER_PASSWORD, WRONG_PASSWORD, redis_acl.RELAY_PASSWORD)


def no_password_in_logs(directory: Path, *passwords: str) -> None:
    for log in directory.glob("*.log"):
        text = log.read_text(errors="replace")
        for password in passwords:
            assert password not in text, log.name
