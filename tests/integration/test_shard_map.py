"""Shard changes without split-brain (issue 14): the shard map switched under load.

Real redis-server shards and real relay processes. The map starts at one shard (seeded
as version 1, as a deployment that only ever had it would have), every relay can reach
both; `relay shards switch` moves the map 1 -> 2 -> 1 while clients publish with ids
through both relays and members of every room listen on both.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from gamecluster_client import Client, Connection, Event, Lost, UnavailableError
from relay import contract
from relay.api.client import ApiCallError, RelayApi
from relay.broker.shardmap import MAP_KEY, ShardMap
from relay.config import RedisEndpoint
from support import redis_acl
from support.metrics import metric_value
from support.processes import RedisProcess, RelayProcess
from support.proxy import StallingProxy
from support.waiting import eventually

pytestmark = pytest.mark.integration

ROOMS = [f"sm:{n}" for n in range(12)]
KEY = "k" * 40
QUICK = {
    # dead_after = 3 reports = 1.5 s: a killed relay leaves the switch's barrier quickly.
    "RELAY_LOAD_REPORT_SECONDS": "0.5",
    "RELAY_PUBLISH_RATE": "100000",
    "RELAY_PUBLISH_BURST": "100000",
    "RELAY_API_KEYS": KEY,
}


def name(shard: RedisProcess) -> str:
    return RedisEndpoint.parse(shard.url).name


def seed(control: RedisProcess, *shards: RedisProcess) -> None:
    control.cli("HSET", MAP_KEY, "version", "1", "shards", ",".join(map(name, shards)))
    control.cli("HSET", MAP_KEY, "phase", "stable")


def show(pod: RelayProcess) -> dict[str, Any]:
    done = pod.cli("shards", "show")
    assert done.returncode == 0, done.stderr
    shown: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return shown


async def switch(pod: RelayProcess, *shards: RedisProcess, wait: bool = True) -> dict[str, Any]:
    names = ",".join(map(name, shards))
    args = ("shards", "switch", names, *(["--wait"] if wait else []))
    done = await asyncio.to_thread(pod.cli, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    shown: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return shown


@contextlib.asynccontextmanager
async def looking_alive(control: RedisProcess, *nodes: str) -> AsyncIterator[set[str]]:
    """Renew these relays' liveness on the control shard every 0.2 s while the block runs,
    as a pod whose event loop is blocked in one task (or that no longer hears the control
    shard, yet still reports) could look: a SIGSTOPped relay then holds a switch's barrier
    for as long as the test needs. Yields the renewed set, which the test may change; no
    renewal is written after the block."""
    renewed = set(nodes)
    done = asyncio.Event()

    async def renew() -> None:
        while not done.is_set():
            for node in list(renewed):
                now = str(int(time.time() * 1000))
                await asyncio.to_thread(control.cli, "ZADD", "gamecluster:alive", now, node)
            with contextlib.suppress(TimeoutError):  # a period, not a synchronisation
                await asyncio.wait_for(done.wait(), 0.2)

    renewing = asyncio.create_task(renew())
    try:
        yield renewed
    finally:
        done.set()
        await renewing


def listeners(shard: RedisProcess, room: str) -> int:
    """Relay servers subscribed to the room's channel on this shard."""
    reply = shard.cli("PUBSUB", "NUMSUB", f"room:{{{room}}}").split()
    return int(reply[-1])


class Refusals(Client):
    """A client that counts the server's refusals of its publishes, per room."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(urls)
        self.refused: collections.Counter[str] = collections.Counter()

    def _on_error(self, ws: Any, message: dict[str, Any], room: Any) -> None:
        msg_id = message.get("id")
        if isinstance(msg_id, str):
            self.refused[msg_id.rpartition("#")[0]] += 1
        super()._on_error(ws, message, room)


@dataclass
class Member:
    client: Client
    received: dict[str, set[int]] = field(default_factory=dict)
    lost: collections.Counter[str] = field(default_factory=collections.Counter)

    async def collect(self, room: str) -> None:
        async for message in self.client.room(room):
            if isinstance(message, Event):
                self.received.setdefault(room, set()).add(message.data["n"])
            elif isinstance(message, Lost):
                self.lost[room] += 1


async def test_map_change_1_2_1_under_load(redis_factory, relay_factory) -> None:
    a, b = redis_factory(), redis_factory()
    seed(a, a)
    pods = [relay_factory(n, redis_urls=[a.url, b.url], env=QUICK) for n in ("p1", "p2")]
    one, two = ShardMap(1, (name(a),)), ShardMap(2, (name(a), name(b)))
    moving = {r for r in ROOMS if two.place(r) != one.place(r)}
    assert 0 < len(moving) < len(ROOMS)

    members = [Member(Client([pod.url])) for pod in pods]
    for member in members:
        await member.client.connect()
        for room in ROOMS:
            await member.client.room(room).join()
    collectors = [asyncio.create_task(m.collect(r)) for m in members for r in ROOMS]
    publisher = Refusals([pods[0].url])
    other = Refusals([pods[1].url])
    for client in (publisher, other):
        await client.connect()
    acks: dict[str, list[asyncio.Future[Any]]] = {room: [] for room in ROOMS}
    stop = asyncio.Event()

    async def publish(room: str, client: Client) -> None:
        n = 0
        while not stop.is_set():
            sent = client.room(room).publish({"n": n}, id=f"{room}#{n}", timeout=None)
            acks[room].append(asyncio.ensure_future(sent))
            n += 1
            await asyncio.sleep(0.02)

    publishing = [
        asyncio.create_task(publish(room, (publisher, other)[k % 2]))
        for k, room in enumerate(ROOMS)
    ]

    async def acked_in_every_room(after: str) -> None:
        """Until every room has a publish acked that was sent from now on."""
        sent = {room: len(acks[room]) for room in ROOMS}
        await eventually(
            lambda: all(any(f.done() for f in acks[r][sent[r] :]) for r in ROOMS),
            10,
            f"a publish acked in every room {after}",
        )

    # The switch starts under load: once every room has had a publish acked.
    await acked_in_every_room("before the switch")
    assert (await switch(pods[0], a, b))["version"] == 2
    # When the switch is done, every room is listened to on its new shard by both relays
    # (SUBSCRIBE is confirmed before a relay acks); their UNSUBSCRIBEs on the old shard
    # are sent, not awaited.
    for room in ROOMS:
        on, off = (b, a) if room in moving else (a, b)
        assert listeners(on, room) == 2, room
        await eventually(lambda: listeners(off, room) == 0, 5, f"{room} off its old shard")  # noqa: B023
    # The moved rooms' history and epoch left their old shard (a switch back cannot
    # resurrect them).
    assert all(a.cli("EXISTS", f"room:{{{r}}}:meta", f"room:{{{r}}}:log") == "0" for r in moving)
    # Load under the two-shard map, moved rooms included, before switching back.
    await acked_in_every_room("under two shards")
    # Back through the server API (what the operator calls), polled until done.
    with RelayApi(pods[1].admin, api_key=KEY) as api:
        started = await asyncio.to_thread(api.switch_shards, [name(a)])
        assert (started.phase, started.next) == ("prepare", [name(a)])

        async def switched() -> bool:
            state = await asyncio.to_thread(api.shards)
            return state.phase == "stable"

        await eventually(switched, 15, "the switch back to one shard")
        back = await asyncio.to_thread(api.shards)
    assert (back.version, back.shards) == (3, [name(a)])
    assert all(listeners(a, room) == 2 for room in ROOMS)
    await eventually(lambda: all(listeners(b, r) == 0 for r in ROOMS), 5, "rooms off b")
    # Histories and epochs left b (publish ids expire with their dedupe window).
    assert b.cli("KEYS", "room:*:meta").split() == b.cli("KEYS", "room:*:log").split() == []
    await acked_in_every_room("back on one shard")
    stop.set()
    await asyncio.gather(*publishing)
    await asyncio.wait_for(asyncio.gather(*(f for fs in acks.values() for f in fs)), 20)

    # Every acked event reached every member (through the old shard before the switch,
    # the new one after it): none published to a shard its members had left.
    def complete() -> bool:
        return all(
            len(m.received.get(room, ())) == len(acks[room]) for m in members for room in ROOMS
        )

    await eventually(complete, 15, "every acked event at every member")
    for member in members:
        for room in ROOMS:
            assert member.received[room] == set(range(len(acks[room]))), room
    # Rooms that do not move are never refused; moved ones start a new epoch (Lost).
    refused = publisher.refused + other.refused
    assert set(refused) <= moving, refused
    assert refused, "no publish of a moving room was refused: the switch paused nothing"
    for member in members:
        assert set(member.lost) == moving
    for task in collectors:
        task.cancel()
    for client in (publisher, other, *(m.client for m in members)):
        await client.close()


async def test_a_relay_killed_mid_switch_drops_out_and_one_started_mid_switch_joins(
    redis_factory, relay_factory
) -> None:
    a, b = redis_factory(), redis_factory()
    seed(a, a)
    slow = {**QUICK, "RELAY_LOAD_REPORT_SECONDS": "1"}  # dead_after = 3 s
    pods = [relay_factory(n, redis_urls=[a.url, b.url], env=slow) for n in ("p1", "p2")]
    two = ShardMap(2, (name(a), name(b)))
    room = next(r for r in ROOMS if two.place(r) == name(b))  # one that moves
    stuck = relay_factory("stuck", redis_urls=[a.url, b.url], env=slow)
    assert stuck.proc is not None
    stuck.proc.send_signal(signal.SIGSTOP)  # acks nothing
    try:
        # Hung but looking alive: it holds the barrier for as long as this block runs.
        async with looking_alive(a, "stuck"):
            assert (await switch(pods[0], a, b, wait=False))["phase"] == "prepare"
            # Meanwhile the moving room's publishes are refused (retryable), the others not.
            still = next(r for r in ROOMS if two.place(r) == name(a))
            async with Connection(pods[1].url) as raw:
                with pytest.raises(UnavailableError):
                    await raw.publish(room, 1, id="during")
                acked = await raw.publish(still, 1, id="during")
                assert acked is not None and acked["op"] == "ack", acked
            # A relay started now reads the switch from Redis and takes part in it.
            # (In a thread: the renewals above must go on while it starts.)
            late = await asyncio.to_thread(
                relay_factory, "late", redis_urls=[a.url, b.url], env=slow
            )
            shown = await asyncio.to_thread(show, late)
            assert shown["phase"] == "prepare"  # the hung relay holds the barrier
            # ... and acks its prepare: it is one of the relays the barrier waits for.
            acks = f"{MAP_KEY}:ack:{a.cli('HGET', MAP_KEY, 'switch')}:prepare"
            await eventually(lambda: "late" in a.cli("SMEMBERS", acks).split(), 5, "late's ack")
        stuck.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await eventually(lambda: show(pods[0])["phase"] == "stable", 15, "the switch to end")
        assert time.monotonic() - killed < 10  # dead_after (3 s) and a poll, under load
    finally:
        stuck.kill()
    assert show(late)["version"] == 2
    # The late relay's member of the moved room listens on its new shard: a publish
    # through another relay reaches it.
    listener = Client([late.url])
    await listener.connect()
    await listener.room(room).join()
    assert listeners(b, room) == 1 and listeners(a, room) == 0
    publisher = Client([pods[1].url])
    await publisher.connect()
    await publisher.room(room).publish({"n": 1}, id="after")
    async for message in listener.room(room):
        if isinstance(message, Event):
            assert message.data == {"n": 1}
            break
    for client in (listener, publisher):
        await client.close()


async def test_a_prepare_not_done_in_time_aborts_and_keeps_the_old_map(
    redis_factory, relay_factory
) -> None:
    a, b = redis_factory(), redis_factory()
    seed(a, a)
    pod = relay_factory("p1", redis_urls=[a.url, b.url], env=QUICK)
    # A relay that cannot reach shard b never acks a switch to it.
    blind = relay_factory("blind", redis_urls=[a.url], env=QUICK)
    done = await asyncio.to_thread(
        pod.cli, "shards", "switch", f"{name(a)},{name(b)}", "--timeout", "1", "--wait"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    shown = show(pod)
    assert (shown["version"], shown["phase"]) == (1, "stable")
    assert "aborted" in shown["last"] and "blind" in shown["last"]
    assert "lacks " + name(b) in blind.tail(200)
    # Refused up front: a map without the control shard, a name no endpoint has.
    for names in (name(b), f"{name(a)},nowhere"):
        refused = await asyncio.to_thread(pod.cli, "shards", "switch", names)
        assert refused.returncode == 1 and "relay shards:" in refused.stderr
        with RelayApi(pod.admin, api_key=KEY) as api, pytest.raises(ApiCallError) as error:
            await asyncio.to_thread(api.switch_shards, names.split(","))
        assert (error.value.status, error.value.code) == (400, "bad_request")


async def test_a_relay_cut_off_from_the_control_shard_does_not_publish_by_a_stale_map(
    redis_factory, relay_factory
) -> None:
    """A relay that drops out of a switch's barrier (its liveness went silent: a partition
    from the control shard, a paused process) must not keep placing rooms by the map it
    last read: the switch went ahead without it, and what it publishes to the old shard
    reaches none of the members elsewhere, although it was acked."""
    a, b = redis_factory(), redis_factory()
    cut = StallingProxy(a.port).start()
    try:
        # Named shards: p2 reaches the control shard `a` through a proxy, `b` directly.
        direct = [f"a={a.url}", f"b={b.url}"]
        through = [f"a={cut.url}", f"b={b.url}"]
        a.cli("HSET", MAP_KEY, "version", "1", "shards", "a,b", "phase", "stable")
        p1 = relay_factory("p1", redis_urls=direct, env=QUICK)
        p2 = relay_factory("p2", redis_urls=through, env=QUICK)
        # A room on `b` that the switch to `a` alone moves.
        room = next(r for r in ROOMS if ShardMap(1, ("a", "b")).place(r) == "b")
        member = Member(Client([p1.url]))
        await member.client.connect()
        await member.client.room(room).join()
        collecting = asyncio.create_task(member.collect(room))
        async with Connection(p2.url) as stale:
            cut.stall()  # p2 and the control shard no longer hear each other
            # p2 drops out of the barrier once silent for dead_after (1.5 s): the switch
            # completes without it.
            done = await asyncio.to_thread(p1.cli, "shards", "switch", "a", "--wait")
            assert done.returncode == 0, done.stdout + done.stderr
            assert show(p1)["version"] == 2
            try:
                acked = await stale.publish(room, {"n": 1}, id="stale")
            except UnavailableError:
                acked = None  # refused: p2 cannot know where the room is now
            if acked is not None:
                # Acked: then every member of the room must get it.
                await eventually(
                    lambda: 1 in member.received.get(room, set()),
                    5,
                    f"the event acked by the cut-off relay ({acked}) at a member on p1",
                )
            cut.flow()
            # Healed: p2 reads the map again and publishes where the members listen.
            await eventually(lambda: show(p2)["version"] == 2, 10, "p2 to read the map")

            async def published() -> bool:
                try:
                    await stale.publish(room, {"n": 2}, id="healed")
                except UnavailableError:
                    return False
                return True

            await eventually(published, 15, "p2 to publish again once healed")
            await eventually(
                lambda: 2 in member.received.get(room, set()), 5, "the healed publish at p1"
            )
        collecting.cancel()
        await member.client.close()
    finally:
        cut.close()


async def test_a_dead_shard_can_be_switched_out_of_the_map(redis_factory, relay_factory) -> None:
    """Removing a shard that is gone (its Redis pod lost) is what a switch is for in an
    outage: its rooms are unavailable until the map no longer places them there. What
    they left on it must still never be served again: it is dirty until cleaned."""
    a, b = redis_factory(), redis_factory(aof=True)  # b comes back with its old data
    seed(a, a, b)
    pod = relay_factory("p1", redis_urls=[a.url, b.url], env=QUICK)
    room = next(r for r in ROOMS if ShardMap(1, (name(a), name(b))).place(r) == name(b))
    b.cli("CONFIG", "SET", "appendfsync", "always")  # what b acked survives its kill
    async with Connection(pod.url) as client:
        await client.publish(room, 0, id="before")  # its history and epoch on b
    assert b.cli("EXISTS", f"room:{{{room}}}:meta") == "1"
    b.kill()
    done = await asyncio.to_thread(pod.cli, "shards", "switch", name(a), "--timeout", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    await eventually(lambda: show(pod)["phase"] == "stable", 15, "the switch away from b to end")
    assert show(pod)["shards"] == [name(a)]
    async with Connection(pod.url) as client:
        acked = await client.publish(room, 1, id="after")
        assert acked is not None and acked["op"] == "ack", acked
    # b holds an old epoch of the room: no map may place rooms on it until it is cleaned.
    refused = await asyncio.to_thread(pod.cli, "shards", "switch", f"{name(a)},{name(b)}")
    assert refused.returncode == 1 and "not cleaned yet" in refused.stderr, refused.stderr
    b.start()
    meta = f"room:{{{room}}}:meta"
    await eventually(lambda: b.cli("EXISTS", meta) == "0", 15, "b to be cleaned")
    await eventually(lambda: a.cli("SCARD", f"{MAP_KEY}:dirty") == "0", 5, "b clean")
    await switch(pod, a, b)


async def test_nothing_a_relay_still_on_the_old_map_writes_stays_on_the_old_shard(
    redis_factory, relay_factory
) -> None:
    """The old shard is cleaned once every live relay has moved: a relay that has not read
    the flip yet still writes a moving room's presence (and epoch) there, and a cleanup
    before that would leave it behind, to come back as ghost members with a later switch."""
    a, b = redis_factory(), redis_factory()
    cut = StallingProxy(a.port).start()
    rooms = orjson.dumps([{"match": "sm:*", "presence": True}]).decode()
    env = {**QUICK, "RELAY_LOAD_REPORT_SECONDS": "1", "RELAY_ROOMS": rooms}  # dead_after 3 s
    a.cli("HSET", MAP_KEY, "version", "1", "shards", "a,b", "phase", "stable")
    direct = [f"a={a.url}", f"b={b.url}"]
    relay_factory("p1", redis_urls=direct, env=env)
    # p2's lease (2/3 of its dead_after: 10 s) outlasts the flip, which waits for p1 to
    # find the stuck relay dead (p1's dead_after: 3 s): p2 still places by the old map
    # lawfully, as a relay that has not read the flip yet may. Past its lease it would
    # write nothing (test_a_relay_cut_off_from_the_control_shard_writes_no_ghost_presence).
    slow = {**env, "RELAY_LOAD_REPORT_SECONDS": "5"}
    p2 = relay_factory("p2", redis_urls=[f"a={cut.url}", f"b={b.url}"], env=slow)
    stuck = relay_factory("stuck", redis_urls=direct, env=env)
    assert stuck.proc is not None
    room = next(r for r in ROOMS if ShardMap(1, ("a", "b")).place(r) == "b")
    presence = f"room:{{{room}}}:presence"
    try:
        # Relays that look alive while they ack nothing (their liveness renewed here).
        async with looking_alive(a, "stuck") as renewed:
            stuck.proc.send_signal(signal.SIGSTOP)
            started = await asyncio.to_thread(p2.cli, "shards", "switch", "a")
            assert started.returncode == 0, started.stderr
            acks = f"{MAP_KEY}:ack:{a.cli('HGET', MAP_KEY, 'switch')}:prepare"
            await eventually(
                lambda: set(a.cli("SMEMBERS", acks).split()) == {"p1", "p2"}, 10, "acks"
            )
            # p2 has prepared; now it stops hearing the control shard (and so the flip) but
            # stays in the barrier; the stuck relay leaves it, and the map flips.
            cut.stall()
            renewed.add("p2")
            renewed.discard("stuck")
            stuck.proc.send_signal(signal.SIGKILL)
            await eventually(lambda: a.cli("HGET", MAP_KEY, "phase") == "move", 10, "the flip")
            async with Connection(p2.url) as member:
                # p2 still places the room on b: its member's presence is written there.
                await member.join(room)
                await eventually(lambda: b.cli("HLEN", presence) == "1", 5, "presence on b")
                cut.flow()
                renewed.discard("p2")
                await eventually(lambda: a.cli("HGET", MAP_KEY, "phase") == "stable", 15, "stable")
                # The member is listed where the room is now, and nothing is left on b.
                assert a.cli("HLEN", presence) == "1"
                assert b.cli("EXISTS", presence) == "0"
    finally:
        stuck.kill()
        cut.close()


async def test_a_map_rewritten_after_the_control_shard_lost_its_data_leaves_no_silent_gap(
    redis_factory, relay_factory
) -> None:
    """A control shard restarted without persistence loses the map. A relay started then
    (configured with the union of shards, step 1 of a shard change) writes its configured
    names as the map: rooms move without a barrier and, unless their old shard is cleaned,
    a later switch back serves their old epoch: a client resumes `recovered: true` past
    an event it never got. The relay that knew the old map cleans its shards."""
    a, b, c = redis_factory(), redis_factory(), redis_factory()
    union = [a.url, b.url, c.url]
    a.cli("HSET", MAP_KEY, "version", "5", "shards", f"{name(a)},{name(b)}", "phase", "stable")
    p1 = relay_factory("p1", redis_urls=union, env=QUICK)
    before, after = ShardMap(5, (name(a), name(b))), ShardMap(1, tuple(map(name, (a, b, c))))
    candidates = (f"sm:{n}" for n in range(10_000))
    room = next(r for r in candidates if before.place(r) == name(b) and after.place(r) == name(c))
    async with Connection(p1.url) as client:
        joined = await client.join(room)
        await client.publish(room, 1, id="one")
    assert p1.proc is not None
    p1.proc.send_signal(signal.SIGSTOP)  # it cannot write back the map it knows first
    try:
        a.cli("FLUSHALL")  # the control shard restarted without its data
        p2 = await asyncio.to_thread(relay_factory, "p2", redis_urls=union, env=QUICK)
    finally:
        p1.proc.send_signal(signal.SIGCONT)
    assert show(p2)["shards"] == list(after.names)
    async with Connection(p2.url) as client:
        await client.publish(room, 2, id="two")  # on c now
    # p1 has read the new map, found it changed without a switch, and cleaned its shards.
    await eventually(
        lambda: metric_value(p1.metrics(), "relay_shard_map_version") == 1, 10, "p1 reads v1"
    )
    await eventually(lambda: a.cli("SCARD", f"{MAP_KEY}:dirty") == "0", 10, "clean shards")
    await switch(p2, a, b)  # back: the room is on b again
    async with Connection(p2.url) as client:
        resumed = await client.join(room, since={"epoch": joined["epoch"], "offset": 1})
        replay = []
        if resumed["recovered"]:
            with contextlib.suppress(TimeoutError):
                replay.append(await client.receive(timeout=2))
    # Event 2 came after offset 1: either it is replayed or the client is told to re-sync.
    assert not resumed["recovered"] or [m.get("data") for m in replay] == [2], resumed


async def test_the_move_phase_waits_for_a_hung_relay_and_reports_the_stall(
    redis_factory, relay_factory
) -> None:
    a, b = redis_factory(), redis_factory()
    seed(a, a)
    pod = relay_factory("p1", redis_urls=[a.url, b.url], env=QUICK)
    hung = relay_factory("hung", redis_urls=[a.url, b.url], env=QUICK)
    assert hung.proc is not None
    hung.proc.send_signal(signal.SIGSTOP)

    try:
        async with looking_alive(a, "hung"):  # hung, yet looking alive
            names = f"{name(a)},{name(b)}"
            started = await asyncio.to_thread(pod.cli, "shards", "switch", names, "--timeout", "3")
            assert started.returncode == 0, started.stderr
            # As if it had acked the prepare and hung right after: the map flips, and the
            # move phase waits for it.
            switch_id = await asyncio.to_thread(a.cli, "HGET", MAP_KEY, "switch")
            await asyncio.to_thread(a.cli, "SADD", f"{MAP_KEY}:ack:{switch_id}:prepare", "hung")
            await eventually(lambda: show(pod)["phase"] == "move", 10, "the flip")
            two = ShardMap(2, (name(a), name(b)))
            room = next(r for r in ROOMS if two.place(r) == name(b))
            async with Connection(pod.url) as raw:
                with pytest.raises(UnavailableError):  # the hung relay may still listen on a
                    await raw.publish(room, 1, id="during")
            await eventually(lambda: show(pod)["stalled"] is True, 15, "the stall past 3 s")
            assert show(pod)["phase"] == "move"  # not aborted: relays have moved
            assert "relay_shard_switch_stalled 1.0" in pod.metrics()
    finally:
        hung.kill()
    await eventually(lambda: show(pod)["phase"] == "stable", 15, "the hung relay to drop out")
    assert "relay_shard_switch_stalled 0.0" in pod.metrics()


async def test_switch_wait_gives_up_on_a_stalled_move_phase_naming_who_it_waits_for(
    redis_factory, relay_factory
) -> None:
    """`relay shards switch --wait` is bounded: a move phase held by a hung relay (alive,
    never acking) makes it exit 1 naming the phase and that relay, not hang for ever."""
    a, b = redis_factory(), redis_factory()
    seed(a, a)
    pod = relay_factory("p1", redis_urls=[a.url, b.url], env=QUICK)
    hung = relay_factory("hung", redis_urls=[a.url, b.url], env=QUICK)
    assert hung.proc is not None
    hung.proc.send_signal(signal.SIGSTOP)

    async def prepared_by_the_hung_relay() -> None:  # it acked the prepare, then hung
        await eventually(lambda: a.cli("HGET", MAP_KEY, "phase") == "prepare", 10, "a switch")
        switch_id = await asyncio.to_thread(a.cli, "HGET", MAP_KEY, "switch")
        await asyncio.to_thread(a.cli, "SADD", f"{MAP_KEY}:ack:{switch_id}:prepare", "hung")

    try:
        async with looking_alive(a, "hung"):  # hung, yet looking alive
            names = f"{name(a)},{name(b)}"
            args = ("shards", "switch", names, "--timeout", "2", "--wait", "--wait-timeout", "4")
            started = time.monotonic()
            done, _ = await asyncio.gather(
                asyncio.to_thread(pod.cli, *args, timeout=30), prepared_by_the_hung_relay()
            )
            took = time.monotonic() - started
            assert done.returncode == 1, done.stdout + done.stderr
            assert 4 <= took < 15, took
            assert "still in its move phase (stalled" in done.stderr, done.stderr
            assert "waiting for hung (seen" in done.stderr and "p1" not in done.stderr, done.stderr
            assert show(pod)["phase"] == "move"  # the switch itself goes on
    finally:
        hung.kill()
    await eventually(lambda: show(pod)["phase"] == "stable", 15, "the hung relay to drop out")


async def test_a_relay_cut_off_from_the_control_shard_stops_publishing(
    redis_factory, relay_factory
) -> None:
    """Cut off for dead_after, it could be left out of a switch: it must not publish by
    the map it last read, even to a shard it still reaches."""
    a, b = redis_factory(), redis_factory()
    seed(a, a, b)
    proxy = StallingProxy(a.port).start()
    try:
        # One shard name for a, through the proxy or not (placement is by name).
        cut = relay_factory("cut", redis_urls=[f"{name(a)}={proxy.url}", b.url], env=QUICK)
        two = ShardMap(1, (name(a), name(b)))
        room = next(r for r in ROOMS if two.place(r) == name(b))
        async with Connection(cut.url) as client:
            assert (await client.publish(room, 0, id="before"))["op"] == "ack"
            proxy.stall()
            attempts = iter(range(1, 1000))

            async def refused() -> bool:
                try:
                    await client.publish(room, 1, id=f"cut-{next(attempts)}")
                except UnavailableError:
                    return True
                return False

            await eventually(refused, 10, "publishes to b refused while a is cut off")
            proxy.flow()
            await eventually(lambda: cut.status() == 200, 15, "the relay back")
            assert (await client.publish(room, 2, id="after"))["op"] == "ack"
    finally:
        proxy.close()


async def test_a_relay_cut_off_from_the_control_shard_writes_no_ghost_presence(
    redis_factory, relay_factory
) -> None:
    """A relay cut off from the control shard past its lease may have been left out of a
    switch: it must not write presence by the map it last read, on a shard the switch
    has left (its cleanup already ran there: the members would stay as ghosts, listed
    again if a later switch brings the room back). Its changes wait, and are written on
    the room's new shard once it has read the map again."""
    a, b = redis_factory(), redis_factory()
    seed(a, a, b)
    env = {**QUICK, "RELAY_ROOMS": orjson.dumps([{"match": "sm:*", "presence": True}]).decode()}
    proxy = StallingProxy(a.port).start()
    try:
        # One shard name for a, through the proxy or not (placement is by name).
        cut = relay_factory("cut", redis_urls=[f"{name(a)}={proxy.url}", b.url], env=env)
        pod = relay_factory("p1", redis_urls=[a.url, b.url], env=env)
        room = next(r for r in ROOMS if ShardMap(1, (name(a), name(b))).place(r) == name(b))
        presence = f"room:{{{room}}}:presence"
        async with Connection(cut.url) as client:
            proxy.stall()
            await eventually(lambda: cut.status() == 503, 10, "the cut relay's lease to end")
            shown = await switch(pod, a)  # without it (gone from the barrier): room to a
            assert (shown["version"], shown["phase"]) == (2, "stable"), shown
            await client.join(room)  # on b, where its stale map places the room
            refused = f"presence of {room} not written"
            await eventually(
                lambda: refused in cut.tail(200) or b.cli("HLEN", presence) != "0",
                10,
                "the cut relay's presence write",
            )
            assert b.cli("HLEN", presence) == "0", "a ghost member on the shard left"
            proxy.flow()
            await eventually(lambda: a.cli("HLEN", presence) == "1", 15, "presence on a")
            assert b.cli("HLEN", presence) == "0"
    finally:
        proxy.close()


def no_refusal_in_logs(directory: Path) -> None:
    for log in directory.glob("relay-*.log"):
        assert "NOPERM" not in log.read_text(errors="replace"), log.name


async def test_a_switch_needs_only_the_relay_users_grants(tmp_path: Path, relay_factory) -> None:
    """The managed Redis's ACL (relay.contract.RELAY_REDIS_COMMANDS) covers every command
    of a switch: the map scripts, the acks, the cleanup's SCAN and DEL."""
    a, b = redis_acl.acl_redis(tmp_path), redis_acl.acl_redis(tmp_path)
    try:
        seed(a, a)
        user = {
            contract.ENV_REDIS_USERNAME: contract.RELAY_REDIS_USER,
            contract.ENV_REDIS_PASSWORD: redis_acl.RELAY_PASSWORD,
        }
        env = {**QUICK, **user, "RELAY_ROOMS": '[{"match": "*", "presence": true}]'}
        pods = [relay_factory(n, redis_urls=[a.url, b.url], env=env) for n in ("p1", "p2")]
        room = next(r for r in ROOMS if ShardMap(2, (name(a), name(b))).place(r) == name(b))
        async with Connection(pods[0].url) as member, Connection(pods[1].url) as publisher:
            await member.join(room)
            await publisher.publish(room, "before", id="b")
            assert (await switch(pods[1], a, b))["version"] == 2
            await publisher.publish(room, "after", id="a")

            async def arrived() -> bool:
                message = await member.receive(timeout=5)
                return message.get("op") == "event" and message["data"] == "after"

            await eventually(arrived, 10, "the event after the switch")
            assert (await member.presence(room))["count"] == 1  # written on b
        for server in (a, b):
            assert redis_acl.acl_denials(server) == []
        no_refusal_in_logs(tmp_path)
    finally:
        a.stop()
        b.stop()
