"""The relay on an external Redis Cluster (RELAY_REDIS_CLUSTER=true), run for real.

A 3-master cluster of redis-server processes on loopback (support.rediscluster), joined by
`redis-cli --cluster create`; relays as processes, logging in as an ACL user that has
exactly the documented rules (contract.RELAY_CLUSTER_ACL_RULES). What is proven:

- rooms spread over every master, events cross from one relay to the other, a resume on
  the other relay replays exactly what was missed, a retried id is stored once;
- a slot migration (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE) of a room being published
  to: the room keeps its epoch and every acked event is in its history and reaches the
  subscriber (live or by the history read its resubscription triggers);
- a failover (SIGKILL of a master, its replica promoted), alone and under load: the
  killed master's rooms change epoch and a resume from an acked position gets
  `recovered: false`; the other masters' rooms resume with every acked event; never a
  silent gap. A planned CLUSTER FAILOVER: subscriptions follow, a new epoch;
- the history marker (relay.broker.history): a relay started after a promotion still
  changes the epoch of a replica that missed acked events; a master restarted cleanly
  keeps its rooms' epochs;
- presence, node reports and a dead pod's reaping through the `{gamecluster}` slot; the
  operator's load reader following the one redirect to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

import pytest
import redis
from pydantic import SecretStr
from redis.crc import key_slot

from gamecluster.load import ReadyPod, RedisAuth, RedisLoadSource
from gamecluster_client import Connection as RelayClient
from gamecluster_client.errors import UnavailableError
from relay import auth, contract
from relay.api.client import AsyncRelayApi
from relay.broker import BrokerUnavailable, Delivery, keys
from relay.broker.connection import Connector
from relay.broker.options import RedisOptions
from relay.broker.slots import RedisClusterBroker
from relay.rooms import RoomPolicy
from support import redis_acl
from support.processes import wait_until
from support.rediscluster import RedisCluster
from support.sentinel import publish_until_acked
from support.waiting import eventually

pytestmark = pytest.mark.integration

RELAY_PASSWORD = "relay-cluster-" + token_urlsafe(24)
OPERATOR_PASSWORD = "operator-cluster-" + token_urlsafe(24)
DURABLE = RoomPolicy(policy="durable", history_size=10_000, history_ttl_seconds=600)


def acl_user(cluster: RedisCluster) -> None:
    """The relay and operator users on every node, with the documented rules only."""
    for node in cluster.nodes:
        cluster.client(node).execute_command(
            "ACL", "SETUSER", contract.RELAY_REDIS_USER, "reset", "on", f">{RELAY_PASSWORD}",
            *contract.RELAY_CLUSTER_ACL_RULES,
        )  # fmt: skip
        cluster.client(node).execute_command(
            "ACL", "SETUSER", contract.OPERATOR_REDIS_USER, "reset", "on",
            f">{OPERATOR_PASSWORD}", *contract.OPERATOR_ACL_RULES,
        )  # fmt: skip


def relay_env() -> dict[str, str]:
    return {
        contract.ENV_REDIS_CLUSTER: "true",
        contract.ENV_REDIS_USERNAME: contract.RELAY_REDIS_USER,
        contract.ENV_REDIS_PASSWORD: RELAY_PASSWORD,
    }


def connector() -> Connector:
    return Connector(username=contract.RELAY_REDIS_USER, password=SecretStr(RELAY_PASSWORD))


def rooms_on_every_master(cluster: RedisCluster, per_master: int, prefix: str) -> list[str]:
    """Room names, `per_master` on each master (by the slot of the room's hash tag)."""
    wanted = {port: per_master for port in cluster.master_ports()}
    rooms, n = [], 0
    while any(wanted.values()):
        room = f"{prefix}{n}"
        port = cluster.owner(keys.slot_of_room(room)).port
        if wanted.get(port, 0) > 0:
            wanted[port] -= 1
            rooms.append(room)
        n += 1
    return rooms


async def events(client: RelayClient, count: int) -> list[dict[str, Any]]:
    received = [await client.receive(timeout=5) for _ in range(count)]
    assert all(m["op"] == "event" for m in received), received
    return received


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> RedisCluster:
    redis_cluster.flush()
    acl_user(redis_cluster)
    return redis_cluster


async def test_two_relays_spread_rooms_over_every_master_deliver_resume_and_dedupe(
    cluster: RedisCluster, relay_factory, tmp_path: Path
) -> None:
    seed = [cluster.nodes[0].url]
    pod_a = relay_factory("a", redis_urls=seed, env=relay_env())
    pod_b = relay_factory("b", redis_urls=seed, env=relay_env())
    rooms = rooms_on_every_master(cluster, 2, "match:")
    masters = {cluster.owner(keys.slot_of_room(room)).port for room in rooms}
    assert masters == cluster.master_ports() and len(masters) == 3
    # Every master is a live "shard" of both relays (relay_redis_shard_up per node).
    for pod in (pod_a, pod_b):
        up = [
            line for line in pod.metrics().splitlines() if line.startswith("relay_redis_shard_up")
        ]
        assert len(up) == 3 and all(line.endswith(" 1.0") for line in up), up
    async with RelayClient(pod_a.url) as publisher, RelayClient(pod_b.url) as player:
        joined = {room: await player.join(room) for room in rooms}
        for room in rooms:  # published on pod a, delivered on pod b
            await publisher.publish(room, f"first {room}", id=f"first-{room}")
        got = await events(player, len(rooms))
        assert sorted((m["room"], m["data"], m["offset"]) for m in got) == sorted(
            (room, f"first {room}", 1) for room in rooms
        )
        for room in rooms:
            await player.leave(room)
        for room in rooms:  # while the player is away
            for n in range(3):
                await publisher.publish(room, n, id=f"missed-{room}-{n}")
        # A retry of an acked id is stored once: same offset, nothing sent again.
        again = await publisher.publish(rooms[0], 0, id=f"missed-{rooms[0]}-0")
        assert again is not None and again["offset"] == 2
    async with RelayClient(pod_a.url) as player:  # resumes on the other pod
        for room in rooms:
            since = {"epoch": joined[room]["epoch"], "offset": 1}
            rejoined = await player.join(room, since=since)
            assert (rejoined["recovered"], rejoined["offset"]) == (True, 4), rejoined
            replayed = await events(player, 3)
            assert [(m["offset"], m["data"]) for m in replayed] == [(2, 0), (3, 1), (4, 2)]
    # The relay user's rules are enough (no ACL denial on any node) and no more: it
    # cannot wipe or reconfigure a node.
    for node in cluster.nodes:
        assert cluster.client(node).execute_command("ACL", "LOG") == []
    as_relay = redis.Redis(
        port=cluster.nodes[0].port, username=contract.RELAY_REDIS_USER, password=RELAY_PASSWORD
    )
    for command in (("FLUSHALL",), ("CONFIG", "GET", "maxmemory"), ("CLUSTER", "RESET")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            as_relay.execute_command(*command)
    redis_acl.no_secret_in_logs(tmp_path, [RELAY_PASSWORD])


async def test_the_operator_reads_every_pods_load_report_from_any_seed(
    cluster: RedisCluster, relay_factory
) -> None:
    """The relays write their reports in the cluster keys' slot; the operator's load reader,
    given a seed that does not own it, follows the one MOVED and reads them all."""
    tag_owner = cluster.owner_of_key(contract.load_report_key("x", cluster=True))
    seed = next(node for node in cluster.nodes if node is not tag_owner).url
    fast = {**relay_env(), "RELAY_LOAD_REPORT_SECONDS": "0.2"}
    pods = [relay_factory(name, redis_urls=[seed], env=fast) for name in ("a", "b")]
    source = RedisLoadSource()
    auth = RedisAuth(contract.OPERATOR_REDIS_USER, OPERATOR_PASSWORD, cluster=True)
    ready = [ReadyPod(pod.node_id, datetime.now(UTC) - timedelta(hours=1)) for pod in pods]
    async with RelayClient(pods[0].url), RelayClient(pods[0].url), RelayClient(pods[1].url):

        async def read() -> dict[str, int]:
            reading = await asyncio.to_thread(source.read, seed, ready, datetime.now(UTC), auth)
            return reading.per_pod

        async def all_counted() -> bool:
            return await read() == {"a": 2, "b": 1}

        await eventually(all_counted, 10, "the operator to read every pod's connections")


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    (tmp_path / "tls").mkdir()
    cluster = RedisCluster(tmp_path / "tls", tls=True).start()
    acl_user(cluster)
    yield cluster
    cluster.stop()


async def test_a_tls_cluster_is_verified_against_the_ca_and_refused_without_it(
    tls_cluster: RedisCluster, relay_factory
) -> None:
    """Every node TLS only (clients, replication, bus); the relays verify each node they
    learn from the slot map against RELAY_REDIS_CA_FILE (the certificate names
    127.0.0.1, the address the nodes announce); without the CA a relay stays unready."""
    cluster = tls_cluster
    assert cluster.ca is not None
    seed = [cluster.urls[0]]
    env = {**relay_env(), contract.ENV_REDIS_CA_FILE: str(cluster.ca)}
    pod_a, pod_b = (relay_factory(name, redis_urls=seed, env=env) for name in "ab")
    rooms = rooms_on_every_master(cluster, 1, "secure:")
    async with RelayClient(pod_a.url) as publisher, RelayClient(pod_b.url) as player:
        for room in rooms:
            await player.join(room)
            await publisher.publish(room, "over tls", id=f"t-{room}")
        got = await events(player, len(rooms))
        assert sorted(m["room"] for m in got) == sorted(rooms)
    blind = relay_factory("blind", redis_urls=seed, env=relay_env(), ready=False)
    await eventually(
        lambda: "certificate verify failed" in blind.log.read_text(),
        15,
        "the relay without the CA to say why",
    )
    assert blind.status() == 503


async def test_a_relay_not_told_it_is_a_cluster_stays_unready_and_says_what_to_set(
    cluster: RedisCluster, relay_factory
) -> None:
    env = {k: v for k, v in relay_env().items() if k != contract.ENV_REDIS_CLUSTER}
    pod = relay_factory("plain", redis_urls=[cluster.nodes[0].url], env=env, ready=False)
    await eventually(lambda: "set RELAY_REDIS_CLUSTER=true" in pod.log.read_text(), 10, "the hint")
    assert pod.status() == 503
    assert pod.log.read_text().count("set RELAY_REDIS_CLUSTER=true") == 1  # once


def test_shard_commands_say_there_is_no_shard_map_in_cluster_mode(
    cluster: RedisCluster, relay_factory
) -> None:
    pod = relay_factory("a", redis_urls=[cluster.nodes[0].url], env=relay_env())
    shown = pod.cli("shards", "show")
    assert shown.returncode == 2
    assert "RELAY_REDIS_CLUSTER=true" in shown.stderr and "no shard map" in shown.stderr


PRESENCE_SECRET = "s" * 40
API_KEY = "k" * 40
REPORT_SECONDS = 0.5
DEAD_AFTER = 3 * REPORT_SECONDS


def presence_token(sub: str) -> str:
    return auth.mint(PRESENCE_SECRET, subject=sub, join=["*"], publish=["*"], ttl=600)


async def presence_changes(
    client: RelayClient, until: Callable[[list[dict[str, Any]]], bool], timeout: float
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not until(seen):
        message = await client.receive(max(0.01, deadline - time.monotonic()))
        if message["op"] == "presence":
            seen.append(message)
    return seen


def conns(messages: list[dict[str, Any]], kind: str) -> list[str]:
    return [m["conn"] for message in messages for m in message[kind]]


async def test_presence_node_reports_and_a_dead_pods_members_on_a_cluster(
    cluster: RedisCluster, relay_factory
) -> None:
    """The cluster keys under one hash tag at work: node reports (GET /nodes), the alive
    set and a SIGKILLed pod's members reaped by a survivor (its Lua script on the node of
    that slot), members in rooms on every master."""
    env = {
        **relay_env(),
        "RELAY_AUTH": "jwt",
        "RELAY_JWT_SECRET": PRESENCE_SECRET,
        "RELAY_API_KEYS": API_KEY,
        "RELAY_ROOMS": '[{"match": "lobby:*", "presence": true}]',
        "RELAY_LOAD_REPORT_SECONDS": str(REPORT_SECONDS),
    }
    seed = [cluster.nodes[0].url]
    a, b = (relay_factory(name, redis_urls=seed, env=env) for name in "ab")
    rooms = rooms_on_every_master(cluster, 1, "lobby:")
    async with contextlib.AsyncExitStack() as stack:
        ann, bob = [
            await stack.enter_async_context(RelayClient(pod.url, token=presence_token(sub)))
            for pod, sub in ((a, "ann"), (b, "bob"))
        ]
        for room in rooms:
            await ann.join(room)
            await bob.join(room)
        bob_conn = bob.welcome["session"]
        await presence_changes(ann, lambda seen: conns(seen, "joins").count(bob_conn) >= 3, 5)
        for room in rooms:
            reply = await ann.request({"op": "presence", "room": room})
            assert {(m["sub"], m["node"]) for m in reply["members"]} == {
                ("ann", "a"),
                ("bob", "b"),
            }
        async with AsyncRelayApi(a.admin, api_key=API_KEY) as api:

            async def both_listed() -> bool:
                return {node.node for node in (await api.nodes()).nodes} == {"a", "b"}

            await eventually(both_listed, 5, "both node reports in GET /nodes")
        b.kill()  # its members never leave by themselves: a survivor announces them
        seen = await presence_changes(
            ann, lambda s: conns(s, "leaves").count(bob_conn) >= 3, DEAD_AFTER + 3
        )
        assert sorted(conns(seen, "leaves")) == [bob_conn] * 3
        for room in rooms:
            reply = await ann.request({"op": "presence", "room": room})
            assert reply["count"] == 1


class Subscriber:
    """A broker's deliveries of one room, and the history read a resync asks for (what
    relay.hub does with a gap: read the history after the last offset it has)."""

    def __init__(self, broker: RedisClusterBroker, room: str) -> None:
        self.broker, self.room = broker, room
        self.offsets: list[int] = []
        self.resyncs = 0
        self._healing: set[asyncio.Task[None]] = set()
        broker.set_listener(self._delivered, self._resync)

    def _delivered(self, delivery: Delivery) -> None:
        if delivery.room == self.room and delivery.offset is not None:
            self.offsets.append(delivery.offset)

    def _resync(self, rooms: list[str]) -> None:
        if self.room in rooms:
            self.resyncs += 1
            task = asyncio.create_task(self._heal())
            self._healing.add(task)
            task.add_done_callback(self._healing.discard)

    async def _heal(self) -> None:
        # From the first offset missing (later ones may have arrived live meanwhile).
        have, after = set(self.offsets), 0
        while after + 1 in have:
            after += 1
        for _ in range(50):
            with contextlib.suppress(BrokerUnavailable):
                history = await self.broker.history(self.room, after, DURABLE)
                self.offsets.extend(d.offset for d in history.entries if d.offset is not None)
                return
            await asyncio.sleep(0.1)  # a retry pause, as the hub's heal has


async def publish_acked(broker: RedisClusterBroker, room: str, n: int) -> tuple[int, str]:
    """Publish with id `n` until acked (the client's retry with the same id)."""
    for _ in range(200):
        try:
            result = await broker.publish(
                room, n, ts=1_700_000_000_000, policy=DURABLE, msg_id=f"m{n}"
            )
        except BrokerUnavailable:
            await asyncio.sleep(0.02)  # a client's retry pause, not a synchronisation
            continue
        assert result.offset is not None and result.epoch is not None
        return result.offset, result.epoch
    raise AssertionError(f"publish {n} to {room} was never acked")


@contextlib.asynccontextmanager
async def brokers(
    cluster: RedisCluster, *names: str, ack_replicas: int = 0
) -> AsyncIterator[list[RedisClusterBroker]]:
    # A live seed: a test may leave a killed master behind.
    seed = next(n for n in cluster.nodes if n.proc is not None and n.proc.poll() is None)
    made = [
        RedisClusterBroker(
            [seed.url],
            name,
            RedisOptions(
                connector(),
                timeout=1.0,
                probe_interval=0.3,
                probe_timeout=1.5,
                ack_replicas=ack_replicas,
                ack_timeout=0.5,
            ),
            refresh_seconds=1.0,
        )
        for name in names
    ]
    for broker in made:
        await broker.start()
    try:
        for broker in made:
            await eventually(lambda b=broker: b.ready, 15, "the cluster broker to be ready")
        yield made
    finally:
        for broker in made:
            await broker.close()


async def test_a_rebuilt_pubsub_connection_resubscribes_many_rooms_of_many_slots(
    cluster: RedisCluster,
) -> None:
    """A node's Pub/Sub connection rebuilt (CLIENT KILL) resubscribes every room it had:
    one SSUBSCRIBE per slot (one naming two slots is refused whole, CROSSSLOT)."""
    rooms = rooms_on_every_master(cluster, 20, "many:")
    async with brokers(cluster, "pub", "sub") as (publisher, subscriber):
        got: set[str] = set()
        subscriber.set_listener(lambda delivery: got.add(delivery.room))
        for room in rooms:
            await subscriber.subscribe(room)
        for node in cluster.nodes:
            cluster.client(node).execute_command("CLIENT KILL TYPE pubsub")

        def subscribed_again() -> bool:
            channels: set[bytes] = set()
            for node in cluster.nodes:
                channels.update(cluster.client(node).execute_command("PUBSUB SHARDCHANNELS"))
            return {keys.channel(room) for room in rooms} <= channels

        await eventually(subscribed_again, 15, "every room subscribed again")
        for room in rooms:
            await publish_acked(publisher, room, 1)
        await eventually(lambda: got == set(rooms), 5, "an event of every room")


async def test_a_slot_migration_under_publishes_keeps_the_epoch_and_every_acked_event(
    cluster: RedisCluster,
) -> None:
    room = "migrating"
    slot = keys.slot_of_room(room)
    async with brokers(cluster, "pub", "sub") as (publisher, subscriber_broker):
        subscriber = Subscriber(subscriber_broker, room)
        await subscriber_broker.subscribe(room)
        source = cluster.owner(slot)
        target = next(n for n in cluster.nodes if n.port in cluster.master_ports() - {source.port})
        acked: list[tuple[int, str]] = []
        migrated = asyncio.Event()

        async def publish_through() -> None:
            n = 0
            while not migrated.is_set() or n < len(acked) + 50:
                acked.append(await publish_acked(publisher, room, n))
                n += 1
                if n >= 2000:
                    break

        publishing = asyncio.create_task(publish_through())
        await eventually(lambda: len(acked) >= 50, 10, "publishes before the migration")
        await asyncio.to_thread(cluster.migrate_slot, slot, target)
        migrated.set()
        await publishing
        assert cluster.owner(slot) is target
        # Both relay servers followed the slot to its new owner.
        assert publisher.placement(room) == subscriber_broker.placement(room)
        assert subscriber_broker.placement(room).endswith(f":{target.port}")
        # MIGRATE moved the room whole: one epoch, offsets 1..N, none lost, none twice.
        epochs = {epoch for _, epoch in acked}
        assert len(epochs) == 1, epochs
        assert [offset for offset, _ in acked] == list(range(1, len(acked) + 1))
        history = await subscriber_broker.history(room, 0, DURABLE)
        assert history.epoch in epochs and history.top == len(acked)
        assert [d.offset for d in history.entries] == list(range(1, len(acked) + 1))
        # The subscriber lost its subscription on the source (sunsubscribe), subscribed
        # on the target and read what it missed: every acked event, exactly once.
        every = list(range(1, len(acked) + 1))
        try:
            await eventually(
                lambda: sorted(set(subscriber.offsets)) == every, 10, "every acked event"
            )
        except TimeoutError as exc:
            missing = sorted(set(every) - set(subscriber.offsets))
            raise AssertionError(
                f"{len(missing)} acked events never reached the subscriber: {missing[:20]}; "
                f"{subscriber.resyncs} resyncs"
            ) from exc
        assert subscriber.resyncs >= 1
        # Live again on the target: a new event arrives without any history read.
        resyncs = subscriber.resyncs
        offset, _ = await publish_acked(publisher, room, 10_000)
        await eventually(lambda: offset in subscriber.offsets, 5, "a live event after the move")
        assert subscriber.resyncs == resyncs


async def test_a_member_on_another_relay_gets_every_event_in_order_across_a_migration(
    cluster: RedisCluster, relay_factory
) -> None:
    """The same migration through the relays: the player's relay loses the room's
    subscription on the old owner, subscribes on the new one and its hub heals from the
    history; the player sees offsets 1..N in order, one epoch, none twice."""
    seed = [cluster.nodes[0].url]
    env = {**relay_env(), "RELAY_PUBLISH_RATE": "10000", "RELAY_PUBLISH_BURST": "10000"}
    pod_a, pod_b = (relay_factory(name, redis_urls=seed, env=env) for name in "ab")
    room = "live-migration"
    slot = keys.slot_of_room(room)
    source = cluster.owner(slot)
    target = next(n for n in cluster.nodes if n.port in cluster.master_ports() - {source.port})
    async with RelayClient(pod_a.url) as publisher, RelayClient(pod_b.url) as player:
        epoch = (await player.join(room))["epoch"]
        acked: list[int] = []

        async def publish(n: int) -> None:
            ack = await publish_until_acked(publisher, room, n, f"p{n}")
            acked.append(ack["offset"])

        for n in range(30):
            await publish(n)
        migrating = asyncio.create_task(asyncio.to_thread(cluster.migrate_slot, slot, target))
        n = 30
        while not migrating.done():
            await publish(n)
            n += 1
        await migrating
        for after in range(n, n + 30):
            await publish(after)
        assert cluster.owner(slot) is target
        assert acked == list(range(1, len(acked) + 1))
        received = []
        while len(received) < len(acked):
            message = await player.receive(timeout=10)
            if message["op"] == "event":
                received.append(message)
        assert [m["offset"] for m in received] == acked
        assert [m["data"] for m in received] == list(range(len(acked)))
        assert {m.get("epoch", epoch) for m in received} == {epoch}
    # The player's relay did move the subscription (not a lucky ordering).
    assert "Redis Cluster slots moved: 1 rooms resubscribed" in pod_b.log.read_text()


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """3 masters with one replica each (function scope: the test kills a master)."""
    cluster = RedisCluster(tmp_path, replicas=1).start()
    acl_user(cluster)
    yield cluster
    cluster.stop()


async def test_a_failover_starts_a_new_epoch_and_resumes_are_not_recovered(
    replicated_cluster: RedisCluster, relay_factory, tmp_path: Path
) -> None:
    cluster = replicated_cluster
    seeds = [node.url for node in cluster.nodes[:3]]
    pod, other = (relay_factory(name, redis_urls=seeds, env=relay_env()) for name in "ab")
    room = "duel"
    master = cluster.owner(keys.slot_of_room(room))
    replica_ids = {
        _text(r[2])
        for start, end, _, *rs in cluster.client(master).execute_command("CLUSTER SLOTS")
        if start <= keys.slot_of_room(room) <= end
        for r in rs
    }
    async with RelayClient(pod.url) as publisher:
        epoch = (await publisher.join(room))["epoch"]
        acks = [await publisher.publish(room, n, id=f"e{n}") for n in range(1, 6)]
        last = max(ack["offset"] for ack in acks if ack)
        assert last == 5
        master.kill()  # SIGKILL: whatever its replica had not received is gone
        promoted = await asyncio.to_thread(cluster.wait_failover, master)
        assert cluster.node_id(promoted) in replica_ids
        after = await publish_until_acked(publisher, room, "after", "after-failover")
    async with RelayClient(other.url) as resuming:  # on the relay that did not publish
        # That relay follows the failover on its own: until it has, the room is
        # `unavailable` there (never served from the old map), and the client retries.
        joined = await join_until_available(resuming, room, since={"epoch": epoch, "offset": last})
        # The promoted replica may or may not have had 1-5: either way, not the same
        # history as far as any client can tell: a new epoch, not recovered.
        assert joined["recovered"] is False
        assert joined["epoch"] != epoch
        assert joined["offset"] >= after["offset"]
    for relay in (pod, other):
        await eventually(lambda r=relay: r.status() == 200, 15, "the relays to be ready again")
    logs = [relay.log.read_text() for relay in (pod, other)]
    # Both relays saw the failover; exactly one started the new epochs (the claim), the
    # other waited for it to be done.
    assert all("Redis Cluster failover" in text for text in logs)
    assert sum(text.count("rooms start epoch") for text in logs) == 1
    for node in cluster.nodes:
        if node.proc is not None and node.proc.poll() is None:
            assert cluster.client(node).execute_command("ACL", "LOG") == []
    redis_acl.no_secret_in_logs(tmp_path, [RELAY_PASSWORD])


async def test_a_master_killed_under_load_never_leaves_a_silent_gap(
    replicated_cluster: RedisCluster, relay_factory
) -> None:
    """Publishers on every master's rooms through one relay, a master SIGKILLed midway;
    then a client on the other relay resumes every room from its first acked position:
    either recovered with every acked event after it, in order, none twice (rooms of the
    live masters), or told `recovered: false` with a new epoch (the killed master's)."""
    cluster = replicated_cluster
    env = {
        **relay_env(),
        "RELAY_PUBLISH_RATE": "10000",
        "RELAY_PUBLISH_BURST": "10000",
        "RELAY_ROOMS": '[{"match": "*", "historySize": 100000}]',
    }
    seeds = [node.url for node in cluster.nodes[:3]]
    pod_a, pod_b = (relay_factory(name, redis_urls=seeds, env=env) for name in "ab")
    rooms = rooms_on_every_master(cluster, 2, "load:")
    victim = cluster.owner(keys.slot_of_room(rooms[0]))
    victims = {room for room in rooms if cluster.owner(keys.slot_of_room(room)) is victim}
    async with RelayClient(pod_b.url) as first:
        epochs = {room: (await first.join(room))["epoch"] for room in rooms}
    acked: dict[str, list[int]] = {room: [] for room in rooms}
    stop = asyncio.Event()

    async def publish(room: str) -> None:
        async with RelayClient(pod_a.url) as client:
            n = 0
            while not stop.is_set():
                ack = await publish_until_acked(client, room, n, f"{room}-{n}")
                acked[room].append(ack["offset"])
                n += 1

    publishers = [asyncio.create_task(publish(room)) for room in rooms]
    await eventually(lambda: all(len(a) >= 20 for a in acked.values()), 15, "publishes")
    victim.kill()
    await asyncio.to_thread(cluster.wait_failover, victim)
    counts = {room: len(a) for room, a in acked.items()}
    await eventually(
        lambda: all(len(a) >= counts[room] + 20 for room, a in acked.items()),
        20,
        "publishes after the failover",
    )
    stop.set()
    await asyncio.gather(*publishers)
    async with RelayClient(pod_b.url) as resuming:
        for room in rooms:
            offsets = acked[room]
            since = {"epoch": epochs[room], "offset": offsets[0]}
            joined = await join_until_available(resuming, room, since=since)
            if room in victims:
                # The promoted replica may lack acked events: a new epoch, not recovered.
                assert joined["recovered"] is False and joined["epoch"] != epochs[room]
            else:
                # The same history: every acked event after the first, in order, once.
                assert joined["recovered"] is True, room
                assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
                replayed = [(await resuming.receive(timeout=5))["offset"] for _ in offsets[1:]]
                assert replayed == offsets[1:], room
            await resuming.leave(room)


async def test_a_manual_failover_moves_subscriptions_and_starts_a_new_epoch(
    replicated_cluster: RedisCluster,
) -> None:
    """CLUSTER FAILOVER on a replica (a planned switch: the replica catches up first): the
    old master turns replica and unsubscribes the room's channel; the relay follows the
    slot to the promoted node, gives its rooms a new epoch (the relay cannot tell a
    planned switch from a crash by the slot map, so it assumes the worst), and the
    subscriber is live there."""
    cluster = replicated_cluster
    room = "planned"
    slot = keys.slot_of_room(room)
    async with brokers(cluster, "pub", "sub") as (publisher, subscriber_broker):
        subscriber = Subscriber(subscriber_broker, room)
        await subscriber_broker.subscribe(room)
        before = [await publish_acked(publisher, room, n) for n in range(5)]
        await eventually(lambda: len(subscriber.offsets) == 5, 5, "the first events")
        master = cluster.owner(slot)
        replica = next(
            node
            for node in cluster.nodes
            if node is not master
            and cluster.client(node).execute_command("ROLE")[0] == b"slave"
            and int(cluster.client(node).execute_command("ROLE")[2]) == master.port
        )
        assert cluster.client(replica).execute_command("CLUSTER FAILOVER")
        await eventually(lambda: cluster.owner(slot) is replica, 15, "the replica to take the slot")
        offset, epoch = await publish_acked(publisher, room, 5)
        assert epoch != before[0][1]  # a new epoch: resumes from the old one are refused
        assert offset == 6  # the history itself was complete (a planned switch)
        await eventually(lambda: offset in subscriber.offsets, 10, "a live event after")
        assert subscriber_broker.placement(room).endswith(f":{replica.port}")
        assert publisher.failovers == subscriber_broker.failovers == 1


async def test_ack_replicas_waits_for_the_replica_of_the_rooms_node(
    replicated_cluster: RedisCluster,
) -> None:
    """RELAY_REDIS_ACK_REPLICAS on a cluster: a durable publish is acked once the replica of
    the room's master has it (WAIT on that node); with the replica stopped, not acked."""
    cluster = replicated_cluster
    room = "acked"
    master = cluster.owner(keys.slot_of_room(room))
    replica = next(
        node
        for node in cluster.nodes
        if cluster.client(node).execute_command("ROLE")[0] == b"slave"
        and int(cluster.client(node).execute_command("ROLE")[2]) == master.port
    )
    async with brokers(cluster, "acks", ack_replicas=1) as (broker,):
        offset, _ = await publish_acked(broker, room, 1)
        # Acked: the replica has it already (read there, no wait).
        on_replica = cluster.client(replica)
        on_replica.execute_command("READONLY")
        assert int(on_replica.hget(keys.meta(room), "offset") or 0) == offset
        assert replica.proc is not None
        os.kill(replica.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(BrokerUnavailable, match="replica"):
                await broker.publish(room, 2, ts=1, policy=DURABLE, msg_id="m2")
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)


async def join_until_available(
    client: RelayClient, room: str, since: dict[str, Any]
) -> dict[str, Any]:
    for _ in range(100):
        try:
            return await client.join(room, since=since)
        except UnavailableError:
            await asyncio.sleep(0.2)  # a client's retry pause, not a synchronisation
    raise AssertionError(f"the join of {room} stayed unavailable")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- review (issue #14, review-cluster branch) ------------------------------------------
# Each test below proves a hole found in review (the first one was a known limit until
# the history marker: relay.broker.history).


def _replica_of(cluster: RedisCluster, master: Any) -> Any:
    return next(
        node
        for node in cluster.nodes
        if node is not master
        and cluster.client(node).execute_command("ROLE")[0] == b"slave"
        and int(cluster.client(node).execute_command("ROLE")[2]) == master.port
    )


async def history_when_available(broker: RedisClusterBroker, room: str, after: int) -> Any:
    for _ in range(100):
        with contextlib.suppress(BrokerUnavailable):
            return await broker.history(room, after, DURABLE)
        await asyncio.sleep(0.1)  # a client's retry pause, not a synchronisation
    raise AssertionError(f"the history of {room} stayed unavailable")


async def promote_a_replica_lacking_acked_events(
    cluster: RedisCluster, room: str
) -> tuple[str, Any]:
    """Events 1..3 of `room` acked and replicated, 4..6 acked on its master only (the
    replica stopped and cut off), the master SIGKILLed and the replica promoted, by a
    relay server closed since: returns the room's epoch then and the promoted replica."""
    master = cluster.owner(keys.slot_of_room(room))
    replica = _replica_of(cluster, master)
    assert replica.proc is not None
    async with brokers(cluster, "before") as (broker,):
        kept = [await publish_acked(broker, room, n) for n in range(3)]
        assert cluster.client(master).execute_command("WAIT", 1, 5000) == 1
        os.kill(replica.proc.pid, signal.SIGSTOP)
        # The replication link cut while the replica cannot reconnect: 4..6 stay on the
        # master (a stopped replica alone would still read them from its socket buffer).
        cluster.client(master).execute_command("CLIENT KILL TYPE replica")
        try:
            lost = [await publish_acked(broker, room, n) for n in range(3, 6)]
        except BaseException:
            os.kill(replica.proc.pid, signal.SIGCONT)
            raise
    assert [offset for offset, _ in kept + lost] == [1, 2, 3, 4, 5, 6]
    master.kill()  # the replica never received 4..6
    os.kill(replica.proc.pid, signal.SIGCONT)
    assert await asyncio.to_thread(cluster.wait_failover, master) is replica
    return kept[0][1], replica


async def test_review_a_relay_that_missed_the_failover_still_changes_the_epoch(
    replicated_cluster: RedisCluster,
) -> None:
    """REVIEW (high, fixed by the history marker): the fence ran only when a relay server
    compared a slot map with the one it read before, so a relay server (re)started while
    its room's master failed over installed the promoted replica's map as is and served
    the replica's shorter history under the old epoch. Here: 3 events acked and
    replicated, the replica stopped, 3 more acked (on the master only), the master
    SIGKILLed, the replica promoted; then a fresh relay server (every relay restarted
    meanwhile, e.g. a rollout or a single pod) reads the room. Before the marker: acked
    events 4..6 gone under the same epoch, a resume from offset 3 `recovered: true` with
    nothing, the next publish reusing offset 4: a silent gap (docs/protocol.md: an acked
    event is there or the epoch changes). Now the fresh server finds the old master's
    marker on the promoted replica (its `master_replid2`) and starts new epochs."""
    cluster = replicated_cluster
    room = "missed-failover"
    epoch, _ = await promote_a_replica_lacking_acked_events(cluster, room)
    async with brokers(cluster, "after") as (fresh,):
        history = await history_when_available(fresh, room, 3)
        # Either the acked events are there, or the room's epoch changed.
        assert history.epoch != epoch or history.top >= 6, (
            f"acked offsets 4..6 lost under the same epoch {epoch}: top {history.top}"
        )
        # The replica lacked them: the epoch changed (seen by the marker alone).
        assert history.epoch != epoch and history.top == 3
        assert fresh.failovers == 1


async def test_review_a_fence_that_failed_midway_is_finished_by_its_claimer_at_once(
    replicated_cluster: RedisCluster,
) -> None:
    """REVIEW (medium, availability): a fence that fails after its claim (here the ACL of
    the promoted node refuses HSET until the test grants it again; in production a lost
    connection mid-SCAN) left the claimer waiting for its own claim, "another relay server
    is starting its rooms' new epochs", until the claim expired (FENCE_SECONDS, 30 s):
    every room of the promoted master `unavailable` on every relay for that long. The
    claimer now finishes its own claim on the next slot map read."""
    cluster = replicated_cluster
    room = "fence-retry"
    master = cluster.owner(keys.slot_of_room(room))
    replica = _replica_of(cluster, master)
    promoted = cluster.client(replica)
    async with brokers(cluster, "solo") as (broker,):
        _, epoch = await publish_acked(broker, room, 1)
        promoted.execute_command("ACL", "SETUSER", contract.RELAY_REDIS_USER, "-hset")
        master.kill()
        assert await asyncio.to_thread(cluster.wait_failover, master) is replica
        claim = f"{contract.CLUSTER_KEY_PREFIX}failover:*"
        await eventually(lambda: promoted.keys(claim) != [], 15, "the fence's claim")
        assert [promoted.get(name) for name in promoted.keys(claim)] == [b"solo"]
        promoted.execute_command("ACL", "SETUSER", contract.RELAY_REDIS_USER, "+hset")
        started = time.monotonic()
        while True:  # the client's retries, until acked (or well past the claim's 30 s)
            try:
                result = await broker.publish(room, 2, ts=1, policy=DURABLE, msg_id="m2")
                break
            except BrokerUnavailable:
                assert time.monotonic() - started < 45, "never acked"
                await asyncio.sleep(0.1)  # a client's retry pause, not a synchronisation
        # A slot map read or two (refresh pause 0.2 s, 1 s here), not the claim's 30 s.
        assert time.monotonic() - started < 10, f"acked after {time.monotonic() - started:.1f} s"
        assert result.epoch != epoch


async def test_review_a_relay_that_cannot_fence_one_node_still_follows_a_migration(
    replicated_cluster: RedisCluster,
) -> None:
    """REVIEW (medium-high): `refresh` installed nothing while any fence failed, so a relay
    server that cannot fence one promoted master (here its ACL user may not SET there; in
    production a partition from that node, an ACL or certificate that differs on it) kept
    its old slot map for every slot: a room of another master that migrated stayed
    unsubscribed (the old owner's `sunsubscribe` left its channel homeless), its member
    never got the other relay's acked event, and the relay stayed ready. Now the map is
    installed for every slot but the unfenced node's: the member gets the event; the
    unfenced node's rooms are refused and the node reported down. (The promoted node
    refuses this user INFO: with the history marker, a SET refused there would no longer
    keep this server from the node once the other relay server has fenced and marked it;
    without INFO it cannot check the node's history at all.)"""
    cluster = replicated_cluster
    stuck_password = "relay-stuck-" + token_urlsafe(16)
    for node in cluster.nodes:
        cluster.client(node).execute_command(
            "ACL", "SETUSER", "relay-stuck", "reset", "on", f">{stuck_password}",
            *contract.RELAY_CLUSTER_ACL_RULES,
        )  # fmt: skip
    control = cluster.owner(key_slot(keys.SLOTTED.alive.encode()))
    masters = [n for n in cluster.nodes if n.port in cluster.master_ports()]
    room = next(
        f"deaf:{n}"
        for n in range(10_000)
        if cluster.owner(keys.slot_of_room(f"deaf:{n}")) is not control
    )
    home = cluster.owner(keys.slot_of_room(room))
    victim = next(n for n in masters if n not in (control, home))
    victim_room = next(
        f"victim:{n}"
        for n in range(10_000)
        if cluster.owner(keys.slot_of_room(f"victim:{n}")) is victim
    )
    cluster.client(_replica_of(cluster, victim)).execute_command(
        "ACL", "SETUSER", "relay-stuck", "-info"
    )
    stuck = RedisClusterBroker(
        [cluster.nodes[0].url],
        "stuck",
        RedisOptions(
            Connector(username="relay-stuck", password=SecretStr(stuck_password)),
            timeout=1.0,
            probe_interval=0.3,
            probe_timeout=1.5,
        ),
        refresh_seconds=1.0,
    )
    got: list[Delivery] = []
    stuck.set_listener(got.append)
    await stuck.start()
    try:
        await eventually(lambda: stuck.ready, 15, "the stuck broker to be ready")
        await stuck.subscribe(room)
        async with brokers(cluster, "pub") as (publisher,):
            victim.kill()
            await asyncio.to_thread(cluster.wait_failover, victim)
            await eventually(lambda: publisher.failovers == 1, 15, "the publisher's fence")
            await asyncio.to_thread(cluster.migrate_slot, keys.slot_of_room(room), control)
            offset, _ = await publish_acked(publisher, room, 1)
            assert publisher.placement(room).endswith(f":{control.port}")

            def delivered_or_unready() -> bool:
                return any(d.offset == offset for d in got) or not stuck.ready

            await eventually(
                delivered_or_unready, 15, "the acked event at the member, or the relay unready"
            )
            assert any(d.offset == offset for d in got), "unready, but the member is deaf"
            # The node it cannot fence: refused here (no write under the old epochs) and
            # reported down, not silently served.
            promoted = publisher.placement(victim_room)
            assert stuck.shards()[promoted] is False
            with pytest.raises(BrokerUnavailable, match="new epochs are not started"):
                await stuck.publish(victim_room, 1, ts=1, policy=DURABLE, msg_id="v1")
    finally:
        await stuck.close()


@pytest.fixture
def aof_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """3 masters, each with an append-only file (appendfsync always): a node restarted
    cleanly loses nothing (function scope: the test restarts a node)."""
    cluster = RedisCluster(tmp_path, aof=True).start()
    acl_user(cluster)
    yield cluster
    cluster.stop()


def _lowest_slot(cluster: RedisCluster, node: Any) -> int:
    ranges = cluster.client(node).execute_command("CLUSTER SLOTS")
    return min(int(start) for start, _, master, *_ in ranges if int(master[1]) == node.port)


async def test_a_master_restarted_cleanly_keeps_its_rooms_epochs(
    aof_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A node's replication id changes on every restart, a clean SHUTDOWN too: its marker
    then names neither of its ids, which is a restart, not a promotion. A running relay
    server checks the node again when its session ends, one started later on first
    sight: both keep the rooms' epochs (no needless `recovered: false`) and renew the
    marker, so a promotion later is still recognised (`master_replid2`)."""
    caplog.set_level(logging.INFO, logger="relay.broker.slots")
    cluster = aof_cluster
    room = "restarted"
    node = cluster.owner(keys.slot_of_room(room))
    marker = keys.node_history_marker(keys.slot_tag(_lowest_slot(cluster, node)))

    def replid() -> bytes:
        """The marker's value: the history, and the node that wrote it."""
        history = str(cluster.client(node).info("replication")["master_replid"])
        return f"{history} {cluster.node_id(node)}".encode()

    def marked(value: bytes) -> bool:
        return cluster.client(node).get(marker) == value

    first = replid()
    async with brokers(cluster, "running") as (broker,):
        assert marked(first)  # checked (and marked) before the broker was ready
        acked = [await publish_acked(broker, room, n) for n in range(3)]
        epoch = acked[0][1]
        await asyncio.to_thread(cluster.restart, node)
        acl_user(cluster)  # ACL SETUSER users do not survive a restart
        second = replid()
        assert second != first  # what makes a restart look like another history
        await eventually(lambda: marked(second), 20, "the marker renewed by the running relay")
        assert await publish_acked(broker, room, 3) == (4, epoch)
        assert broker.failovers == 0
    await asyncio.to_thread(cluster.restart, node)
    acl_user(cluster)
    third = replid()
    async with brokers(cluster, "started-later") as (fresh,):
        assert marked(third)
        history = await history_when_available(fresh, room, 0)
        assert history.epoch == epoch and [d.offset for d in history.entries] == [1, 2, 3, 4]
        assert fresh.failovers == 0
    assert caplog.text.count("restarted (history") == 2
    assert "rooms start epoch" not in caplog.text


async def test_the_marker_follows_its_node_when_its_slot_migrates_away(
    replicated_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The marker lives in its node's lowest slot, and a slot can migrate: after a failover
    (the promoted node's `master_replid2` set, so a missing marker would mean new epochs)
    its lowest slot is moved to another master. The running relay server, which checked
    this very history, marks the node again in its new lowest slot: no second new epoch;
    and a relay server started afterwards finds every marker in place: none either."""
    caplog.set_level(logging.INFO, logger="relay.broker.slots")
    cluster = replicated_cluster
    room = "migrated-marker"
    master = cluster.owner(keys.slot_of_room(room))
    async with brokers(cluster, "watching") as (broker,):
        await publish_acked(broker, room, 0)
        master.kill()
        promoted = await asyncio.to_thread(cluster.wait_failover, master)
        _, epoch = await publish_acked(broker, room, 1)  # the new epoch, after the fence
        assert broker.failovers == 1
        lowest = _lowest_slot(cluster, promoted)
        assert lowest != keys.slot_of_room(room)
        other = next(
            n for n in cluster.nodes if n.port in cluster.master_ports() and n is not promoted
        )
        await asyncio.to_thread(cluster.migrate_slot, lowest, other)
        moved_to = keys.node_history_marker(keys.slot_tag(_lowest_slot(cluster, promoted)))
        history = str(cluster.client(promoted).info("replication")["master_replid"])
        replid = f"{history} {cluster.node_id(promoted)}".encode()

        def marked_again() -> bool:
            return cluster.client(promoted).get(moved_to) == replid

        await eventually(marked_again, 15, "the marker in the node's new lowest slot")
        assert await publish_acked(broker, room, 2) == (3, epoch)
    async with brokers(cluster, "later") as (fresh,):
        history = await history_when_available(fresh, room, 0)
        assert history.epoch == epoch and history.top == 3
        assert fresh.failovers == 0
    assert caplog.text.count("rooms start epoch") == 1


async def test_review_a_master_back_at_its_address_takes_no_publish_before_its_check(
    replicated_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A master that crashed and came back at its address (no failover: its replica may
    not take over) from an RDB snapshot lacks what was acked after the snapshot, and
    Redis gives it its old id as `master_replid2`: its history check fences it. Its
    Pub/Sub session and publish connection reconnect as soon as it is up: the node was
    checked before, but the server behind the address is not, and a publish meanwhile
    would reuse a lost offset under the old epoch. The check is held back here, so the
    order is deterministic (the Sentinel shard's test has the same shape)."""
    cluster = replicated_cluster
    room = "rdb-restarted"
    node = cluster.owner(keys.slot_of_room(room))
    replica = _replica_of(cluster, node)
    cluster.client(replica).config_set("cluster-replica-no-failover", "yes")
    async with brokers(cluster, "restart") as (broker,):
        address = broker.placement(room)
        acked = [await publish_acked(broker, room, n) for n in range(1, 4)]
        epoch = acked[0][1]
        assert cluster.client(node).save()  # the snapshot has events 1-3
        assert await publish_acked(broker, room, 4) == (4, epoch)  # lost by the crash
        release = asyncio.Event()
        check = broker._check

        async def held(found: Any, slot: int, old: Any) -> None:
            if found.address == address:
                await release.wait()
            await check(found, slot, old)

        monkeypatch.setattr(broker, "_check", held)
        shard = broker._nodes[address]
        node.kill()  # SIGKILL: no snapshot on the way out
        await asyncio.to_thread(node.start)  # the RDB file of the SAVE: events 1-3
        acl_user(cluster)  # ACL SETUSER users do not survive a restart
        assert cluster.owner(keys.slot_of_room(room)) is node  # no failover
        replid2 = str(cluster.client(node).info("replication")["master_replid2"])
        assert replid2.strip("0") != ""  # what the check fences
        await eventually(lambda: shard.ready, 20, "the node's session live again")

        async def refused() -> bool:
            try:
                early = await broker.publish(room, 5, ts=1, policy=DURABLE, msg_id="m5")
            except BrokerUnavailable as exc:
                return "not checked yet" in str(exc)
            raise AssertionError(f"a publish reached the node before its check: {early}")

        await eventually(refused, 15, "a publish refused until the node is checked")
        release.set()
        offset, after = await publish_acked(broker, room, 5)
        assert after != epoch and offset == 4
        assert broker.failovers == 1


@pytest.fixture
def replicated_aof_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """3 masters with one replica each, every node with an append-only file (function
    scope: the test kills a master and restarts its promoted replica)."""
    cluster = RedisCluster(tmp_path, replicas=1, aof=True).start()
    acl_user(cluster)
    yield cluster
    cluster.stop()


async def test_review_a_promoted_replica_restarted_before_any_check_still_changes_the_epoch(
    replicated_aof_cluster: RedisCluster,
) -> None:
    """The replica promoted in place of a master it lacked acked events of, then restarted
    (from its AOF, which leaves no `master_replid2`) before any relay server checked it:
    its marker names the old master's history and its ids say only "restarted", the
    observations of the old master itself restarted. A relay server started afterwards
    (a fleet rolled during the failover) must still change the room's epoch: the marker
    names the node that wrote it, and this node is another one."""
    cluster = replicated_aof_cluster
    room = "promoted-then-restarted"
    epoch, replica = await promote_a_replica_lacking_acked_events(cluster, room)
    replica.stop()  # a clean SHUTDOWN: its AOF has events 1..3
    replica.start()
    await asyncio.to_thread(
        wait_until_live_ok, cluster, "the promoted replica back as the slot's master"
    )
    acl_user_live(cluster)
    replid2 = str(cluster.client(replica).info("replication")["master_replid2"])
    assert replid2.strip("0") == ""  # the restart left no trace of the promotion
    async with brokers(cluster, "after") as (fresh,):
        history = await history_when_available(fresh, room, 3)
        assert history.epoch != epoch or history.top >= 6, (
            f"acked offsets 4..6 lost under the same epoch {epoch}: top {history.top}"
        )
        assert history.epoch != epoch and history.top == 3


def wait_until_live_ok(cluster: RedisCluster, what: str) -> None:
    wait_until(cluster._consistent_live, 30, what)


def acl_user_live(cluster: RedisCluster) -> None:
    """acl_user on the nodes still running (one master stays dead here)."""
    for node in cluster.nodes:
        if node.proc is not None and node.proc.poll() is None:
            cluster.client(node).execute_command(
                "ACL", "SETUSER", contract.RELAY_REDIS_USER, "reset", "on",
                f">{RELAY_PASSWORD}", *contract.RELAY_CLUSTER_ACL_RULES,
            )  # fmt: skip


async def test_review_a_node_whose_marker_is_half_migrated_is_served_after_a_lost_session(
    aof_cluster: RedisCluster,
) -> None:
    """A node's lowest slot migrating away, its marker key already moved (a GET of it on
    the node answers ASK until the slot's SETSLOT NODE), when the node's Pub/Sub session
    ends: the node is refused until checked again, and the check cannot read the marker.
    Its replication id is the one this server checked (no restart): the history is the
    same whatever the marker's slot, so it is served again (the marker follows in the new
    lowest slot once the map names it) rather than refused until the migration ends."""
    cluster = aof_cluster
    room = "half-migrated-marker"
    node = cluster.owner(keys.slot_of_room(room))
    lowest = _lowest_slot(cluster, node)
    assert lowest != keys.slot_of_room(room)
    marker = keys.node_history_marker(keys.slot_tag(lowest))
    target = next(n for n in cluster.nodes if n is not node)
    source, dst = cluster.client(node), cluster.client(target)
    async with brokers(cluster, "migrating") as (broker,):
        _, epoch = await publish_acked(broker, room, 1)
        address = broker.placement(room)
        ended = broker._session_ends.get(address, 0)
        dst.execute_command("CLUSTER SETSLOT", lowest, "IMPORTING", cluster.node_id(node))
        source.execute_command("CLUSTER SETSLOT", lowest, "MIGRATING", cluster.node_id(target))
        source.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", marker)
        with pytest.raises(redis.exceptions.AskError):
            source.get(marker)
        source.execute_command("CLIENT KILL TYPE pubsub")  # the relay's session ends
        await eventually(
            lambda: broker._session_ends.get(address, 0) > ended, 10, "the session's end seen"
        )
        assert await publish_acked(broker, room, 2) == (2, epoch)
