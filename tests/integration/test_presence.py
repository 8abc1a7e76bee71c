"""Presence across relay servers with a real Redis (issue 15: presence tests)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gamecluster_client import Connection as RelayClient
from gamecluster_client import ServerError as RelayError
from relay import auth
from relay.api.client import AsyncRelayApi
from support.processes import RedisProcess

pytestmark = pytest.mark.integration

SECRET = "s" * 40
KEY = "k" * 40
REPORT_SECONDS = 0.5
DEAD_AFTER = 3 * REPORT_SECONDS
"""relay.node.PRESENCE_DEAD_AFTER_REPORTS load-report intervals (docs/protocol.md)."""
ROOMS = orjson.dumps(
    [
        # Volatile: a burst of joins of a durable room reads its history once per join.
        {"match": "lobby:big", "presence": True, "policy": "volatile"},
        {"match": "lobby:*", "presence": True},
    ]
).decode()
ENV = {
    "RELAY_AUTH": "jwt",
    "RELAY_JWT_SECRET": SECRET,
    "RELAY_API_KEYS": KEY,
    "RELAY_ROOMS": ROOMS,
    "RELAY_LOAD_REPORT_SECONDS": str(REPORT_SECONDS),
}


def token(sub: str, rooms: list[str] | None = None) -> str:
    join = rooms if rooms is not None else ["*"]
    return auth.mint(
        SECRET, subject=sub, join=join, publish=["*"], ttl=600, info={"name": sub.upper()}
    )


async def changes(client: RelayClient, until: Any, timeout: float) -> list[dict[str, Any]]:
    """Presence messages received until `until(messages)` holds; TimeoutError past `timeout`."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not until(seen):
        message = await client.receive(max(0.01, deadline - time.monotonic()))
        if message["op"] == "presence":
            seen.append(message)
    return seen


def joined_conns(messages: list[dict[str, Any]]) -> set[str]:
    return {m["conn"] for message in messages for m in message["joins"]}


def left_conns(messages: list[dict[str, Any]]) -> list[str]:
    return [m["conn"] for message in messages for m in message["leaves"]]


@contextlib.asynccontextmanager
async def clients(*specs: tuple[str, str]) -> AsyncIterator[list[RelayClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(RelayClient(url, token=token(sub)))
            for url, sub in specs
        ]


async def test_members_on_two_pods_are_listed_by_both_and_a_killed_pods_leave_once(
    redis: RedisProcess, relay_factory
) -> None:
    pods = [relay_factory(name, redis_urls=[redis.url], env=ENV) for name in ("a", "b", "c")]
    a, b, c = pods
    async with clients((a.url, "ann"), (b.url, "bob"), (b.url, "bea"), (c.url, "cyd")) as people:
        ann, bob, bea, cyd = people
        for person in people:
            await person.join("lobby:1")
        everyone = {p.welcome["session"] for p in people}
        for watcher in (ann, cyd):
            await changes(watcher, lambda seen: joined_conns(seen) >= everyone, 5)

        for asker in (ann, bob, cyd):
            reply = await asker.request({"op": "presence", "room": "lobby:1"})
            assert reply["count"] == 4
            assert {(m["sub"], m["conn"], m["node"]) for m in reply["members"]} == {
                ("ann", ann.welcome["session"], "a"),
                ("bob", bob.welcome["session"], "b"),
                ("bea", bea.welcome["session"], "b"),
                ("cyd", cyd.welcome["session"], "c"),
            }
            assert {m["info"]["name"] for m in reply["members"]} == {"ANN", "BOB", "BEA", "CYD"}
        async with AsyncRelayApi(c.admin, api_key=KEY) as api:
            listed = await api.presence("lobby:1")
            assert listed.count == 4 and listed.members is not None
            stats = await api.presence_stats("lobby:1")
            assert (stats.count, stats.subjects) == (4, 4)

        # SIGKILL: b's members never leave by themselves; a survivor announces them.
        b.kill()
        killed = time.monotonic()
        gone = {bob.welcome["session"], bea.welcome["session"]}
        bound = DEAD_AFTER + 2 * REPORT_SECONDS + 1.0  # + a report interval to notice + slack
        seen = {}
        for watcher in (ann, cyd):
            seen[watcher] = await changes(watcher, lambda s: set(left_conns(s)) >= gone, bound)
            assert time.monotonic() - killed < bound
        for watcher in (ann, cyd):
            # Once each, whichever survivor claimed the dead node: wait out another
            # claim interval and check nothing more came.
            with contextlib.suppress(TimeoutError):
                seen[watcher] += await changes(watcher, lambda s: False, DEAD_AFTER)
            assert sorted(left_conns(seen[watcher])) == sorted(gone)
        reply = await ann.request({"op": "presence", "room": "lobby:1"})
        assert reply["count"] == 2


async def test_a_burst_of_joins_is_coalesced(redis: RedisProcess, relay_factory) -> None:
    a = relay_factory("a", redis_urls=[redis.url], env=ENV)
    b = relay_factory("b", redis_urls=[redis.url], env=ENV)
    joiners = 500
    async with RelayClient(a.url, token=token("watcher")) as watcher:
        await watcher.join("lobby:big")
        async with contextlib.AsyncExitStack() as stack:
            crowd = []
            for n in range(joiners):
                url = a.url if n % 2 else b.url
                crowd.append(
                    await stack.enter_async_context(RelayClient(url, token=token(f"p{n}")))
                )
            await asyncio.gather(*(p.join("lobby:big") for p in crowd))
            expected = {p.welcome["session"] for p in crowd}
            seen = await changes(watcher, lambda s: joined_conns(s) >= expected, 30)
            joins = sum(len(m["joins"]) for m in seen)
            assert joins >= joiners
            # One message per room per coalescing window and pod, not one per join.
            assert len(seen) * 10 <= joins, f"{len(seen)} messages for {joins} joins"


async def test_presence_op_needs_join_permission_and_a_presence_room(
    redis: RedisProcess, relay_factory
) -> None:
    pod = relay_factory("a", redis_urls=[redis.url], env={**ENV, "RELAY_PRESENCE_MAX_MEMBERS": "1"})
    async with (
        RelayClient(pod.url, token=token("limited", ["lobby:mine", "chat:*"])) as limited,
        RelayClient(pod.url, token=token("other")) as other,
    ):
        with pytest.raises(RelayError) as forbidden:
            await limited.request({"op": "presence", "room": "lobby:theirs"})
        assert forbidden.value.code == "forbidden"
        with pytest.raises(RelayError) as plain:
            await limited.request({"op": "presence", "room": "chat:1"})
        assert plain.value.code == "bad_request"
        await limited.join("lobby:mine")
        await other.join("lobby:mine")
        await changes(limited, lambda s: len(joined_conns(s)) >= 2, 5)
        reply = await limited.request({"op": "presence", "room": "lobby:mine"})
        assert reply["count"] == 2 and "members" not in reply  # over the bound of 1: counts only


async def test_the_embedded_broker_keeps_presence_on_one_node(relay_factory) -> None:
    pod = relay_factory("solo", env=ENV)
    async with clients((pod.url, "ann"), (pod.url, "bob")) as (ann, bob):
        await ann.join("lobby:1")
        await bob.join("lobby:1")
        both = {ann.welcome["session"], bob.welcome["session"]}
        await changes(ann, lambda seen: joined_conns(seen) >= both, 5)
        reply = await bob.request({"op": "presence", "room": "lobby:1"})
        assert sorted(m["sub"] for m in reply["members"]) == ["ann", "bob"]
        await bob.leave("lobby:1")
        seen = await changes(ann, lambda s: bool(left_conns(s)), 5)
        assert left_conns(seen) == [bob.welcome["session"]]
        async with AsyncRelayApi(pod.admin, api_key=KEY) as api:
            assert (await api.presence_stats("lobby:1")).count == 1
