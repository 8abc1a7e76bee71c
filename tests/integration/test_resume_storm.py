"""Many resumes at once on one relay: they queue for history reads instead of failing.

A dead pod's clients all rejoin the survivors at once (bench/resume_storm.py). Each join
of a durable room reads the room's history through the shard's redis-py pool (100
connections), which fails a command at once when it is empty; the hub bounds the joins'
reads in flight (relay.hub.JOIN_READS) so the rest wait their turn. Here Redis is paused
for writes (CLIENT PAUSE ... WRITE holds every script) while more than a pool's worth of
clients rejoin: every one of them must be answered `joined`, recovered, with its missed
events, none with `unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gamecluster_client import Connection as RelayClient
from gamecluster_client import ServerError
from relay.hub import JOIN_READS
from support.metrics import metric_value
from support.processes import RedisProcess
from support.waiting import eventually

pytestmark = pytest.mark.integration

CLIENTS = 250
"""Rejoining at once: well over the redis-py pool's 100 connections."""
PATIENT = {
    # Commands and probes wait out the pause instead of calling Redis lost.
    "RELAY_REDIS_TIMEOUT": "20",
    "RELAY_PROBE_INTERVAL": "10",
    "RELAY_PROBE_TIMEOUT": "20",
}


async def test_more_resumes_at_once_than_redis_connections_all_recover(
    redis: RedisProcess, relay_factory
) -> None:
    pod = relay_factory("a", redis_urls=[redis.url], env=PATIENT)
    async with RelayClient(pod.url) as publisher:
        joined = await publisher.join("storm:1")
        for n in range(3):
            await publisher.publish("storm:1", n, id=f"e{n}")
    since = {"epoch": joined["epoch"], "offset": joined["offset"] + 1}
    clients = [RelayClient(pod.url, timeout=30) for _ in range(CLIENTS)]
    try:
        await asyncio.gather(*(client.connect() for client in clients))
        # Every history read now waits in Redis until the pause ends; meanwhile all the
        # joins arrive, so without the bound more reads than the pool holds are asked for.
        await asyncio.to_thread(redis.cli, "CLIENT", "PAUSE", "3000", "WRITE")
        answers = await asyncio.gather(
            *(client.join("storm:1", since=since) for client in clients),
            return_exceptions=True,
        )
        refused = [a for a in answers if isinstance(a, ServerError)]
        assert refused == [], f"{len(refused)} of {CLIENTS} joins refused, first: {refused[0]}"
        assert all(not isinstance(a, BaseException) and a["recovered"] for a in answers)
        for client in clients:
            replayed = [(await client.receive())["data"] for _ in range(2)]
            assert replayed == [1, 2]
    finally:
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


async def test_clients_gone_while_their_joins_queue_neither_stay_counted_nor_read(
    redis: RedisProcess, relay_factory
) -> None:
    """A join queued for a history-read slot (JOIN_READS) whose client disconnects gives
    up at once: the session stops being counted (relay_connections, the load reports)
    and no history read is made for it when the queue moves on."""
    pod = relay_factory("a", redis_urls=[redis.url], env=PATIENT)
    async with RelayClient(pod.url) as publisher:
        joined = await publisher.join("storm:2")
        for n in range(3):
            await publisher.publish("storm:2", n, id=f"e{n}")
    since = {"epoch": joined["epoch"], "offset": joined["offset"] + 1}  # resumes: XRANGE
    reading = [RelayClient(pod.url, timeout=30) for _ in range(JOIN_READS)]
    queued = [RelayClient(pod.url, timeout=30) for _ in range(8)]
    clients = reading + queued
    try:
        await asyncio.gather(*(client.connect() for client in clients))
        await eventually(
            lambda: metric_value(pod.metrics(), "relay_connections") == len(clients),
            10,
            "every client counted",
        )
        # An open room (the publisher left it but its subscription lingers, or it is
        # subscribed afresh on the first join): either way each resume reads history.
        await asyncio.to_thread(redis.cli, "CLIENT", "PAUSE", "30000", "WRITE")
        xranges = _calls(redis, "xrange")
        joins = [asyncio.create_task(client.join("storm:2", since=since)) for client in reading]
        # Every slot held: JOIN_READS history scripts held by the pause.
        await eventually(
            lambda: _blocked(redis) >= JOIN_READS, 10, f"{JOIN_READS} history reads in Redis"
        )
        for client in queued:
            await client.send({"op": "join", "room": "storm:2", "since": since, "ref": "q"})
        # A reply on a connection opened later comes after the relay handled the joins
        # sent before it (one loop, data read in arrival order): they now wait for a slot.
        async with RelayClient(pod.url) as later:
            await later.ping()
        await asyncio.gather(*(client.close() for client in queued))
        await eventually(
            lambda: metric_value(pod.metrics(), "relay_connections") == JOIN_READS,
            5,  # well before JOIN_READ_WAIT_SECONDS would refuse the queued joins anyway
            "the sessions of the clients gone from the queue to end",
        )
        await asyncio.to_thread(redis.cli, "CLIENT", "UNPAUSE")
        answers = await asyncio.gather(*joins)
        assert all(a["recovered"] for a in answers)
        # Only the joins of the clients still there read history (one XRANGE each).
        assert _calls(redis, "xrange") - xranges == JOIN_READS
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(redis.cli, "CLIENT", "UNPAUSE")
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


def _calls(redis: RedisProcess, command: str) -> int:
    """How many times Redis ran `command` (scripts' calls included): INFO commandstats."""
    for line in redis.cli("INFO", "commandstats").splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            fields = dict(field.split("=") for field in line.split(":", 1)[1].split(","))
            return int(fields["calls"])
    return 0


def _blocked(redis: RedisProcess) -> int:
    """Clients whose command Redis holds (here: by CLIENT PAUSE WRITE)."""
    for line in redis.cli("INFO", "clients").splitlines():
        if line.startswith("blocked_clients:"):
            return int(line.split(":")[1])
    return 0
