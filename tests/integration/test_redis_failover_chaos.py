"""Chaos: the master of a Sentinel-run shard is SIGKILLed while 20 clients publish and resume
(issue 14, "High availability").

Real processes: a master and a replica (the operator's ACL file, support.sentinel), three
Sentinels (quorum 2), two relay servers following the shard through them, and 20 clients of
the project's Python client, each in two of four durable rooms, publishing with ids to one.
Mid-run the replica is cut off from the master (its replication link is killed and it cannot
log in again: a partition between the two, the Sentinels still reach both), the master is
SIGKILLed while the replica is behind, and half the clients drop their connection (they
resume with `since`). Once the Sentinels have promoted the replica, the old master comes
back as its replica (as the operator's start script does: it asks the Sentinels first).

What must hold, for every client in every room (docs/protocol.md, Recovery):
- its events come in offset order with no gap and no duplicate, except where it was told
  the history broke: a `Lost` (`recovered: false`), which the failover's new epoch brings;
  never a silent gap; and at the end it is at the room's last event;
- every publish is acked once and every id is stored at most once;
- with ackReplicas 1: every event acked to its publisher is on the promoted master (zero
  loss of acked events). With 0 the master acks alone what the replica never got: those
  events are lost (the run checks it did lose some, so the scenario bites), and every
  client of those rooms was told.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
import redis

from gamecluster_client import Ack, Client, Event, Lost
from relay import contract
from relay.broker import envelope, keys
from support import redis_acl
from support.processes import LOOPBACK, RedisProcess, stop_process, wait_until
from support.sentinel import FAILOVER_SECONDS, MASTER, SentinelProcess, replicated
from support.waiting import eventually

pytestmark = pytest.mark.integration

ROOMS = [f"ha:{n}" for n in range(4)]
CLIENTS = 20
EVENTS_PER_CLIENT = 60
PACE_SECONDS = 0.02
"""Between two rounds of publishes (one per client): about 1,000 events/s in all."""
KILL_AT = 0.3
"""Share of the publishes acked when the replica falls behind and the master is killed."""
BEHIND_ACKS = 50
"""Acks (by the master alone, with ackReplicas 0) while the replica is cut off, before the
kill; at most BEHIND_SECONDS of them."""
BEHIND_SECONDS = 0.5
FAST = {
    contract.ENV_PUBLISH_RATE: "100000",
    contract.ENV_PUBLISH_BURST: "100000",
    contract.ENV_REDIS_USERNAME: contract.RELAY_REDIS_USER,
    contract.ENV_REDIS_PASSWORD: redis_acl.RELAY_PASSWORD,
}


@dataclass
class Shard:
    master: RedisProcess
    replica: RedisProcess
    sentinels: list[SentinelProcess]

    def promoted(self) -> bool:
        return all(s.master_port() == self.replica.port for s in self.sentinels)

    def current_master(self) -> RedisProcess:
        """The server the Sentinels name now: the promoted replica, or the old master if
        they failed over a second time (its return under load can look like one)."""
        port = self.sentinels[0].master_port()
        return self.master if port == self.master.port else self.replica


@pytest.fixture
def shard(tmp_path: Path) -> Iterator[Shard]:
    master, replica = replicated(tmp_path)
    sentinels = [SentinelProcess(tmp_path, master.port, quorum=2).start() for _ in range(3)]

    def authorised() -> bool:
        """Every Sentinel knows the replica and its two peers: a failover can be voted."""
        for sentinel in sentinels:
            client = redis.Redis(port=sentinel.port, socket_timeout=2)
            try:
                known = client.sentinel_master(MASTER)
                replicas = client.sentinel_slaves(MASTER)
            except redis.RedisError:
                return False
            finally:
                client.close()
            if known["num-other-sentinels"] != 2 or len(replicas) != 1:
                return False
        return True

    wait_until(authorised, 30, "the Sentinels to know the replica and each other")
    yield Shard(master, replica, sentinels)
    for process in (*sentinels, replica, master):
        stop_process(process.proc)


@dataclass
class Member:
    """One client: in two rooms, publishing to the first."""

    client: Client
    rooms: list[str]
    seen: dict[str, list[Event | Lost]] = field(default_factory=dict)
    epochs: dict[str, str] = field(default_factory=dict)
    """The epoch of each room when the client joined."""

    async def collect(self, room: str) -> None:
        async for message in self.client.room(room):
            if isinstance(message, Event | Lost):
                self.seen.setdefault(room, []).append(message)


def cut_off(replica: RedisProcess) -> None:
    """End the replica's link to its master and keep it from logging in again."""
    assert replica.cli("CONFIG", "SET", "masterauth", "not-the-password") == "OK"
    assert replica.cli("CLIENT", "KILL", "TYPE", "master") == "1"


def stored(server: RedisProcess, room: str) -> tuple[str, int, list[str]]:
    """The room's epoch, last offset and the ids of its stored events, on `server`."""
    admin = redis_acl.admin(server)
    epoch, top = admin.hmget(keys.meta(room), ["epoch", "offset"])
    ids = []
    for _, fields in admin.xrange(keys.log(room)):
        event = orjson.loads(envelope.unpack(fields[b"m"]).payload)
        ids.append(event["data"]["id"])
    return (epoch or b"").decode(), int(top or 0), ids


@pytest.mark.parametrize("ack_replicas", [0, 1])
async def test_a_master_killed_mid_run_loses_no_acked_event_silently(
    shard: Shard, relay_factory, tmp_path: Path, ack_replicas: int
) -> None:
    env = {
        **FAST,
        contract.ENV_REDIS_SENTINELS: ",".join(s.address for s in shard.sentinels),
        contract.ENV_REDIS_ACK_REPLICAS: str(ack_replicas),
    }
    pods = [relay_factory(n, redis_urls=[f"sentinel://{MASTER}"], env=env) for n in "ab"]
    urls = [pod.url for pod in pods]

    members = []
    for n in range(CLIENTS):
        rooms = [ROOMS[n % len(ROOMS)], ROOMS[(n + 1) % len(ROOMS)]]
        member = Member(Client(urls[n % 2 :] + urls[: n % 2]), rooms)
        await member.client.connect()
        for room in rooms:
            joined = await member.client.room(room).join()
            assert joined.epoch is not None
            member.epochs[room] = joined.epoch
        members.append(member)
    collectors = [asyncio.create_task(m.collect(room)) for m in members for room in m.rooms]

    publishes: dict[str, asyncio.Future[Ack]] = {}
    total = CLIENTS * EVENTS_PER_CLIENT

    def acked() -> int:
        return sum(f.done() for f in publishes.values())

    async def killed_mid_run() -> None:
        # 1. Once a share of the publishes is acked the replica is cut off (a SIGSTOP would
        #    not do: what the kernel already buffered for it would still reach it): the
        #    master goes on alone for BEHIND_ACKS acks or BEHIND_SECONDS.
        while acked() < KILL_AT * total:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # polled: no event fires on a share of futures
        await asyncio.to_thread(cut_off, shard.replica)
        behind, deadline = acked() + BEHIND_ACKS, time.monotonic() + BEHIND_SECONDS
        while acked() < behind and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        # ... and at least until it stores events the replica lacks: without them the kill
        # loses nothing and "no acked event lost" proves nothing (with ackReplicas 1 the
        # first WAIT after the cut holds the publish connection for the ack timeout, often
        # past BEHIND_SECONDS). Those events, read just before the kill, must not be acked.
        await eventually(
            lambda: any(unreplicated_now().values()),
            10,
            "the master to store events its replica lacks",
        )
        unreplicated.update(unreplicated_now())
        # 2. The master dies; half the clients lose their connection at the same moment
        #    and resume with `since` when back.
        await asyncio.to_thread(shard.master.kill)
        for member in members[::2]:
            member.client.drop_connection()
        # 3. The Sentinels promote the replica.
        await eventually(shard.promoted, FAILOVER_SECONDS, "the Sentinels to promote the replica")
        # Its replication password back: should the Sentinels fail over a second time (the
        # old master's return with 1 s down-after on a loaded machine), it must be able to
        # follow the old master as its replica, or with ackReplicas 1 nothing is acked again.
        await asyncio.to_thread(
            shard.replica.cli, "CONFIG", "SET", "masterauth", redis_acl.ADMIN_PASSWORD
        )
        # 4. The old master returns as the promoted one's replica (with ackReplicas 1 the
        #    shard acks no durable publish until it has a replica again).
        shard.master.extra_args += ["--replicaof", LOOPBACK, str(shard.replica.port)]
        await asyncio.to_thread(shard.master.start)

    unreplicated: dict[str, set[str]] = {}
    """Per room: the ids the master had and the replica lacked just before the kill."""

    def unreplicated_now() -> dict[str, set[str]]:
        return {
            room: set(stored(shard.master, room)[2]) - set(stored(shard.replica, room)[2])
            for room in ROOMS
        }

    start = time.monotonic()
    fault = asyncio.create_task(killed_mid_run())
    for n in range(EVENTS_PER_CLIENT):
        for k, member in enumerate(members):
            msg_id = f"c{k}-{n}"
            publish = member.client.room(member.rooms[0]).publish(
                {"id": msg_id}, id=msg_id, timeout=None
            )
            publishes[msg_id] = asyncio.ensure_future(publish)
        await asyncio.sleep(PACE_SECONDS)  # pacing: the kill lands while events flow
    await asyncio.wait_for(fault, 60)
    acks = {msg_id: await asyncio.wait_for(f, 60) for msg_id, f in publishes.items()}

    # Every client reaches its rooms' last event (or the run is over its bound).
    final = {room: stored(shard.current_master(), room) for room in ROOMS}

    def caught_up() -> bool:
        for member in members:
            for room in member.rooms:
                epoch, top, _ = final[room]
                position = member.client.room(room).position
                if position is None or (position.epoch, position.offset) != (epoch, top):
                    return False
        return True

    await eventually(caught_up, 30, "every client at its rooms' last event")
    elapsed = time.monotonic() - start
    for task in collectors:
        task.cancel()
    for member in members:
        await member.client.close()

    # Every client, every room: in order, no gap, no duplicate, or told (`Lost`) that the
    # history broke, which only the failover's new epoch may cause.
    told = 0
    for member in members:
        assert member.client.stats.gaps == 0 and member.client.stats.duplicates == 0
        for room in member.rooms:
            epoch, offset = member.epochs[room], 0
            for message in member.seen.get(room, []):
                if isinstance(message, Lost):
                    assert message.epoch not in (None, member.epochs[room]), message
                    assert message.offset is not None
                    epoch, offset = message.epoch, message.offset
                    told += 1
                    continue
                assert message.offset == offset + 1, (room, epoch, offset, message)
                offset += 1
            assert (epoch, offset) == final[room][:2], room

    # Every publish acked once; every id stored at most once on the promoted master.
    assert len(acks) == total and all(ack.offset is not None for ack in acks.values())
    lost = []
    for room in ROOMS:
        ids = final[room][2]
        assert len(ids) == len(set(ids)), f"an id stored twice in {room}"
        in_room = {i for i, ack in acks.items() if ack.room == room}
        lost += sorted(in_room - set(ids))
    assert all(final[room][0] != members[0].epochs.get(room) for room in members[0].rooms)
    # The kill did lose events (stored on the master alone): only their acks tell the modes
    # apart. With ackReplicas 1 each was refused, re-sent and stored again after the
    # failover (on the promoted master under the new epoch: not lost).
    assert any(unreplicated.values()), "the master held nothing the replica lacked"
    if ack_replicas:
        assert lost == [], f"{len(lost)} acked events lost with ackReplicas 1"
    else:
        assert lost, "the master acked nothing alone: the scenario did not bite"
        rooms_lost = {acks[msg_id].room for msg_id in lost}
        for member in members:
            for room in rooms_lost & set(member.rooms):
                assert any(isinstance(m, Lost) for m in member.seen[room]), (room, member)
    print(
        f"\nfailover chaos (ackReplicas {ack_replicas}): {total} events in {elapsed:.1f}s, "
        f"{sum(map(len, unreplicated.values()))} on the master alone at the kill, "
        f"{len(lost)} acked events lost with it, {told} `recovered: false` told"
    )
    assert redis_acl.acl_denials(shard.replica) == []
    redis_acl.no_secret_in_logs(tmp_path)
