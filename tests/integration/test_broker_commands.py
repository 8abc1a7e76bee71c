"""The lean publish connection (relay.broker.commands) against a real redis-server.

What the publish path relies on: replies in the order the commands were made, a bounded
wait (a stalled Redis fails what is in flight with BrokerUnavailable, not a hang), a lost
connection failing what is in flight and the next command reconnecting, NOSCRIPT after a
restart answered by running the script anyway, a bound on commands in flight, and the
connection built from the redis-py client's own settings (credentials, database).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from relay.broker import commands
from relay.broker.base import BrokerUnavailable
from support.processes import LOOPBACK, RedisProcess
from support.proxy import StallingProxy

pytestmark = pytest.mark.integration

TIMEOUT = 1.0
COUNT_SCRIPT = commands.Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")


@pytest.fixture
async def client(redis: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    yield client
    await client.aclose()


@pytest.fixture
async def connection(client: Redis) -> AsyncIterator[commands.CommandConnection]:
    connection = commands.CommandConnection(client, timeout=TIMEOUT)
    yield connection
    connection.close()


async def test_concurrent_commands_run_and_answer_in_the_order_they_were_made(
    connection: commands.CommandConnection, client: Redis
) -> None:
    replies = await asyncio.gather(*(connection.execute("RPUSH", "order", i) for i in range(500)))
    assert replies == list(range(1, 501))  # each caller got its own reply
    assert await client.lrange("order", 0, -1) == [str(i).encode() for i in range(500)]


async def test_a_script_lost_by_redis_runs_anyway_and_is_loaded_again(
    connection: commands.CommandConnection, client: Redis
) -> None:
    assert await connection.evalsha(COUNT_SCRIPT, ["n"], [2]) == 2
    await client.script_flush()  # what a Redis restart does to the script cache
    assert await connection.evalsha(COUNT_SCRIPT, ["n"], [3]) == 5
    assert await client.script_exists(COUNT_SCRIPT.sha) == [True]


async def test_an_error_reply_of_a_script_is_broker_unavailable_and_the_next_runs(
    connection: commands.CommandConnection, client: Redis
) -> None:
    await client.set("text", "not a number")
    with pytest.raises(BrokerUnavailable, match="refused the script"):
        await connection.evalsha(COUNT_SCRIPT, ["text"], [1])
    assert await connection.evalsha(COUNT_SCRIPT, ["n"], [1]) == 1


async def test_a_stalled_redis_fails_what_is_in_flight_within_the_timeout(
    redis: RedisProcess,
) -> None:
    proxy = StallingProxy(redis.port).start()
    client = Redis.from_url(proxy.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    connection = commands.CommandConnection(client, timeout=TIMEOUT)
    try:
        assert await connection.execute("PING") == b"PONG"
        proxy.stall()  # the socket stays open; nothing comes back
        started = time.monotonic()
        results = await asyncio.gather(
            *(connection.execute("INCR", "n") for _ in range(3)), return_exceptions=True
        )
        waited = time.monotonic() - started
        assert all(isinstance(result, BrokerUnavailable) for result in results), results
        assert TIMEOUT * 0.9 <= waited < TIMEOUT * 3
        proxy.flow()
        assert await connection.execute("PING") == b"PONG"  # a new connection
    finally:
        connection.close()
        await client.aclose()
        proxy.close()


async def test_a_killed_connection_fails_what_is_in_flight_and_the_next_command_reconnects(
    client: Redis,
) -> None:
    # a long timeout: the loss, not the deadline, must end the wait
    connection = commands.CommandConnection(client, timeout=30.0)
    lean_id = await connection.execute("CLIENT", "ID")
    blocked = asyncio.ensure_future(connection.execute("BLPOP", "never", 0))
    await asyncio.sleep(0)  # BLPOP is written in this loop turn, before the kill below
    assert await client.client_kill_filter(_id=lean_id) == 1
    with pytest.raises(BrokerUnavailable, match="lost"):
        await blocked
    assert await connection.execute("PING") == b"PONG"
    connection.close()


async def test_commands_over_the_bound_are_refused_at_once(
    connection: commands.CommandConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "MAX_IN_FLIGHT", 2)
    await connection.execute("PING")
    blocked = [asyncio.ensure_future(connection.execute("BLPOP", "never", 0.2)) for _ in range(2)]
    await asyncio.sleep(0)  # let both be queued
    with pytest.raises(BrokerUnavailable, match="in flight"):
        await connection.execute("PING")
    assert await asyncio.gather(*blocked) == [None, None]
    assert await connection.execute("PING") == b"PONG"


async def test_the_connection_uses_the_clients_credentials_and_database(
    redis: RedisProcess,
) -> None:
    admin = Redis.from_url(redis.url)
    await admin.config_set("requirepass", "s3cret")
    client = Redis.from_url(f"redis://:s3cret@{LOOPBACK}:{redis.port}/3", socket_timeout=TIMEOUT)
    connection = commands.CommandConnection(client, timeout=TIMEOUT)
    wrong = commands.CommandConnection(
        Redis.from_url(f"redis://:wrong@{LOOPBACK}:{redis.port}/0"), timeout=TIMEOUT
    )
    try:
        assert await connection.execute("SET", "where", "db3") == b"OK"
        assert await client.get("where") == b"db3"  # database 3, through redis-py
        with pytest.raises(BrokerUnavailable, match="connecting"):
            await wrong.execute("PING")
    finally:
        connection.close()
        wrong.close()
        await client.aclose()
        await admin.config_set("requirepass", "")
        await admin.aclose()
