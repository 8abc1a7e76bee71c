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

import pytest

from gamecluster_client import Connection as RelayClient
from gamecluster_client import ServerError
from support.processes import RedisProcess

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
