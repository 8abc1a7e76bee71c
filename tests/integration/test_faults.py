"""Redis outages and silent partitions (issue: relay core, tests 4 and 9)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from gamecluster_client import Connection as RelayClient
from gamecluster_client import ServerError as RelayError
from relay.broker import BrokerUnavailable, keys
from relay.broker.options import RedisOptions
from relay.broker.redis import RedisBroker
from relay.rooms import RoomPolicy
from support.metrics import metric_value
from support.processes import RedisProcess, free_port
from support.proxy import StallingProxy
from support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_redis_restart_gives_unavailable_then_fanout_recovers(
    redis: RedisProcess, relay_factory
) -> None:
    pod_a = relay_factory("a", redis_urls=[redis.url])
    pod_b = relay_factory("b", redis_urls=[redis.url])
    async with RelayClient(pod_a.url) as on_a, RelayClient(pod_b.url) as on_b:
        await on_a.join("r")
        await on_b.join("r")

        await asyncio.to_thread(redis.kill)
        with pytest.raises(RelayError) as refused:
            await on_a.publish("r", "lost?", id="during-outage")
        assert refused.value.code == "unavailable"
        await eventually(lambda: pod_a.status() == 503 and pod_b.status() == 503, 10, "/readyz 503")
        assert (await on_a.ping())["op"] == "pong"  # sessions stay open through the outage

        await asyncio.to_thread(redis.start)
        await eventually(lambda: pod_a.status() == 200 and pod_b.status() == 200, 15, "/readyz 200")
        await on_a.publish("r", "after", id="after-outage")
        for client in (on_a, on_b):
            # Redis came back empty (no persistence): the room's history and epoch are
            # gone, so members are first told to re-sync, then the feed goes on.
            notice = await client.receive(timeout=5)
            assert notice["op"] == "joined" and notice["recovered"] is False, notice
            event = await client.receive(timeout=5)
            assert event["op"] == "event" and event["data"] == "after"
            assert event["offset"] == 1 and notice["offset"] == 0
        assert metric_value(pod_b.metrics(), "relay_redis_reconnects_total") >= 1


async def test_silent_partition_is_detected_and_healed(redis: RedisProcess, relay_factory) -> None:
    proxy = StallingProxy(redis.port).start()
    try:
        # One Redis under one shard name, through the proxy or not: rooms are placed by
        # the names of the shard map, which both pods must agree on.
        pod_a = relay_factory("a", redis_urls=[f"main={proxy.url}"])
        pod_b = relay_factory("b", redis_urls=[f"main={redis.url}"])
        async with RelayClient(pod_a.url) as on_a, RelayClient(pod_b.url) as on_b:
            await on_a.join("r")
            await on_b.join("r")
            await on_b.publish("r", "before", id="e1")
            for client in (on_a, on_b):
                assert (await client.receive(timeout=5))["data"] == "before"

            proxy.stall()  # both TCP connections stay open; nothing flows
            await eventually(
                lambda: pod_a.status() == 503, 10, "pod a to notice the dead Pub/Sub link"
            )
            assert pod_b.status() == 200

            proxy.flow()
            await eventually(
                lambda: pod_a.status() == 200, 15, "pod a to reconnect and resubscribe"
            )
            await on_b.publish("r", "after", id="e2")
            assert (await on_a.receive(timeout=5))["data"] == "after"
            await on_a.publish("r", "back", id="e3")
            assert [(await on_b.receive(timeout=5))["data"] for _ in range(2)] == ["after", "back"]
        assert metric_value(pod_a.metrics(), "relay_redis_reconnects_total") >= 1
        assert metric_value(pod_b.metrics(), "relay_redis_reconnects_total") == 0
    finally:
        proxy.close()


async def test_a_deaf_subscriber_is_noticed_by_its_probe_and_heals_without_a_gap(
    redis: RedisProcess, relay_factory
) -> None:
    """The failure the self-probe exists for: the Pub/Sub connection stays open and reads
    nothing while everything else of the pod works (its probe's PUBLISH, publishes,
    history reads). Only the probe coming back through the Pub/Sub reader (since issue 18
    relay.broker.pubsub, in data_received) tells the pod it is deaf."""
    proxy = StallingProxy(redis.port).start()
    watching = Redis.from_url(redis.url)
    watcher = watching.pubsub()
    try:
        # One shard name for both (rooms are placed by name, through the proxy or not).
        pod_a = relay_factory("a", redis_urls=[f"main={proxy.url}"])
        pod_b = relay_factory("b", redis_urls=[f"main={redis.url}"])
        await watcher.subscribe(keys.node_channel("a"))  # sees pod a's probe tokens
        async with RelayClient(pod_a.url) as on_a, RelayClient(pod_b.url) as on_b:
            await on_a.join("r")
            await on_b.join("r")
            await on_b.publish("r", "before", id="e1")
            for client in (on_a, on_b):
                assert (await client.receive(timeout=5))["data"] == "before"

            proxy.deafen()  # only what Redis sends pod a's Pub/Sub connection is held
            await on_b.publish("r", "unheard", id="e2")
            assert (await on_b.receive(timeout=5))["data"] == "unheard"
            await eventually(lambda: pod_a.status() == 503, 10, "pod a to notice it is deaf")
            assert pod_b.status() == 200
            # Unlike a partition, pod a's probes still reach Redis while it is deaf (its
            # next session probes too): only its Pub/Sub reader misses them.
            while await watcher.get_message(timeout=0.01) is not None:
                pass  # what was published before now
            probe = await watcher.get_message(ignore_subscribe_messages=True, timeout=5)
            assert probe is not None and probe["type"] == "message", probe
            assert pod_a.status() == 503

            proxy.hear()
            await eventually(lambda: pod_a.status() == 200, 15, "pod a to resubscribe")
            # What pod a did not hear comes from the room's history, before anything newer.
            await on_b.publish("r", "after", id="e3")
            assert [(await on_a.receive(timeout=5))["data"] for _ in range(2)] == [
                "unheard",
                "after",
            ]
        assert metric_value(pod_a.metrics(), "relay_redis_reconnects_total") >= 1
    finally:
        await watcher.aclose()
        await watching.aclose()
        proxy.close()


async def test_an_unreachable_redis_is_reported_with_what_happened() -> None:
    """A BrokerUnavailable reason (logged, and sent to clients as `unavailable`) names what
    failed: redis-py 8's repr of its errors is only `network:ConnectionError`."""
    port = free_port()  # nothing listens there
    broker = RedisBroker(
        (f"redis://127.0.0.1:{port}",),
        "node-a",
        RedisOptions(timeout=1.0, probe_interval=0.5, probe_timeout=1.0),
    )
    reasons: list[str] = []

    async def refused_with_their_cause() -> bool:
        # The shard's first connection attempt has to fail before it knows why it is down.
        reasons.clear()
        for call in (
            broker.history("room", None, RoomPolicy()),
            broker.publish("room", {"n": 1}, ts=1, policy=RoomPolicy()),
        ):
            with pytest.raises(BrokerUnavailable) as refused:
                await call
            reasons.append(str(refused.value))
        return all("ConnectionError" in reason for reason in reasons)

    await broker.start()
    try:
        await eventually(refused_with_their_cause, 5, "refusals naming the connection error")
    finally:
        await broker.close()
    for reason in reasons:
        assert f"connecting to 127.0.0.1:{port}" in reason, reason
        assert reason.startswith(f"Redis shard 127.0.0.1:{port} (redis://127.0.0.1:{port}) is down")
