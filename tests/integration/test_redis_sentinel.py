"""Sentinel: the relay finds the master through Sentinel and follows a failover; a promoted
replica that missed acked writes is never served as the same history (a new epoch).

Real processes: a master and a replica (redis-server, with the ACL file the operator renders)
and a Sentinel (Debian's redis-sentinel package; `make system-deps` installs it). The relay
logs in as the relay's ACL user, so the failover fence's commands are proven allowed too;
the replica and the Sentinel log in as the tests' admin user (support.redis_acl), standing in
for the replication and Sentinel users an operator-run Sentinel would need.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from redis import Redis

from gamecluster.load import ReadyPod, RedisLoadSource
from gamecluster_client import Connection as RelayClient
from relay import contract
from relay.broker import keys
from relay.broker.base import BrokerUnavailable
from relay.broker.connection import Connector
from relay.broker.options import RedisOptions
from relay.broker.redis import RedisBroker
from relay.config import RedisEndpoint
from relay.rooms import RoomPolicy
from support import external, redis_acl
from support.processes import LOOPBACK, RedisProcess, stop_process
from support.sentinel import (
    FAILOVER_SECONDS,
    MASTER,
    SentinelProcess,
    acked_past_the_replica,
    fail_over_past_acked_writes,
    promote_the_replica,
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


def relay_env(sentinel: SentinelProcess) -> dict[str, str]:
    """A relay on the shard behind `sentinel`, as the relay's ACL user."""
    return {
        contract.ENV_REDIS_SENTINELS: f"{LOOPBACK}:{sentinel.port}",
        contract.ENV_REDIS_USERNAME: contract.RELAY_REDIS_USER,
        contract.ENV_REDIS_PASSWORD: redis_acl.RELAY_PASSWORD,
    }


async def promoted_with_no_relay_running(
    sentinel_set: tuple[RedisProcess, RedisProcess, SentinelProcess], relay_factory
) -> tuple[str, bytes | None]:
    """A relay server acks events of room `match` past the replica (acked_past_the_replica)
    and stops; then, with no relay server running, the replica is promoted. Returns the
    room's epoch and the history marker on the master when the relay server stopped."""
    master, replica, sentinel = sentinel_set
    first = relay_factory("a", redis_urls=[f"sentinel://{MASTER}"], env=relay_env(sentinel))
    async with RelayClient(first.url) as publisher:
        epoch = await acked_past_the_replica(publisher, "match", master, replica)
        marked: bytes | None = redis_acl.admin(master).get(keys.HISTORY_MARKER)
    first.stop()
    await promote_the_replica(master, replica, sentinel)
    return epoch, marked


async def test_a_failover_to_a_replica_that_missed_acked_writes_starts_a_new_epoch(
    sentinel_set: tuple[RedisProcess, RedisProcess, SentinelProcess],
    relay_factory,
    tmp_path: Path,
) -> None:
    master, replica, sentinel = sentinel_set
    assert replica.proc is not None
    env = relay_env(sentinel)
    pod = relay_factory("a", redis_urls=[f"sentinel://{MASTER}"], env=env)
    async with RelayClient(pod.url) as publisher:
        # A second server starts during the failover: it never sees the old master, and
        # races the first one (which did) to the fence.
        started: list[Any] = []
        epoch, ack = await fail_over_past_acked_writes(
            publisher, "match", master, replica,
            while_down=lambda: started.append(
                relay_factory("b", redis_urls=[f"sentinel://{MASTER}"], env=env, ready=False)
            ),
        )  # fmt: skip
        late = started[0]
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
    await eventually(lambda: late.status() == 200, 15, "the late server ready")
    async with RelayClient(late.url) as resuming:
        again = await resuming.join("match", since={"epoch": epoch, "offset": 5})
        assert again["recovered"] is False and again["epoch"] == joined["epoch"]
    # One fence for the two servers: one new epoch, not two.
    logs = [server.log.read_text() for server in (pod, late)]
    assert sum(text.count("rooms start epoch") for text in logs) == 1, logs
    # The fence (SET NX claim, SCAN of the meta hashes, HSET of their epochs) ran as the
    # relay's ACL user on the promoted replica, and nothing was refused there.
    ran, refused = redis_acl.commands_run(replica)
    assert {"scan", "hset"} <= ran and refused == {}
    assert redis_acl.acl_denials(replica) == []
    redis_acl.no_secret_in_logs(tmp_path)


async def test_a_relay_started_after_a_promotion_that_lost_acked_writes_starts_a_new_epoch(
    sentinel_set: tuple[RedisProcess, RedisProcess, SentinelProcess],
    relay_factory,
    tmp_path: Path,
) -> None:
    """No relay server runs while the shard fails over, so none holds the old master in
    memory: the one started after the promotion still sees, from the history marker
    (keys.HISTORY_MARKER, replicated: the promoted replica's `master_replid2`), that the
    new master continued the marked history and may lack acked writes, and starts new
    epochs before it serves anything there."""
    _master, replica, sentinel = sentinel_set
    env = relay_env(sentinel)
    epoch, _ = await promoted_with_no_relay_running(sentinel_set, relay_factory)
    later = relay_factory("b", redis_urls=[f"sentinel://{MASTER}"], env=env)
    async with RelayClient(later.url) as resuming:
        joined = await resuming.join("match", since={"epoch": epoch, "offset": 5})
        # Without the marker: the same epoch, offsets 4 and 5 silently gone.
        assert joined["recovered"] is False
        assert joined["epoch"] != epoch
        assert joined["offset"] == 3  # the promoted replica lacks 4 and 5
        ack = await resuming.publish("match", "after", id="after")
        assert ack is not None and ack["offset"] == joined["offset"] + 1
    assert "failed over from the master of history" in later.log.read_text()
    assert redis_acl.acl_denials(replica) == []
    redis_acl.no_secret_in_logs(tmp_path)


async def test_a_promoted_replica_of_an_unmarked_history_starts_a_new_epoch(
    sentinel_set: tuple[RedisProcess, RedisProcess, SentinelProcess],
    relay_factory,
) -> None:
    """No marker on the promoted replica (its master's history was never marked: a fleet
    upgraded to the marker, or a replica behind when it was first set) is not a new
    Redis: the replica continued a history (its `master_replid2`) and may lack acked
    writes, so a relay that never saw the old master starts new epochs there too."""
    master, replica, sentinel = sentinel_set
    assert replica.proc is not None
    env = relay_env(sentinel)
    first = relay_factory("a", redis_urls=[f"sentinel://{MASTER}"], env=env)
    async with RelayClient(first.url) as publisher:
        epoch = (await publisher.join("match"))["epoch"]
        await publisher.publish("match", 1, id="e1")
        # The history as a relay without the marker left it (the relay does not look
        # again until its connection is lost).
        master.cli("DEL", keys.HISTORY_MARKER)
        assert master.cli("WAIT", "1", "5000") == "1"  # the replica has event 1, no marker
        os.kill(replica.proc.pid, signal.SIGSTOP)
        assert master.cli("CLIENT", "KILL", "TYPE", "replica") == "1"  # (support.sentinel)
        acked = await publisher.publish("match", 2, id="e2")
        assert acked is not None and acked["offset"] == 2  # on the master alone
    first.stop()
    await promote_the_replica(master, replica, sentinel)
    later = relay_factory("b", redis_urls=[f"sentinel://{MASTER}"], env=env)
    async with RelayClient(later.url) as resuming:
        joined = await resuming.join("match", since={"epoch": epoch, "offset": 2})
        assert joined["recovered"] is False and joined["epoch"] != epoch
    assert "failed over from an unmarked master" in later.log.read_text()


async def test_two_failovers_with_no_relay_running_in_between_start_a_new_epoch(
    sentinel_set: tuple[RedisProcess, RedisProcess, SentinelProcess],
    relay_factory,
    tmp_path: Path,
) -> None:
    """Two promotions and no relay server between them: the marker names the first
    master's history, the second promoted server continued the first promoted one's
    (`master_replid2`), so the marker names neither of its ids. A master that continued a
    history was promoted, not merely restarted (a restart leaves `master_replid2` unset),
    so that is a failover too: new epochs, not the same history with acked events gone."""
    master, _replica, sentinel = sentinel_set
    env = relay_env(sentinel)
    # No relay server runs from here until the end of the second failover.
    epoch, marked = await promoted_with_no_relay_running(sentinel_set, relay_factory)
    # The old master comes back (empty: no persistence), is made a replica of the new one
    # by the Sentinel, syncs, and is promoted back.
    master.start()
    await eventually(
        lambda: "master_link_status:up" in master.cli("INFO", "replication"),
        FAILOVER_SECONDS,
        "the old master to sync as a replica",
    )
    assert "OK" in sentinel.cli("SENTINEL", "FAILOVER", MASTER)
    await eventually(
        lambda: sentinel.master_port() == master.port, FAILOVER_SECONDS, "the second promotion"
    )
    ids = master.cli("INFO", "replication")
    assert redis_acl.admin(master).get(keys.HISTORY_MARKER) == marked
    assert marked is not None and marked.decode() not in ids  # neither of its ids
    later = relay_factory("b", redis_urls=[f"sentinel://{MASTER}"], env=env)
    async with RelayClient(later.url) as publisher:
        for n in (6, 7):
            await publisher.publish("match", n, id=f"e{n}")
    async with RelayClient(later.url) as resuming:
        joined = await resuming.join("match", since={"epoch": epoch, "offset": 5})
        # Taken for a restart: the same epoch, events 6 and 7 at the offsets 4 and 5
        # were acked for: a client resuming from 5 is told it missed nothing.
        assert joined["recovered"] is False and joined["epoch"] != epoch, joined
        assert joined["offset"] == 5
    assert "rooms start epoch" in later.log.read_text()
    assert redis_acl.acl_denials(master) == []
    redis_acl.no_secret_in_logs(tmp_path)


async def test_a_promoted_replica_restarted_before_any_check_still_starts_a_new_epoch(
    sentinel_set: tuple[RedisProcess, RedisProcess, SentinelProcess],
    relay_factory,
    tmp_path: Path,
) -> None:
    """A replica promoted in place of a master whose last acked events it lacks, then
    restarted from its AOF before any relay server checked it: a restart from the AOF
    leaves no `master_replid2`, so its ids are those of the old master restarted. The
    marker names the address it was written at, the old master's: this one was promoted,
    new epochs (not the same history with acked events gone)."""
    master, replica, sentinel = sentinel_set
    env = relay_env(sentinel)
    # The replica keeps an AOF from here (it restarts with its data below).
    assert redis_acl.admin(replica).config_set("appendonly", "yes")
    # No relay server runs from here until the promoted replica restarted.
    epoch, marked = await promoted_with_no_relay_running(sentinel_set, relay_factory)
    assert marked is not None and marked.decode().endswith(f" {LOOPBACK}:{master.port}")
    # Restarted cleanly from its AOF, as a master (not the replica it was started as).
    at = replica.extra_args.index("--replicaof")
    del replica.extra_args[at : at + 3]
    replica.aof = True
    replica.stop()
    replica.start()
    ids = redis_acl.admin(replica).info("replication")
    assert ids["role"] == "master" and str(ids["master_replid2"]).strip("0") == ""
    assert int(redis_acl.admin(replica).hget(keys.meta("match"), "offset") or 0) == 3
    await eventually(lambda: sentinel.master_port() == replica.port, 10, "still the master")
    later = relay_factory("b", redis_urls=[f"sentinel://{MASTER}"], env=env)
    async with RelayClient(later.url) as resuming:
        joined = await resuming.join("match", since={"epoch": epoch, "offset": 5})
        # Taken for a restart of the old master, the same epoch: the next publishes
        # would take offsets 4 and 5 again, and a client resuming from 5 miss them.
        assert joined["recovered"] is False and joined["epoch"] != epoch, joined
    assert "rooms start epoch" in later.log.read_text()
    assert redis_acl.acl_denials(replica) == []
    redis_acl.no_secret_in_logs(tmp_path)


async def test_a_sentinel_master_restarted_from_its_aof_keeps_its_rooms_epochs(
    sentinel_set: tuple[RedisProcess, RedisProcess, SentinelProcess],
    relay_factory,
    tmp_path: Path,
) -> None:
    """A Redis pod replaced under a Sentinel shard (no failover: the Sentinels do not call
    it down): its replication id changes, its marker still names its own address, so it
    is a restart, not a promotion. The rooms keep their epochs (no needless `recovered:
    false` at every pod replacement) and the marker names the new id at that address."""
    master, _replica, sentinel = sentinel_set
    sentinel.cli("SENTINEL", "SET", MASTER, "down-after-milliseconds", "30000")
    admin = redis_acl.admin(master)
    assert admin.config_set("appendonly", "yes")
    await eventually(
        lambda: admin.info("persistence")["aof_rewrite_in_progress"] == 0, 10, "the AOF written"
    )
    pod = relay_factory("a", redis_urls=[f"sentinel://{MASTER}"], env=relay_env(sentinel))
    async with RelayClient(pod.url) as publisher:
        epoch = (await publisher.join("match"))["epoch"]
        for n in range(1, 4):
            await publisher.publish("match", n, id=f"e{n}")
    before = admin.get(keys.HISTORY_MARKER)
    assert before is not None and before.decode().endswith(f" {LOOPBACK}:{master.port}")
    master.aof = True
    master.stop()  # SIGTERM: a clean shutdown, the AOF flushed
    master.start()
    admin = redis_acl.admin(master)
    await eventually(
        lambda: admin.get(keys.HISTORY_MARKER) not in (None, before), 15, "the marker renewed"
    )
    after = admin.get(keys.HISTORY_MARKER)
    assert after is not None and after.decode().endswith(f" {LOOPBACK}:{master.port}")
    assert after.decode().split()[0] == admin.info("replication")["master_replid"]
    async with RelayClient(pod.url) as resuming:
        joined = await resuming.join("match", since={"epoch": epoch, "offset": 1})
        assert joined["recovered"] is True and joined["epoch"] == epoch, joined
    log = pod.log.read_text()
    assert "restarted (history" in log and "rooms start epoch" not in log
    redis_acl.no_secret_in_logs(tmp_path)


async def test_a_master_restarted_cleanly_keeps_its_rooms_epochs(
    redis_factory, relay_factory
) -> None:
    """A master's replication id changes on every restart, a clean one too: the marker
    then names neither of its ids, which is a restart, not a promotion. The rooms keep
    their epochs (no needless `recovered: false`), and the marker names the new id, so a
    failover later is still recognised. (Without the ACL file: Redis 7.0 refuses a
    MULTI/EXEC of its append-only file with `user default off`, see the report of issue
    #14's fence-marker branch.)"""
    server = redis_factory(aof=True)  # appendfsync always: nothing lost by the restart
    pod = relay_factory("a", redis_urls=[f"shard-a={server.url}"])
    admin = Redis(port=server.port)
    before = admin.info("replication")["master_replid"]
    await eventually(
        lambda: admin.get(keys.HISTORY_MARKER) == before.encode(), 10, "the marker set"
    )
    async with RelayClient(pod.url) as publisher:
        epoch = (await publisher.join("match"))["epoch"]
        for n in range(1, 4):
            await publisher.publish("match", n, id=f"e{n}")
    server.stop()  # SIGTERM: a clean SHUTDOWN
    server.start()
    admin = Redis(port=server.port)
    after = admin.info("replication")["master_replid"]
    assert after != before  # what makes a restart look like another history
    await eventually(
        lambda: admin.get(keys.HISTORY_MARKER) == after.encode(), 15, "the marker renewed"
    )
    await eventually(lambda: pod.status() == 200, 15, "the relay ready again")
    assert "restarted (history" in pod.log.read_text()
    async with RelayClient(pod.url) as resuming:
        joined = await resuming.join("match", since={"epoch": epoch, "offset": 2})
        assert joined["recovered"] is True and joined["epoch"] == epoch, (joined, epoch)
        assert joined["offset"] == 3
    assert "rooms start epoch" not in pod.log.read_text()


async def test_the_fence_of_many_rooms_takes_a_round_trip_per_scan_batch(
    redis_factory, relay_factory
) -> None:
    """The shard is unavailable while its rooms get their new epochs, and the claim that
    keeps the other servers waiting expires after FENCE_SECONDS: one round trip per room
    (measured: 50,000 rooms 8 s on loopback, past the claim at a pod network's ~0.5 ms) is
    too slow. A promoted server here: a replica of a marked master, then `REPLICAOF NO
    ONE` (what Sentinel does); Redis counts the reads it processed (`total_reads_processed`):
    a round trip per room would be one read each."""
    rooms = 20_000
    old, promoted = redis_factory(), redis_factory()
    admin = Redis(port=old.port)
    writes = admin.pipeline(transaction=False)
    for n in range(rooms):
        writes.hset(keys.meta(f"r{n}"), mapping={"epoch": "0badc0de", "offset": 1})
    writes.set(keys.HISTORY_MARKER, admin.info("replication")["master_replid"])
    writes.execute()
    fresh = Redis(port=promoted.port)
    fresh.replicaof(LOOPBACK, old.port)
    await eventually(lambda: fresh.dbsize() == rooms + 1, 15, "the replica synced")
    fresh.replicaof("NO", "ONE")
    reads = fresh.info("stats")["total_reads_processed"]
    pod = relay_factory("a", redis_urls=[f"shard-p={promoted.url}"])
    assert "20000 rooms start epoch" in pod.log.read_text()
    epochs = {fresh.hget(keys.meta(f"r{n}"), "epoch") for n in (0, rooms // 2, rooms - 1)}
    assert len(epochs) == 1 and epochs != {b"0badc0de"}
    fence_reads = fresh.info("stats")["total_reads_processed"] - reads
    assert fence_reads < rooms / 10, fence_reads


def broker_behind(sentinel: SentinelProcess, node_id: str) -> RedisBroker:
    """A broker on the shard `sentinel://gc` as the relay's ACL user (not started), probing
    its Pub/Sub session every 0.5 s."""
    connector = Connector(
        username=contract.RELAY_REDIS_USER,
        password=SecretStr(redis_acl.RELAY_PASSWORD),
        sentinels=((LOOPBACK, sentinel.port),),
    )
    return RedisBroker(
        [RedisEndpoint.parse(f"sentinel://{MASTER}")],
        node_id,
        RedisOptions(connector, timeout=1.0, probe_interval=0.5, probe_timeout=2.0),
    )


async def test_publishes_wait_for_the_failover_fence_then_reach_the_new_master(
    sentinel_set: tuple[RedisProcess, RedisProcess, SentinelProcess], tmp_path: Path
) -> None:
    """The publish connection (relay.broker.commands) asks Sentinel for the master on every
    connect and passes the shard's fence: after a failover it reaches the new master only
    acked. The fence is run by the shard's Pub/Sub session: before it has checked the
    first master's history, and held back after the failover (the session stopped), every
    publish is refused, deterministically; started again, publishes land on the new master
    in a new epoch."""
    master, replica, sentinel = sentinel_set
    broker = broker_behind(sentinel, "fenced")
    policy = RoomPolicy()
    # A shard whose Pub/Sub session is not live refuses its rooms at once (ShardDown),
    # before any connection. With the session held back, the shard is marked live by hand
    # so that what is refused below is the publish connection's own fence.
    shard = broker.control_shard
    shard._ready = True
    try:
        # Even the first master this server sees: not before its history is checked (it
        # could be a promoted replica).
        with pytest.raises(BrokerUnavailable, match="is not checked yet"):
            await broker.publish("match", 1, ts=1, policy=policy, msg_id="e1")
        shard._ready = False
        await broker.start()
        await eventually(lambda: broker.ready, 15, "the shard to be ready on the master")
        first = await broker.publish("match", 1, ts=1, policy=policy, msg_id="e1")
        assert first.offset == 1
        assert master.cli("WAIT", "1", "5000") == "1"
        # The session held back from here on: nothing fences the new master.
        assert shard._task is not None
        shard._task.cancel()
        await asyncio.wait({shard._task})
        shard._ready = True
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
        shard.start()  # the Pub/Sub session fences the new master, then is ready
        await eventually(lambda: broker.ready, 15, "the shard to be ready on the new master")
        second = await broker.publish("match", 2, ts=1, policy=policy, msg_id="e2")
        assert second.epoch != first.epoch and second.offset == 2
        ran, refused = redis_acl.commands_run(replica)
        assert {"evalsha", "scan"} <= ran and refused == {}  # the publish ran there
        assert redis_acl.acl_denials(replica) == []
    finally:
        await broker.close()
    redis_acl.no_secret_in_logs(tmp_path)


async def test_a_master_back_at_the_same_address_takes_no_publish_before_its_check(
    sentinel_set: tuple[RedisProcess, RedisProcess, SentinelProcess], tmp_path: Path
) -> None:
    """A master that crashed and came back at its address (no failover: Sentinel did not
    call it down) from an RDB snapshot lacks what was acked after the snapshot, and Redis
    gives it its old id as `master_replid2`: the history check fences it. The publish
    connection reconnects as soon as the server is up: it must wait for that check too
    (the address is the one already checked, but the server behind it is not), or a
    publish reuses a lost offset under the old epoch. The Pub/Sub session is held back
    here, as in the test above, so the order is deterministic."""
    master, _replica, sentinel = sentinel_set
    # No failover during the restart below: Sentinel waits 30 s before calling it down.
    sentinel.cli("SENTINEL", "SET", MASTER, "down-after-milliseconds", "30000")
    broker = broker_behind(sentinel, "restarted")
    policy = RoomPolicy()
    shard = broker.control_shard
    try:
        await broker.start()
        await eventually(lambda: broker.ready, 15, "the shard to be ready on the master")
        for n in range(1, 4):
            await broker.publish("match", n, ts=1, policy=policy, msg_id=f"e{n}")
        assert master.cli("SAVE") == "OK"  # the snapshot has events 1-3
        acked = await broker.publish("match", 4, ts=1, policy=policy, msg_id="e4")
        assert acked.offset == 4  # after the snapshot: lost by the crash below
        assert shard._task is not None
        shard._task.cancel()
        await asyncio.wait({shard._task})
        shard._ready = True
        master.kill()  # SIGKILL: no snapshot on the way out
        master.start()  # the RDB file of the SAVE above: events 1-3
        assert sentinel.master_port() == master.port  # no failover
        assert "master_replid2:0000" not in master.cli("INFO", "replication")

        async def held() -> bool:
            """A publish now: refused by the check (the first may still meet the lost
            connection); never stored."""
            try:
                early = await broker.publish("match", 5, ts=1, policy=policy, msg_id="e5")
            except BrokerUnavailable as exc:
                return "not checked yet" in str(exc)
            raise AssertionError(f"a publish reached the server before its check: {early}")

        await eventually(held, 15, "a publish refused by the check")
        assert await held()
        shard._ready = False
        shard.start()  # the session checks the server: a new epoch, then publishes go on
        await eventually(lambda: broker.ready, 15, "the shard to be ready again")
        after = await broker.publish("match", 5, ts=1, policy=policy, msg_id="e5")
        assert after.epoch != acked.epoch and after.offset == 4
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
