"""The lean publish connection (relay.broker.commands) against a real redis-server.

What the publish path relies on: replies in the order the commands were made, a bounded
wait (a stalled Redis fails what is in flight with BrokerUnavailable, not a hang), a lost
connection failing what is in flight and the next command reconnecting, NOSCRIPT after a
restart answered with SCRIPT LOAD (what the relay's ACL user may send), a bound on commands
in flight, error replies that say what Redis meant (full, demoted, refused), and the
connection built from the redis-py client's own settings: credentials (a password file read
again for each connection), database, TLS with a verified certificate on asyncio's loop and
on uvloop. The takeover of redis-py's socket relies on its private streams; the last tests
guard that against a redis-py that changed. (Sentinel: tests/integration/test_redis_sentinel.py.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import OutOfMemoryError

from relay import contract
from relay.broker import commands
from relay.broker.base import BrokerUnavailable
from relay.broker.connection import Connector
from relay.config import RedisEndpoint
from support import redis_acl, tls
from support.processes import LOOPBACK, RedisProcess
from support.proxy import StallingProxy
from support.waiting import eventually

pytestmark = pytest.mark.integration

TIMEOUT = 1.0
COUNT_SCRIPT = commands.Script("return redis.call('HINCRBY', KEYS[1], 'n', ARGV[1])")
"""A script that writes, with only commands the relay's ACL user has (HINCRBY)."""
ROOM_KEY = "room:{r}:n"
"""Inside the relay user's key pattern (relay.contract.ROOM_PREFIX)."""


@pytest.fixture
async def client(redis: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    yield client
    await client.aclose()


@pytest.fixture
async def connection(
    client: Redis, redis: RedisProcess
) -> AsyncIterator[commands.CommandConnection]:
    connection = commands.CommandConnection(client, url=redis.url, timeout=TIMEOUT)
    yield connection
    connection.close()


def relay_user(
    server: RedisProcess,
    *,
    scheme: str = "redis",
    ca: Path | None = None,
    password_file: Path | None = None,
) -> tuple[Redis, commands.CommandConnection]:
    """The relay's own way in: Connector's client, logged in as the relay's ACL user."""
    connector = Connector(
        username=contract.RELAY_REDIS_USER,
        password=None if password_file else SecretStr(redis_acl.RELAY_PASSWORD),
        password_file=str(password_file) if password_file else None,
        ca_file=str(ca) if ca else None,
    )
    endpoint = RedisEndpoint.parse(f"{scheme}://{LOOPBACK}:{server.port}/0")
    client = connector.client(endpoint, timeout=TIMEOUT, retries=1)
    return client, commands.CommandConnection(client, url=endpoint.url, timeout=TIMEOUT)


async def test_concurrent_commands_run_and_answer_in_the_order_they_were_made(
    connection: commands.CommandConnection, client: Redis
) -> None:
    replies = await asyncio.gather(*(connection.execute("RPUSH", "order", i) for i in range(500)))
    assert replies == list(range(1, 501))  # each caller got its own reply
    assert await client.lrange("order", 0, -1) == [str(i).encode() for i in range(500)]


async def test_a_script_lost_by_redis_is_loaded_again_with_only_what_the_acl_allows(
    tmp_path: Path,
) -> None:
    """As the relay's ACL user (no EVAL): after SCRIPT FLUSH (what a restart does to the
    script cache), concurrent publishes all run, through SCRIPT LOAD and EVALSHA."""
    server = redis_acl.acl_redis(tmp_path)
    client, connection = relay_user(server)
    try:
        assert await connection.evalsha(COUNT_SCRIPT, [ROOM_KEY], [2]) == 2
        redis_acl.admin(server).script_flush()
        replies = await asyncio.gather(
            *(connection.evalsha(COUNT_SCRIPT, [ROOM_KEY], [1]) for _ in range(5))
        )
        assert sorted(replies) == [3, 4, 5, 6, 7]  # each ran exactly once
        ran, refused = redis_acl.commands_run(server)
        assert {"evalsha", "script|load"} <= ran and "eval" not in ran
        assert refused == {} and redis_acl.acl_denials(server) == []
    finally:
        connection.close()
        await client.aclose()
        server.stop()


async def test_a_command_the_acl_refuses_is_named_as_such(tmp_path: Path) -> None:
    server = redis_acl.acl_redis(tmp_path)
    client, connection = relay_user(server)
    try:
        with pytest.raises(BrokerUnavailable, match="the ACL refused PUBLISH: NOPERM"):
            await connection.call("PUBLISH", "outside-channel", "x")
        assert await connection.call("PUBLISH", "room:{r}", "x") == 0  # the connection goes on
    finally:
        connection.close()
        await client.aclose()
        server.stop()


async def test_an_error_reply_of_a_script_is_broker_unavailable_and_the_next_runs(
    connection: commands.CommandConnection, client: Redis
) -> None:
    await client.set("text", "not a number")
    with pytest.raises(BrokerUnavailable, match="refused EVALSHA: WRONGTYPE"):
        await connection.evalsha(COUNT_SCRIPT, ["text"], [1])
    assert await connection.evalsha(COUNT_SCRIPT, ["n"], [1]) == 1


async def fill(client: Redis) -> None:
    """Write until Redis refuses (maxmemory reached, noeviction)."""
    for n in range(100):
        try:
            await client.set(f"fill:{n}", b"x" * 100_000)
        except OutOfMemoryError:
            return
    raise AssertionError("Redis never became full")


async def test_a_full_redis_refuses_writes_with_a_clear_error_and_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisProcess(
        tmp_path, extra_args=["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]
    ).start()
    client = Redis.from_url(server.url)
    connection = commands.CommandConnection(client, url=server.url, timeout=TIMEOUT)
    try:
        await fill(client)
        with caplog.at_level(logging.WARNING, logger="relay.broker.commands"):
            for _ in range(3):
                with pytest.raises(BrokerUnavailable, match=r"is full \(maxmemory reached"):
                    await connection.evalsha(COUNT_SCRIPT, ["n"], [1])
        assert await client.exists("n") == 0  # nothing stored
        full = [r for r in caplog.records if "is full" in r.getMessage()]
        assert len(full) == 1, "one line per interval, not one per refused publish"
        # A plain PUBLISH (an id-less volatile event) stores nothing: Redis still takes it.
        assert await connection.call("PUBLISH", "room:{r}", "x") == 0
        server.cli("CONFIG", "SET", "maxmemory", "0")
        assert await connection.evalsha(COUNT_SCRIPT, ["n"], [1]) == 1
    finally:
        connection.close()
        await client.aclose()
        server.stop()


async def test_a_demoted_master_drops_the_connection_so_the_next_asks_again(
    redis_factory, tmp_path: Path
) -> None:
    """READONLY (the server became a replica in a failover): the publish fails and the
    connection is dropped, so the next one connects anew (through Sentinel, for a Sentinel
    shard) instead of writing to the replica forever."""
    old, new = redis_factory(), redis_factory()
    client = Redis.from_url(old.url)
    connection = commands.CommandConnection(client, url=old.url, timeout=TIMEOUT)
    try:
        first = await connection.execute("CLIENT", "ID")
        assert await connection.evalsha(COUNT_SCRIPT, ["n"], [1]) == 1
        old.cli("REPLICAOF", LOOPBACK, str(new.port))
        await eventually(
            lambda: "master_link_status:up" in old.cli("INFO", "replication"), 10, "the sync"
        )
        with pytest.raises(BrokerUnavailable, match="read-only replica now"):
            await connection.evalsha(COUNT_SCRIPT, ["n"], [1])
        assert await connection.execute("CLIENT", "ID") != first  # a new connection
    finally:
        old.cli("REPLICAOF", "NO", "ONE")
        connection.close()
        await client.aclose()


async def test_a_stalled_redis_fails_what_is_in_flight_within_the_timeout(
    redis: RedisProcess,
) -> None:
    proxy = StallingProxy(redis.port).start()
    client = Redis.from_url(proxy.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    connection = commands.CommandConnection(client, url=proxy.url, timeout=TIMEOUT)
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
    client: Redis, redis: RedisProcess
) -> None:
    # a long timeout: the loss, not the deadline, must end the wait
    connection = commands.CommandConnection(client, url=redis.url, timeout=30.0)
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


async def test_the_connection_uses_the_clients_database_and_speaks_resp2(
    redis: RedisProcess,
) -> None:
    """RESP2 whatever the client's protocol (redis-py 8 logs in with RESP3): no push
    message can ever arrive out of step with the replies."""
    admin = Redis.from_url(redis.url, decode_responses=True)
    client = Redis.from_url(f"redis://{LOOPBACK}:{redis.port}/3", socket_timeout=TIMEOUT)
    connection = commands.CommandConnection(client, url=redis.url, timeout=TIMEOUT)
    try:
        assert await connection.execute("SET", "where", "db3") == b"OK"
        assert await client.get("where") == b"db3"  # database 3, through redis-py

        async def listed(client_id: int) -> list[str]:
            return (await admin.execute_command("CLIENT", "LIST", "ID", client_id)).split()

        lean = await listed(await connection.execute("CLIENT", "ID"))
        assert "resp=2" in lean and "db=3" in lean, lean
        assert "resp=3" in await listed(await client.client_id())  # redis-py's own
    finally:
        connection.close()
        await client.aclose()
        await admin.aclose()


async def test_a_rotated_password_file_is_read_again_for_the_next_connection(
    tmp_path: Path,
) -> None:
    """The credential provider of the relay's settings (RELAY_REDIS_PASSWORD_FILE): a
    mounted Secret rewritten in place is used by the next connection; a refused login is a
    clear BrokerUnavailable that carries no password."""
    server = redis_acl.acl_redis(tmp_path)
    admin = redis_acl.admin(server)
    password_file = tmp_path / "redis-password"
    password_file.write_text(redis_acl.RELAY_PASSWORD + "\n")
    client, connection = relay_user(server, password_file=password_file)
    rotated = "rotated-" + redis_acl.ADMIN_PASSWORD[-16:]
    try:
        assert await connection.evalsha(COUNT_SCRIPT, [ROOM_KEY], [1]) == 1
        admin.execute_command(
            "ACL", "SETUSER", contract.RELAY_REDIS_USER, "resetpass", f">{rotated}"
        )
        admin.client_kill_filter(user=contract.RELAY_REDIS_USER)  # the next publish reconnects
        refusals = []
        for _ in range(2):  # the first may still be sent before the kill is seen: "lost"
            with pytest.raises(BrokerUnavailable) as refused:
                await connection.evalsha(COUNT_SCRIPT, [ROOM_KEY], [1])
            refusals.append(str(refused.value))
            if "connecting to" in refusals[-1]:
                break
        assert "connecting to" in refusals[-1] and "invalid username-password" in refusals[-1]
        for text in refusals:
            assert redis_acl.RELAY_PASSWORD not in text and rotated not in text
        password_file.write_text(rotated + "\n")  # Kubernetes updates the mounted file
        assert await connection.evalsha(COUNT_SCRIPT, [ROOM_KEY], [1]) == 2
    finally:
        connection.close()
        await client.aclose()
        server.stop()


def run_on(loop: str, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a scenario on asyncio's own loop or on uvloop (the relay's, through uvicorn):
    their SSL transports are different implementations."""
    if loop == "uvloop":
        uvloop.run(scenario())
    else:
        asyncio.run(scenario())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_over_tls_the_connection_verifies_the_server_and_survives_losses(
    tmp_path: Path, loop: str
) -> None:
    """TLS only (the plain port is off), the CA from the settings (RELAY_REDIS_CA_FILE): the
    transport handed over is the SSL transport, and both its data and its connection loss
    reach the publish connection's protocol."""
    server, ca = tls.tls_redis(tmp_path)

    async def scenario() -> None:
        client, connection = relay_user(server, scheme="rediss", ca=ca)
        admin = Redis(
            host=LOOPBACK,
            port=server.port,
            ssl=True,
            ssl_ca_certs=str(ca),
            username=redis_acl.ADMIN_USER,
            password=redis_acl.ADMIN_PASSWORD,
        )
        untrusted, no_ca = relay_user(server, scheme="rediss")
        try:
            assert await connection.evalsha(COUNT_SCRIPT, [ROOM_KEY], [2]) == 2
            await admin.script_flush()
            assert await connection.evalsha(COUNT_SCRIPT, [ROOM_KEY], [3]) == 5  # SCRIPT LOAD
            pending = [connection.evalsha(COUNT_SCRIPT, [ROOM_KEY], [1]) for _ in range(200)]
            assert sorted(await asyncio.gather(*pending)) == list(range(6, 206))
            with pytest.raises(BrokerUnavailable, match="certificate verify failed"):
                await no_ca.execute("PING")
            # A command in flight when the server drops the TLS connection fails at once.
            admin_lean = commands.CommandConnection(admin, url="admin", timeout=30.0)
            lean_id = await admin_lean.execute("CLIENT", "ID")
            blocked = asyncio.ensure_future(admin_lean.execute("BLPOP", "never", 0))
            await asyncio.sleep(0)  # BLPOP is written in this loop turn
            assert await admin.client_kill_filter(_id=lean_id) == 1
            with pytest.raises(BrokerUnavailable, match="lost"):
                await blocked
            assert await admin_lean.execute("PING") == b"PONG"
            admin_lean.close()
        finally:
            connection.close()
            no_ca.close()
            await asyncio.gather(client.aclose(), admin.aclose(), untrusted.aclose())

    try:
        run_on(loop, scenario)
    finally:
        server.stop()
    redis_acl.no_secret_in_logs(tmp_path)


async def test_bytes_left_unread_after_the_handshake_fail_the_connect(redis: RedisProcess) -> None:
    """Guard of the socket takeover: a byte redis-py's handshake left in its stream would
    be read as the reply to our first command; the connect fails instead."""
    connection = Connection(host=LOOPBACK, port=redis.port, protocol=2)
    await connection.connect()
    assert connection._reader is not None
    connection._reader.feed_data(b"+PONG\r\n")  # as if Redis had said more than asked
    with pytest.raises(ConnectionError, match="7 unread bytes"):
        commands.detach(connection, commands._Pipe("test", TIMEOUT))
    assert not connection.is_connected


async def test_a_redis_py_without_the_stream_pair_fails_the_connect_clearly() -> None:
    """Guard of the pinned redis-py: what detach reads is there (a connection that has no
    streams stands for a redis-py that moved them) or it says what to update."""
    connection = Connection(host=LOOPBACK, port=1)
    with pytest.raises(ConnectionError, match=r"relay\.broker\.commands needs updating"):
        commands.detach(connection, commands._Pipe("test", TIMEOUT))
