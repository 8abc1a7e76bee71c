"""Readiness per shard (issue 14): a Redis shard down fails only its rooms.

Two real redis-server shards (append-only files, so a restarted one keeps its rooms) and
real relay processes. A stalled (SIGSTOP) non-control shard leaves the relays ready, its
rooms refused with `unavailable` and the other shard's rooms working; the control shard
killed makes the relay unready (docs/operations.md says why) while the other shard's
rooms still deliver to connected clients. Either shard back, its rooms go on in the same
epoch with no gap.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gamecluster_client import Connection as RelayClient
from gamecluster_client import ServerError as RelayError
from relay.broker.options import RedisOptions
from relay.broker.redis import RedisBroker
from relay.cluster import RedisState
from support.metrics import metric_value
from support.processes import RedisProcess, RelayProcess
from support.waiting import eventually

pytestmark = pytest.mark.integration

SHARD_DOWN = "the Redis shard of this room is down"
API_KEY = "k" * 40
RELAY_ENV = {
    # Long enough that a publish waiting on the stalled shard would show: refusals must
    # come from the shard's known state, at once.
    "RELAY_REDIS_TIMEOUT": "5",
}


@pytest.fixture
def shards(redis_factory) -> Iterator[list[RedisProcess]]:
    started = [redis_factory(aof=True), redis_factory(aof=True)]
    yield started
    for server in started:  # a stopped process ignores SIGTERM until continued
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)


def shard_urls(shards: list[RedisProcess]) -> list[str]:
    return [f"s{n}={server.url}" for n, server in enumerate(shards)]


async def rooms_by_shard(urls: list[str]) -> dict[str, str]:
    """One room name placed on each shard, as every relay server places it."""
    placement = RedisBroker(
        urls, "placement", RedisOptions(timeout=1, probe_interval=1, probe_timeout=1)
    )
    try:
        placed: dict[str, str] = {}
        for n in range(200):
            placed.setdefault(placement.shard_for(f"room-{n}").name, f"room-{n}")
        assert set(placed) == {"s0", "s1"}
        return placed
    finally:
        await placement.close()


def readyz(pod: RelayProcess) -> tuple[int, dict[str, Any]]:
    response = httpx.get(pod.http + "/readyz", timeout=2)
    return response.status_code, response.json()


def shard_up(pod: RelayProcess, shard: str) -> float:
    return metric_value(pod.metrics(), "relay_redis_shard_up", {"shard": shard})


async def refused_at_once(call: Any) -> RelayError:
    started = time.monotonic()
    with pytest.raises(RelayError) as refused:
        await call
    assert time.monotonic() - started < 1.0, "refused only after a command timeout"
    assert refused.value.code == "unavailable"
    assert SHARD_DOWN in refused.value.message, refused.value.message
    return refused.value


async def test_a_stalled_shard_fails_only_its_rooms_and_the_relays_stay_ready(
    shards: list[RedisProcess], relay_factory
) -> None:
    urls = shard_urls(shards)
    rooms = await rooms_by_shard(urls)
    live, stalled = rooms["s0"], rooms["s1"]
    pods = [relay_factory(name, redis_urls=urls, env=RELAY_ENV) for name in ("a", "b")]
    async with RelayClient(pods[0].url) as on_a, RelayClient(pods[1].url) as on_b:
        for client in (on_a, on_b):
            await client.join(live)
            epoch = (await client.join(stalled))["epoch"]
        await on_a.publish(stalled, "before", id="b1")
        before = [await client.receive(timeout=5) for client in (on_a, on_b)]
        assert {e["data"] for e in before} == {"before"}

        os.kill(shards[1].proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            # 1. Both relays notice the silent stall through their probes, and stay ready.
            for pod in pods:
                await eventually(lambda p=pod: shard_up(p, "s1") == 0, 10, "s1 reported down")
                assert shard_up(pod, "s0") == 1
                assert readyz(pod) == (200, {"status": "ready", "node": pod.node_id,
                                             "shardsDown": ["s1"]})  # fmt: skip
            # 2. The stalled shard's rooms are refused at once, with a clear message.
            await refused_at_once(on_a.publish(stalled, "lost?", id="b2"))
            async with RelayClient(pods[1].url) as newcomer:
                await refused_at_once(newcomer.join(stalled))
                # 3. The live shard's rooms publish and deliver across relays.
                await newcomer.join(live)
                await on_b.publish(live, "still here", id="l1")
                for client in (on_a, on_b, newcomer):
                    event = await client.receive(timeout=5)
                    assert (event["room"], event["data"]) == (live, "still here")
        finally:
            os.kill(shards[1].proc.pid, signal.SIGCONT)  # type: ignore[union-attr]

        # 4. Back: the relays say so, and the room goes on in the same epoch, no gap.
        for pod in pods:
            await eventually(lambda p=pod: readyz(p)[1].get("shardsDown") is None, 15, "s1 up")
            assert shard_up(pod, "s1") == 1
        await on_b.publish(stalled, "after", id="b3")
        for client, first in zip((on_a, on_b), before, strict=True):
            event = await client.receive(timeout=5)  # not a `joined` re-sync notice
            assert event["op"] == "event" and event["data"] == "after", event
            assert event["offset"] == first["offset"] + 1  # and no re-sync: the same epoch
        # A client resuming from before the outage recovers every event.
        since = {"offset": before[0]["offset"] - 1, "epoch": epoch}
        async with RelayClient(pods[0].url) as resumer:
            joined = await resumer.join(stalled, since=since)
            assert joined["recovered"] is True, joined
            replayed = [(await resumer.receive(timeout=5))["data"] for _ in range(2)]
            assert replayed == ["before", "after"]


async def test_the_control_shard_down_makes_the_relay_unready_yet_other_rooms_deliver(
    shards: list[RedisProcess], relay_factory
) -> None:
    urls = shard_urls(shards)
    rooms = await rooms_by_shard(urls)
    control_room, other = rooms["s0"], rooms["s1"]
    pod = relay_factory("a", redis_urls=urls, env={**RELAY_ENV, "RELAY_API_KEYS": API_KEY})
    async with RelayClient(pod.url) as publisher, RelayClient(pod.url) as member:
        for client in (publisher, member):
            await client.join(control_room)
            await client.join(other)
        await publisher.publish(control_room, "before", id="c1")
        before = [await client.receive(timeout=5) for client in (publisher, member)]

        shards[0].kill()
        # 1. Unready, naming the control shard; the other shard is still live.
        await eventually(lambda: readyz(pod)[0] == 503, 10, "/readyz 503")
        body = readyz(pod)[1]
        assert body == {
            "status": "unready",
            "reason": "Redis shards down: s0 (control)",
            "node": pod.node_id,
            "shardsDown": ["s0"],
        }
        assert (shard_up(pod, "s0"), shard_up(pod, "s1")) == (0, 1)
        # 2. Connected clients keep the other shard's rooms; the control shard's fail.
        await publisher.publish(other, "elsewhere", id="o1")
        for client in (publisher, member):
            event = await client.receive(timeout=5)
            assert (event["room"], event["data"]) == (other, "elsewhere")
        await refused_at_once(publisher.publish(control_room, "lost?", id="c2"))
        # 3. The server API: the room's publish is refused the same way; a disconnect (a
        #    command to every relay, over the control shard) cannot be sent: 503.
        async with httpx.AsyncClient(base_url=pod.admin, headers={"x-api-key": API_KEY}) as api:
            refused = await api.post(f"/api/v1/rooms/{control_room}/events", json={"data": 1})
            assert refused.status_code == 503, refused.text
            assert SHARD_DOWN in refused.json()["message"]
            kick = await api.post("/api/v1/subjects/someone/disconnect", json={"reason": "x"})
            assert (kick.status_code, kick.json()["code"]) == (503, "unavailable"), kick.text

        # 4. Restarted from its append-only file: ready again, same epoch, next offset.
        shards[0].start()
        await eventually(lambda: readyz(pod) == (200, {"status": "ready", "node": pod.node_id}),
                         15, "/readyz 200 with no shard down")  # fmt: skip
        await publisher.publish(control_room, "after", id="c3")
        for client, first in zip((publisher, member), before, strict=True):
            event = await client.receive(timeout=5)
            assert event["op"] == "event" and event["data"] == "after", event
            assert event["offset"] == first["offset"] + 1  # and no re-sync: the same epoch


async def test_a_dead_nodes_presence_leaves_rooms_on_live_shards_now_and_the_others_later(
    shards: list[RedisProcess],
) -> None:
    """A node that died had presence members in rooms on both shards. While one shard is
    down, a survivor's reap removes (and returns, to be announced) its members on the live
    shard, and keeps the node claimable: once the shard is back, the next reap removes the
    rest, each member once. (A shard down used to abort the whole reap after the claim, so
    the node's members in every later room stayed forever.)"""
    urls = shard_urls(shards)
    rooms = await rooms_by_shard(urls)
    broker = RedisBroker(
        urls, "survivor", RedisOptions(timeout=1, probe_interval=0.5, probe_timeout=1.5)
    )
    await broker.start()
    try:
        await eventually(lambda: all(broker.shards().values()), 10, "both shards live")
        dead, survivor = RedisState(broker, "dead"), RedisState(broker, "survivor")
        members = {shard: {"sub": "p", "conn": f"c-{shard}", "node": "dead"} for shard in rooms}
        for shard, room in rooms.items():
            await dead.presence_apply(room, [members[shard]], [], False)
        await dead.alive("dead")  # its last renewal: any dead_after from now on has passed

        shards[1].kill()
        await eventually(lambda: not broker.shards()["s1"], 10, "s1 down")
        assert await survivor.reap(dead_after=0) == [(rooms["s0"], [members["s0"]])]
        assert await survivor.presence_members(rooms["s0"], 10) == (0, [])

        shards[1].start()  # from its append-only file: the member is still there
        await eventually(lambda: broker.shards()["s1"], 15, "s1 live again")
        again = dict(await survivor.reap(dead_after=0))
        assert again == {rooms["s0"]: [], rooms["s1"]: [members["s1"]]}
        assert await survivor.presence_members(rooms["s1"], 10) == (0, [])
        assert await survivor.reap(dead_after=0) == []  # nothing left to claim
    finally:
        await broker.close()
