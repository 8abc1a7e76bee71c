"""Chaos run: every durable event reaches every client exactly once, in order, whatever
fails (issue: durable rooms, tests 1 and 2).

3 relay pods, 2 Redis shards with AOF (appendfsync always), 20 resuming clients over 4
rooms, 4 publishers sending 5,000 events with ids. While they run: a relay pod is
SIGKILLed, every pod's Pub/Sub connection is killed (CLIENT KILL TYPE pubsub), one Redis
shard is SIGKILLed and restarted from its AOF, and publishers drop their connection
right after a burst (before reading the acks) and re-send through another pod.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from gamecluster_client import Ack, Client, Event
from support.processes import RedisProcess, RelayProcess

pytestmark = pytest.mark.integration

ROOMS = [f"chaos:{n}" for n in range(4)]
EVENTS_PER_ROOM = 1250
SUBSCRIBERS = 20
ROOMS_PER_SUBSCRIBER = 2
FAST = {
    "RELAY_PUBLISH_RATE": "100000",
    "RELAY_PUBLISH_BURST": "100000",
    "RELAY_LOG_LEVEL": "warning",
}


VOLATILE_LOSS_BOUND = 0.05
"""docs/delivery.md: volatile rooms lose at most 5% of deliveries over this run's faults."""


@dataclass
class Subscriber:
    client: Client
    rooms: list[str]
    arrived: asyncio.Event
    received: dict[str, list[int]] = field(default_factory=dict)
    offsets: dict[str, list[int]] = field(default_factory=dict)

    async def collect(self) -> None:
        await asyncio.gather(*(self._collect(room) for room in self.rooms))

    async def _collect(self, room: str) -> None:
        async for message in self.client.room(room):
            if isinstance(message, Event):
                self.received.setdefault(message.room, []).append(message.data["n"])
                self.offsets.setdefault(message.room, []).append(message.offset or 0)
                self.arrived.set()

    def count(self) -> int:
        return sum(len(got) for got in self.received.values())


@dataclass
class Run:
    pods: list[RelayProcess]
    shards: list[RedisProcess]
    subscribers: list[Subscriber]
    acks: dict[str, Ack]
    elapsed: float


async def chaos_run(
    redis_factory: Callable[..., RedisProcess], relay_factory, env: dict[str, str]
) -> Run:
    shards = [redis_factory(aof=True) for _ in range(2)]
    urls = [s.url for s in shards]
    pods = [relay_factory(n, redis_urls=urls, env={**FAST, **env}) for n in "abc"]
    pod_urls = [p.url for p in pods]

    arrived = asyncio.Event()
    subscribers = []
    for n in range(SUBSCRIBERS):
        rotated = pod_urls[n % 3 :] + pod_urls[: n % 3]
        rooms = [ROOMS[(n + k) % len(ROOMS)] for k in range(ROOMS_PER_SUBSCRIBER)]
        subscriber = Subscriber(Client(rotated), rooms, arrived)
        await subscriber.client.connect()
        for room in rooms:
            # Every subscriber is in its rooms (`join()` returns on `joined`) before the
            # first publish.
            await subscriber.client.room(room).join()
        subscribers.append(subscriber)
    collectors = [asyncio.create_task(s.collect()) for s in subscribers]
    publishers = [Client(pod_urls[n % 3 :] + pod_urls[: n % 3]) for n in range(len(ROOMS))]
    for publisher in publishers:
        await publisher.connect()
    acks: dict[str, Ack] = {}
    futures: list[tuple[str, asyncio.Future[Ack]]] = []

    def in_a_thread(blocking: Callable[[], object]) -> Callable[[], Awaitable[object]]:
        # SIGKILL + wait, redis-cli, a restart waiting for the port: blocking calls that
        # must not freeze the 24 clients this loop runs while the fault happens.
        return lambda: asyncio.to_thread(blocking)

    async def on_the_loop(act: Callable[[], object]) -> None:
        act()

    async def faults(progress: Callable[[], float]) -> None:
        steps: list[tuple[float, Callable[[], Awaitable[object]]]] = [
            (0.2, in_a_thread(pods[0].kill)),
            (0.4, in_a_thread(lambda: [s.cli("CLIENT", "KILL", "TYPE", "pubsub") for s in shards])),
            (0.6, in_a_thread(shards[1].restart)),
            # Aborting a client's transport belongs to the loop that runs it.
            (0.8, lambda: on_the_loop(lambda: [p.drop_connection() for p in publishers])),
        ]
        for threshold, fault in steps:
            while progress() < threshold:  # noqa: ASYNC110 - polled, no event to await
                await asyncio.sleep(0.05)
            await fault()

    total = EVENTS_PER_ROOM * len(ROOMS)

    def acked() -> float:
        return sum(f.done() for _, f in futures) / total

    fault_task = asyncio.create_task(faults(acked))
    start = time.monotonic()
    for n in range(EVENTS_PER_ROOM):
        for room, publisher in zip(ROOMS, publishers, strict=True):
            msg_id = f"{room}#{n}"
            publish = publisher.room(room).publish({"n": n}, id=msg_id, timeout=None)
            futures.append((msg_id, asyncio.ensure_future(publish)))
        if n % 25 == 24:
            # Pacing (about 1,000 events/s): the faults, triggered by acked progress, land
            # while events are flowing rather than after the last one.
            await asyncio.sleep(0.1)
    await asyncio.wait_for(fault_task, 60)
    for msg_id, future in futures:
        acks[msg_id] = await asyncio.wait_for(future, 60)

    # Until every subscriber has everything, or (volatile rooms, which lose events) no
    # event has arrived for 3 seconds; 60 seconds at most.
    expected = SUBSCRIBERS * ROOMS_PER_SUBSCRIBER * EVENTS_PER_ROOM
    deadline = time.monotonic() + 60
    while sum(s.count() for s in subscribers) < expected and time.monotonic() < deadline:
        arrived.clear()
        try:
            await asyncio.wait_for(arrived.wait(), 3)
        except TimeoutError:
            break
    elapsed = time.monotonic() - start
    for task in collectors:
        task.cancel()
    for client in [s.client for s in subscribers] + publishers:
        await client.close()
    return Run(pods, shards, subscribers, acks, elapsed)


async def test_durable_rooms_lose_and_duplicate_nothing_under_chaos(
    redis_factory, relay_factory
) -> None:
    run = await chaos_run(redis_factory, relay_factory, {})
    expected = list(range(EVENTS_PER_ROOM))
    for subscriber in run.subscribers:
        for room in subscriber.rooms:
            # Every event once, in offset order. (Offset order is the room's order; a
            # publisher's retried event may be stored after its later ones.)
            assert subscriber.offsets.get(room) == [n + 1 for n in expected], room
            assert sorted(subscriber.received[room]) == expected, room
        assert subscriber.client.stats.duplicates == 0
        assert subscriber.client.stats.gaps == 0
        assert subscriber.client.stats.not_recovered == 0
    # Every publish acked exactly once, and stored exactly once: offsets 1..N per room.
    assert len(run.acks) == EVENTS_PER_ROOM * len(ROOMS)
    for room in ROOMS:
        acked = [a.offset for i, a in run.acks.items() if i.startswith(room + "#")]
        offsets = sorted(int(str(o)) for o in acked)
        assert offsets == list(range(1, EVENTS_PER_ROOM + 1)), room
    print(f"\nchaos run (durable): {len(run.acks)} events, {run.elapsed:.1f}s, all delivered once")


async def test_volatile_rooms_under_the_same_chaos_report_their_losses(
    redis_factory, relay_factory
) -> None:
    env = {"RELAY_ROOMS": '[{"match": "chaos:*", "policy": "volatile"}]'}
    run = await chaos_run(redis_factory, relay_factory, env)
    expected = EVENTS_PER_ROOM * ROOMS_PER_SUBSCRIBER * len(run.subscribers)
    received = 0
    for subscriber in run.subscribers:
        for room in subscriber.rooms:
            got = subscriber.received.get(room, [])
            assert len(got) == len(set(got)), "volatile rooms lose events but never duplicate"
            received += len(got)
    assert len(run.acks) == EVENTS_PER_ROOM * len(ROOMS)
    lost = expected - received
    share = 100 * lost / expected
    print(f"\nchaos run (volatile): {lost} of {expected} deliveries lost ({share:.2f}%)")
    assert lost <= VOLATILE_LOSS_BOUND * expected, f"{share:.2f}% lost, more than documented"
