"""Rooms shared across relay servers through a real Redis (issue: relay core, tests 1-3, 8)."""

from __future__ import annotations

import orjson
import pytest
from websockets.asyncio.client import connect

from gamecluster_client import Connection as RelayClient
from relay.broker import keys
from support.processes import RedisProcess
from support.waiting import eventually

pytestmark = pytest.mark.integration


async def next_event(client: RelayClient) -> dict[str, object]:
    message = await client.receive(timeout=5)
    assert message["op"] == "event", message
    return message


async def test_publish_reaches_every_member_on_every_pod_and_no_one_else(
    redis: RedisProcess, relay_factory
) -> None:
    pod_a = relay_factory("a", redis_urls=[redis.url])
    pod_b = relay_factory("b", redis_urls=[redis.url])
    async with (
        RelayClient(pod_a.url) as on_a,
        RelayClient(pod_b.url) as on_b,
        RelayClient(pod_a.url) as elsewhere,
    ):
        assert on_a.welcome["node"] == "a" and on_b.welcome["node"] == "b"
        await on_a.join("match:1")
        await on_b.join("match:1")
        await elsewhere.join("match:2")

        await on_a.publish("match:1", {"n": 1}, id="from-a")
        await on_b.publish("match:1", {"n": 2}, id="from-b")
        for client in (on_a, on_b):
            assert [(await next_event(client))["data"] for _ in range(2)] == [{"n": 1}, {"n": 2}]

        # The other room's member got nothing: its next event is the marker sent after.
        await on_b.publish("match:2", "marker", id="marker")
        assert (await next_event(elsewhere))["data"] == "marker"


async def test_player_who_moves_to_another_pod_keeps_receiving(
    redis: RedisProcess, relay_factory
) -> None:
    pod_a = relay_factory("a", redis_urls=[redis.url])
    pod_b = relay_factory("b", redis_urls=[redis.url])
    async with RelayClient(pod_a.url) as p2, RelayClient(pod_a.url) as p3:
        await p2.join("arena")
        await p3.join("arena")
        async with RelayClient(pod_a.url) as p1_first:
            await p1_first.join("arena")
            await p2.publish("arena", "before", id="e0")
            assert (await next_event(p1_first))["data"] == "before"
        async with RelayClient(pod_b.url) as p1:
            await p1.join("arena")
            await p2.publish("arena", "from p2", id="e1")
            await p3.publish("arena", "from p3", id="e2")
            received = [(await next_event(p1))["data"] for _ in range(2)]
        assert received == ["from p2", "from p3"]


async def test_pod_unsubscribes_a_room_after_its_last_member_leaves(
    redis: RedisProcess, relay_factory
) -> None:
    pod = relay_factory("a", redis_urls=[redis.url])
    channel = keys.channel("lobby").decode()

    def subscribers() -> int:
        return int(redis.cli("PUBSUB", "NUMSUB", channel).split()[-1])

    async with RelayClient(pod.url) as first, RelayClient(pod.url) as second:
        await first.join("lobby")
        await second.join("lobby")
        assert subscribers() == 1  # one subscription per pod, however many members
        await first.leave("lobby")
        assert subscribers() == 1
        await second.leave("lobby")
        await eventually(lambda: subscribers() == 0, 5, "the pod to UNSUBSCRIBE the empty room")
        await second.join("lobby")
        assert subscribers() == 1


async def test_embedded_broker_serves_a_room_without_redis(relay_factory) -> None:
    pod = relay_factory("solo")
    async with RelayClient(pod.url) as one, RelayClient(pod.url) as two:
        joined = await one.join("chat")
        await two.join("chat")
        ack = await one.publish("chat", {"hello": "world"}, id="m1")
        assert ack is not None and ack["offset"] == joined["offset"] + 1
        for client in (one, two):
            event = await next_event(client)
            assert event["data"] == {"hello": "world"} and event["offset"] == ack["offset"]


async def test_compression_when_enabled(relay_factory) -> None:
    pod = relay_factory("z", env={"RELAY_COMPRESSION": "true"})
    async with connect(pod.url) as ws:  # offers permessage-deflate by default
        assert ws.response is not None
        assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
        await ws.recv()  # welcome
        await ws.send('{"op": "join", "room": "z", "ref": "1"}')
        await ws.send('{"op": "publish", "room": "z", "data": "squeezed", "id": "c1"}')
        messages: list[dict[str, object]] = []
        while len(messages) < 3:  # joined, event, ack (event and ack in either order)
            messages += [orjson.loads(line) for line in str(await ws.recv()).split("\n")]
        assert {"op": "event", "room": "z", "offset": 1, "data": "squeezed"}.items() <= next(
            m for m in messages if m["op"] == "event"
        ).items()
