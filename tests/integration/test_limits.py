"""Bad input and slow consumers (issue: relay core, tests 5 and 6)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gamecluster_client import Connection as RelayClient
from support.metrics import metric_value
from support.processes import RedisProcess

pytestmark = pytest.mark.integration

LIMITS = {
    "RELAY_MAX_MESSAGE_BYTES": "1024",
    "RELAY_MAX_ROOMS_PER_CONNECTION": "2",
    "RELAY_PUBLISH_RATE": "0.5",
    "RELAY_PUBLISH_BURST": "3",
}

BAD_MESSAGES = [
    ("not json at all", "bad_request"),
    ("[1, 2, 3]", "bad_request"),
    ('"just a string"', "bad_request"),
    ('{"room": "r"}', "bad_request"),
    ('{"op": 7}', "bad_request"),
    ('{"op": "dance"}', "unknown_op"),
    ('{"op": "join"}', "bad_request"),
    ('{"op": "join", "room": 5}', "bad_request"),
    ('{"op": "join", "room": "has space"}', "bad_request"),
    ('{"op": "join", "room": ""}', "bad_request"),
    ('{"op": "join", "room": "' + "x" * 129 + '"}', "bad_request"),
    ('{"op": "join", "room": "r", "since": {"offset": "1", "epoch": "e"}}', "bad_request"),
    ('{"op": "publish", "room": "r"}', "bad_request"),
    ('{"op": "publish", "room": "r", "data": 1, "id": 5}', "bad_request"),
    ('{"op": "publish", "room": "r", "data": 1, "id": "' + "i" * 65 + '"}', "bad_request"),
    ('{"op": "ping", "ref": 12}', "bad_request"),
    ('{"op": "publish", "room": "r", "data": 18446744073709551616, "id": "big"}', "bad_request"),
    ('{"op": "publish", "room": "r", "data": [-9223372036854775809]}', "bad_request"),
    ('{"op": "publish", "room": "r", "data": "' + "x" * 2000 + '"}', "too_large"),
]


@pytest.mark.parametrize(
    ("frame", "code"), BAD_MESSAGES, ids=[c + ":" + f[:24] for f, c in BAD_MESSAGES]
)
async def test_bad_input_gets_its_error_code_and_the_connection_lives_on(
    relay_factory, frame: str, code: str
) -> None:
    pod = relay_factory("a", env=LIMITS)
    async with RelayClient(pod.url) as client, RelayClient(pod.url) as bystander:
        await bystander.join("r")
        await client.send_raw(frame)
        error = await client.receive(timeout=5)
        assert error["op"] == "error" and error["code"] == code, error
        assert error["message"]
        assert (await client.ping())["op"] == "pong"
        await client.join("r")
        await client.publish("r", "still here", id="ok")
        assert (await bystander.receive(timeout=5))["data"] == "still here"


async def test_limits_on_rooms_and_publish_rate(relay_factory) -> None:
    pod = relay_factory("a", env=LIMITS)
    async with RelayClient(pod.url) as client:
        await client.join("one")
        await client.join("two")
        await client.send({"op": "join", "room": "three", "ref": "j3"})
        refused = await client.receive(timeout=5)
        assert refused["code"] == "too_many_rooms" and refused["room"] == "three"

        for n in range(3):  # the burst
            assert await client.publish("one", n, id=f"p{n}") is not None
        await client.send({"op": "publish", "room": "one", "data": 3, "id": "p3"})
        inbox = [await client.receive(timeout=5) for _ in range(4)]  # 3 own events, 1 refusal
        assert [m["data"] for m in inbox if m["op"] == "event"] == [0, 1, 2]
        refused = next(m for m in inbox if m["op"] == "error")
        assert (refused["code"], refused["id"], refused["room"]) == ("rate_limited", "p3", "one")


async def test_frame_over_the_hard_limit_closes_with_1009(relay_factory) -> None:
    pod = relay_factory("a", env=LIMITS)
    async with connect(pod.url, max_size=None) as ws:
        await ws.recv()  # welcome
        await ws.send("x" * (4 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    async with RelayClient(pod.url) as other:
        assert (await other.ping())["op"] == "pong"


async def test_batched_frame_is_split_into_messages(relay_factory) -> None:
    pod = relay_factory("a")
    async with connect(pod.url) as ws:
        await ws.recv()  # welcome
        batch = [{"op": "join", "room": "b", "ref": "1"}, {"op": "ping", "ref": "2"}]
        await ws.send("\n".join(orjson.dumps(m).decode() for m in batch))
        replies: list[dict[str, str]] = []
        while len(replies) < 2:
            frame = await asyncio.wait_for(ws.recv(), 5)
            replies += [orjson.loads(line) for line in str(frame).split("\n")]
        assert [(r["op"], r["ref"]) for r in replies] == [("joined", "1"), ("pong", "2")]


async def test_slow_consumer_is_dropped_and_the_room_keeps_flowing(
    redis: RedisProcess, relay_factory
) -> None:
    env = {
        "RELAY_SEND_QUEUE": "50",
        "RELAY_PUBLISH_RATE": "100000",
        "RELAY_PUBLISH_BURST": "100000",
    }
    pod_a = relay_factory("a", redis_urls=[redis.url], env=env)
    pod_b = relay_factory("b", redis_urls=[redis.url], env=env)
    blob = "x" * 16_000
    async with (
        connect(pod_a.url, max_size=None, max_queue=1) as stalled,
        RelayClient(pod_a.url) as reader,
        RelayClient(pod_b.url) as publisher,
    ):
        await stalled.recv()  # welcome
        await stalled.send('{"op": "join", "room": "feed", "ref": "j"}')
        assert orjson.loads(await stalled.recv())["op"] == "joined"
        await reader.join("feed")
        # `stalled` reads no more: its socket buffers fill, then its outbox.
        sent = 0
        while metric_value(pod_a.metrics(), "relay_slow_consumer_disconnects_total") < 1:
            assert sent < 5000, "the stalled client was never dropped"
            for _ in range(50):
                await publisher.publish("feed", {"n": sent, "blob": blob})
                sent += 1
            await publisher.ping()  # publishes before it are done
        for n in range(sent):
            event = await reader.receive(timeout=10)
            assert event["data"]["n"] == n

        last, code = await read_until_closed(stalled)
        assert last == {"op": "reconnect", "reason": "slow_consumer"}
        assert code == 4008


async def read_until_closed(ws: ClientConnection) -> tuple[object, int | None]:
    """The last message before the server closed, and the close code."""
    last: object = None
    while True:
        try:
            frame = str(await asyncio.wait_for(ws.recv(), 10))
        except ConnectionClosed as closed:
            return last, closed.rcvd.code if closed.rcvd else None
        last = orjson.loads(frame.split("\n")[-1])
