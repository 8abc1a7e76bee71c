"""The lean Pub/Sub connection (relay.broker.pubsub) against a real redis-server.

What the relay's feed relies on: every message of a subscribed channel handed over in
publish order, however the replies are split over reads (a burst larger than one read,
bursts that end mid-reply); SUBSCRIBE confirmed; UNSUBSCRIBE stops the channel; an error
reply (a SUBSCRIBE the ACL refuses), a failing message handler or a lost connection end
the connection with a reason and fail every waiting confirmation, never a silent stop.
(The shard around it, reconnects, the probe and resubscription: test_faults.py,
test_chaos.py; Sentinel and TLS: test_redis_sentinel.py, test_redis_tls.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from relay import contract
from relay.broker.base import BrokerUnavailable
from relay.broker.connection import Connector
from relay.broker.pubsub import PubSubConnection
from relay.config import RedisEndpoint
from support import redis_acl
from support.processes import LOOPBACK, RedisProcess
from support.waiting import eventually

pytestmark = pytest.mark.integration

TIMEOUT = 1.0


@pytest.fixture
async def client(redis: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    yield client
    await client.aclose()


def subscribers(client: Redis, channel: bytes, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(await client.pubsub_numsub(channel) == [(channel, count)])

    return check


class Received:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []

    def __call__(self, channel: bytes, data: bytes) -> None:
        self.messages.append((channel, data))


async def test_messages_arrive_in_publish_order_across_split_reads(
    client: Redis, redis: RedisProcess
) -> None:
    received = Received()
    conn = await PubSubConnection.open(client, redis.url, received)
    try:
        confirmed = conn.subscribed(b"room:{a}")
        conn.subscribe(b"room:{a}", b"room:{b}")
        await asyncio.wait_for(confirmed, TIMEOUT)
        # Large payloads (several reads each) and many small ones (many per read).
        big = [bytes([65 + i % 26]) * 200_000 for i in range(5)]
        small = [b"%d" % i for i in range(2000)]
        async with client.pipeline(transaction=False) as pipe:
            for i, data in enumerate([*big, *small]):
                pipe.publish("room:{a}" if i % 2 else "room:{b}", data)
            await pipe.execute()
        total = len(big) + len(small)
        await eventually(lambda: len(received.messages) == total, 10, f"{total} messages")
        assert [data for _, data in received.messages] == [*big, *small]
        channels = {channel for channel, _ in received.messages}
        assert channels == {b"room:{a}", b"room:{b}"}
        assert not conn.lost.done()

        conn.unsubscribe(b"room:{b}")
        await eventually(subscribers(client, b"room:{b}", 0), 5, "the UNSUBSCRIBE")
        await client.publish("room:{b}", "gone")
        await client.publish("room:{a}", "last")
        await eventually(lambda: received.messages[-1] == (b"room:{a}", b"last"), 5, "last")
        assert (b"room:{b}", b"gone") not in received.messages
    finally:
        conn.abort()


async def test_each_confirmation_resolves_only_the_waiters_of_its_channel(
    client: Redis, redis: RedisProcess
) -> None:
    """A join reads its room's position once its SUBSCRIBE is confirmed (relay.hub): another
    channel's confirmation taken for its own would leave a gap between position and feed."""
    conn = await PubSubConnection.open(client, redis.url, Received())
    try:
        later = conn.subscribed(b"room:{later}")
        channels = [b"room:{%d}" % n for n in range(3)]
        confirmed = [conn.subscribed(channel) for channel in channels]
        conn.subscribe(*channels)  # one command, one confirmation per channel
        await asyncio.wait_for(asyncio.gather(*confirmed), TIMEOUT)
        assert not later.done()  # every confirmation so far was another channel's
        conn.subscribe(b"room:{later}")
        await asyncio.wait_for(later, TIMEOUT)
    finally:
        conn.abort()


async def test_a_lost_connection_fails_lost_and_the_waiting_confirmations(
    client: Redis, redis: RedisProcess
) -> None:
    conn = await PubSubConnection.open(client, redis.url, Received())
    conn.subscribe(b"room:{a}")
    await eventually(subscribers(client, b"room:{a}", 1), 5, "the SUBSCRIBE")
    waiting = conn.subscribed(b"room:{never}")  # no SUBSCRIBE sent for it
    await client.client_kill_filter(_type="pubsub")
    with pytest.raises(RedisConnectionError, match="lost"):
        await asyncio.wait_for(asyncio.shield(conn.lost), TIMEOUT)
    with pytest.raises(BrokerUnavailable, match="Pub/Sub connection lost"):
        await waiting
    with pytest.raises(BrokerUnavailable, match="lost"):
        conn.subscribe(b"room:{b}")  # a lost connection takes nothing more
    with pytest.raises(BrokerUnavailable):
        await conn.subscribed(b"room:{b}")


async def test_a_failing_handler_ends_the_connection_with_its_reason(
    client: Redis, redis: RedisProcess
) -> None:
    def handler(channel: bytes, data: bytes) -> None:
        raise ValueError("bad handler")

    conn = await PubSubConnection.open(client, redis.url, handler)
    confirmed = conn.subscribed(b"room:{a}")
    conn.subscribe(b"room:{a}")
    await asyncio.wait_for(confirmed, TIMEOUT)
    await client.publish("room:{a}", "x")
    with pytest.raises(RedisConnectionError, match=r"handling a message failed.*bad handler"):
        await asyncio.wait_for(asyncio.shield(conn.lost), TIMEOUT)


async def test_a_subscribe_the_acl_refuses_ends_the_connection_and_says_why(
    tmp_path: Path,
) -> None:
    server = redis_acl.acl_redis(tmp_path)
    connector = Connector(
        username=contract.RELAY_REDIS_USER, password=SecretStr(redis_acl.RELAY_PASSWORD)
    )
    endpoint = RedisEndpoint.parse(f"redis://{LOOPBACK}:{server.port}/0")
    client = connector.client(endpoint, timeout=TIMEOUT, retries=0)
    try:
        conn = await PubSubConnection.open(client, endpoint.url, Received())
        refused = conn.subscribed(b"outside-channel")
        conn.subscribe(b"outside-channel")
        with pytest.raises(BrokerUnavailable):
            await asyncio.wait_for(refused, TIMEOUT)
        with pytest.raises(RedisConnectionError, match="NOPERM"):
            await asyncio.wait_for(asyncio.shield(conn.lost), TIMEOUT)
    finally:
        await client.aclose()
        server.stop()
