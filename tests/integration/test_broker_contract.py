"""One set of test bodies for every broker: the embedded one and Redis (a real redis-server).

The hub relies on what `relay.broker.base.Broker` promises: offsets +1 per event within an
epoch, a bounded history read after an offset, publish ids deduplicated for the window, an
idle room's history dropped after its TTL, deliveries only for subscribed rooms. Running the
same bodies against both brokers keeps embedded mode (`make run`, most client tests) from
drifting away from what production runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from relay import protocol
from relay.broker import Broker, Delivery, History
from relay.broker.memory import MemoryBroker
from relay.broker.options import RedisOptions
from relay.broker.redis import RedisBroker
from relay.broker.slots import RedisClusterBroker
from relay.rooms import RoomPolicy
from support.processes import RedisProcess
from support.rediscluster import RedisCluster
from support.waiting import eventually

pytestmark = pytest.mark.integration

DEDUPE_SECONDS = 1
DURABLE = RoomPolicy(policy="durable", history_size=5, history_ttl_seconds=60)
VOLATILE = RoomPolicy(policy="volatile")
NOTHING_MORE = 2.0
"""How long a delivery may take to show up (Redis Pub/Sub on loopback takes a millisecond)."""


class Feed:
    """What the broker hands its listener, awaitable in arrival order."""

    def __init__(self, broker: Broker) -> None:
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue()
        broker.set_listener(self.queue.put_nowait)

    async def next(self) -> Delivery:
        return await asyncio.wait_for(self.queue.get(), NOTHING_MORE)

    async def until(self, room: str) -> list[Delivery]:
        """Everything delivered up to and including the next delivery of `room`.

        A barrier: the broker delivers one shard's events in publish order, so once the
        marker room's event is here, anything published before it would be here too.
        """
        seen = [await self.next()]
        while seen[-1].room != room:
            seen.append(await self.next())
        return seen


@pytest.fixture(params=["memory", "redis", "cluster"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    options = RedisOptions(
        timeout=1.0, probe_interval=0.5, probe_timeout=1.5, dedupe_seconds=DEDUPE_SECONDS
    )
    if request.param == "memory":
        made: Broker = MemoryBroker("node-a", dedupe_seconds=DEDUPE_SECONDS)
    elif request.param == "cluster":
        # A real 3-master Redis Cluster; the rooms of these tests are spread over its
        # nodes. A seed is enough: the broker reads the slot map from it.
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        made = RedisClusterBroker(cluster.urls[:1], "node-a", options)
    else:
        server: RedisProcess = request.getfixturevalue("redis")
        made = RedisBroker((server.url,), "node-a", options)
    await made.start()
    await eventually(lambda: made.ready, 10, f"the {request.param} broker to be ready")
    yield made
    await made.close()


async def publish(
    broker: Broker,
    room: str,
    data: Any,
    policy: RoomPolicy = DURABLE,
    msg_id: str | None = None,
    subject: str | None = None,
) -> Any:
    return await broker.publish(
        room, data, ts=1_700_000_000_000, policy=policy, msg_id=msg_id, subject=subject
    )


def recoverable(history: History, epoch: str, offset: int) -> bool:
    """docs/protocol.md: a resume from (epoch, offset) is served only from a complete history."""
    if history.epoch != epoch or offset > history.top:
        return False
    offsets = [d.offset for d in history.entries]
    return offsets == list(range(offset + 1, history.top + 1))


async def test_offsets_grow_by_one_within_one_epoch_and_events_are_encoded_once(
    broker: Broker,
) -> None:
    feed = Feed(broker)
    await broker.subscribe("r")
    start = await broker.history("r", None, DURABLE)
    assert (start.top, start.entries) == (0, [])
    results = [await publish(broker, "r", {"n": n}, subject="alice") for n in range(3)]
    assert [r.offset for r in results] == [1, 2, 3]
    assert {r.epoch for r in results} == {start.epoch}
    assert not any(r.duplicate for r in results)
    delivered = [await feed.next() for _ in range(3)]
    for n, delivery in enumerate(delivered):
        assert (delivery.room, delivery.offset, delivery.epoch) == ("r", n + 1, start.epoch)
        assert delivery.origin == "node-a" and delivery.ts == 1_700_000_000_000
        # The bytes clients get, exactly as the protocol module encodes them.
        assert delivery.payload == protocol.event("r", n + 1, {"n": n}, delivery.ts, "alice")


async def test_history_returns_what_follows_an_offset_bounded_by_the_history_size(
    broker: Broker,
) -> None:
    for n in range(8):  # history_size 5: offsets 4..8 are kept
        await publish(broker, "h", n)
    history = await broker.history("h", 0, DURABLE)
    assert history.top == 8
    assert [d.offset for d in history.entries] == [4, 5, 6, 7, 8]
    assert [orjson.loads(d.payload)["data"] for d in history.entries] == [3, 4, 5, 6, 7]
    assert [d.offset for d in (await broker.history("h", 6, DURABLE)).entries] == [7, 8]
    assert (await broker.history("h", 8, DURABLE)).entries == []
    assert (await broker.history("h", None, DURABLE)).entries == []
    assert recoverable(await broker.history("h", 4, DURABLE), history.epoch, 4)
    assert not recoverable(await broker.history("h", 1, DURABLE), history.epoch, 1)  # trimmed
    # An epoch is per room: another room starts at 0 and does not move this one's offsets.
    assert (await broker.history("other", None, DURABLE)).top == 0
    assert (await broker.history("h", None, DURABLE)).top == 8


async def test_a_retried_id_is_stored_and_delivered_once_per_subject(broker: Broker) -> None:
    feed = Feed(broker)
    await broker.subscribe("d")
    first = await publish(broker, "d", "x", msg_id="m1", subject="alice")
    again = await publish(broker, "d", "x", msg_id="m1", subject="alice")
    assert again.duplicate and not first.duplicate
    assert (again.offset, again.epoch) == (first.offset, first.epoch)
    # The same id from someone else is another event.
    other = await publish(broker, "d", "y", msg_id="m1", subject="bob")
    assert not other.duplicate and other.offset == first.offset + 1
    delivered = await feed.until("d") + await feed.until("d")
    assert [d.offset for d in delivered] == [1, 2]
    history = await broker.history("d", 0, DURABLE)
    assert [d.offset for d in history.entries] == [1, 2] and history.top == 2


async def test_a_volatile_id_is_sent_once_and_never_stored(broker: Broker) -> None:
    feed = Feed(broker)
    await broker.subscribe("v")
    await broker.subscribe("marker")
    first = await publish(broker, "v", "x", VOLATILE, msg_id="m1")
    again = await publish(broker, "v", "x", VOLATILE, msg_id="m1")
    assert again.duplicate and not first.duplicate
    await publish(broker, "marker", "end", VOLATILE)
    delivered = await feed.until("marker")
    assert [(d.room, orjson.loads(d.payload)["data"]) for d in delivered] == [
        ("v", "x"),
        ("marker", "end"),
    ]


async def test_an_id_is_forgotten_after_the_dedupe_window(broker: Broker) -> None:
    first = await publish(broker, "w", "x", msg_id="m1")
    # Expiry is a matter of time (Redis EX, the memory broker's clock): no event to await.
    await asyncio.sleep(DEDUPE_SECONDS + 0.5)
    later = await publish(broker, "w", "x", msg_id="m1")
    assert not later.duplicate and later.offset == first.offset + 1


async def test_a_room_idle_past_its_ttl_loses_its_history_and_reads_do_not_keep_it(
    broker: Broker,
) -> None:
    short = RoomPolicy(policy="durable", history_size=5, history_ttl_seconds=1)
    for n in range(3):
        await publish(broker, "t", n, short)
    idle_since = time.monotonic()  # the TTL runs from the last publish, a little earlier
    before = await broker.history("t", 0, short)
    assert [d.offset for d in before.entries] == [1, 2, 3]
    # Idle means no publish: reads (a join's; here one every 50 ms) must not extend the
    # TTL. Were they to, these reads would keep the history for as long as they go on.
    # The expiry itself is a matter of time: awaited as a state, with no sleep for it.
    whole_at: list[float] = []
    reads: list[History] = []

    async def expired() -> bool:
        reads.append(await broker.history("t", 1, short))
        if recoverable(reads[-1], before.epoch, 1):
            whole_at.append(time.monotonic() - idle_since)
            return False
        return True

    await eventually(expired, 5 * short.history_ttl_seconds, "the history to expire while read")
    # Whole for at least half its TTL (a read sees all of it until then) and then gone.
    assert whole_at and whole_at[-1] >= 0.5 * short.history_ttl_seconds, whole_at
    after = reads[-1]
    assert after.entries == []
    assert not recoverable(after, before.epoch, 1)
    # The room goes on: the next event continues from the position now announced.
    fresh = await publish(broker, "t", "new", short)
    assert (fresh.epoch, fresh.offset) == (after.epoch, after.top + 1)


async def test_deliveries_only_while_subscribed(broker: Broker) -> None:
    feed = Feed(broker)
    await broker.subscribe("marker")
    await publish(broker, "s", "before")
    await broker.subscribe("s")
    await publish(broker, "s", "during")
    await broker.unsubscribe("s")
    # UNSUBSCRIBE is not confirmed; a round trip on the same feed is its barrier.
    await publish(broker, "marker", "unsubscribed")
    delivered = await feed.until("marker")
    await publish(broker, "s", "after")
    await publish(broker, "marker", "end")
    delivered += await feed.until("marker")
    data = [orjson.loads(d.payload)["data"] for d in delivered]
    assert data == ["during", "unsubscribed", "end"]
