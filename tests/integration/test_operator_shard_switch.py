"""The operator's side of a shard change (gamecluster.relay_admin + gamecluster.shards)
against real relay processes and real redis-servers: what the operator reads back from the
relays' server API moves its state machine as docs/operator.md says.

A relay that cannot reach the new shard makes the switch abort: the operator's state goes
back to ``Rolling`` with the relay's reason, and once every relay can reach it the same
request completes the change.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from gamecluster.children import Owner
from gamecluster.relay_admin import HttpRelayAdmin, RelayAdminError
from gamecluster.shards import ShardState, after_reading, after_rollout, begin
from relay import contract
from relay.broker.shardmap import MAP_KEY
from relay.config import RedisEndpoint
from support.processes import RedisProcess, RelayProcess
from support.waiting import eventually

pytestmark = pytest.mark.integration

KEY = "k" * 48
ENV = {
    # dead_after = 3 reports = 1.5 s: a killed relay leaves the switch's barrier quickly.
    "RELAY_LOAD_REPORT_SECONDS": "0.5",
    "RELAY_API_KEYS": KEY,
}
OWNER = Owner(name="arena", namespace="games", uid="uid-1")


def name(shard: RedisProcess) -> str:
    return RedisEndpoint.parse(shard.url).name


def admin_of(pod: RelayProcess) -> HttpRelayAdmin:
    return HttpRelayAdmin(base_url=lambda owner: f"{pod.admin}{contract.API_PREFIX}")


async def test_an_aborted_switch_is_retried_by_the_operator_and_completes(
    redis_factory, relay_factory
) -> None:
    a, b = redis_factory(), redis_factory()
    names = [name(a), name(b)]

    def names_of(count: int) -> list[str]:
        return names[:count]

    # The map before the change: shard a alone (what the relays of a one-shard cluster
    # wrote when they first started).
    a.cli("HSET", MAP_KEY, "version", "1", "shards", names[0], "phase", "stable")
    pod = relay_factory("p1", redis_urls=[a.url, b.url], env=ENV)
    blind = relay_factory("blind", redis_urls=[a.url], env=ENV)
    admin = admin_of(pod)

    first = await asyncio.to_thread(admin.shards, OWNER, KEY)
    assert (first.shards, first.phase) == ((names[0],), "stable")

    # The operator's clock: the state machine takes the time as an input, and the relays
    # do not read it, so the test moves it on instead of waiting out the backoff.
    now = datetime(2026, 1, 1, tzinfo=UTC)
    state, action = after_rollout(
        begin(ShardState(active=1, target=1), 2), rolled_out=True, now=now
    )
    assert action == "switch"
    started = await asyncio.to_thread(admin.switch, OWNER, KEY, names_of(2), 1.0)
    state = after_reading(state, started, names_of, now=now)
    assert state.phase == "Switching"

    async def ended() -> bool:
        nonlocal state
        reading = await asyncio.to_thread(admin.shards, OWNER, KEY)
        state = after_reading(state, reading, names_of, now=now)
        return reading.phase == "stable"

    await eventually(ended, 15, "the switch to abort")
    aborted = state
    assert aborted.phase == "Rolling" and "blind" in aborted.message
    assert (aborted.active, aborted.redis_shards, aborted.relay_shards) == (1, 2, 2)
    assert aborted.attempts == 1 and aborted.retry_after == now + timedelta(seconds=10)
    assert after_rollout(aborted, rolled_out=True, now=now) == (aborted, None)

    # The relay that lacked shard b is replaced (as the rollout onto the union does).
    blind.kill()
    relay_factory("seeing", redis_urls=[a.url, b.url], env=ENV)

    state = aborted

    async def switched() -> bool:
        """One operator pass: ask for the switch in Rolling, read the map in Switching."""
        nonlocal state, now
        now = max(now, state.retry_after or now)  # the backoff's wait, passed
        state, action = after_rollout(state, rolled_out=True, now=now)
        if action == "switch":
            reading = await asyncio.to_thread(admin.switch, OWNER, KEY, names_of(2), 1.0)
        else:
            reading = await asyncio.to_thread(admin.shards, OWNER, KEY)
        state = after_reading(state, reading, names_of, now=now)
        return state.phase == "Stable"

    # Until the killed relay is dead_after silent it is still in the barrier: the switch
    # aborts again and the operator asks again.
    await eventually(switched, 30, "the retried switch to complete", step=0.2)
    done = state
    assert (done.active, done.target, done.redis_shards, done.relay_shards) == (2, 2, 2, 2)
    assert done.version >= 2 and (done.attempts, done.retry_after) == (0, None)


async def test_a_wrong_key_is_a_clear_error_without_the_key(redis, relay_factory) -> None:
    pod = relay_factory("p1", redis_urls=[redis.url], env=ENV)
    wrong = "w" * 48
    with pytest.raises(RelayAdminError) as error:
        await asyncio.to_thread(admin_of(pod).shards, OWNER, wrong)
    assert "HTTP 401" in str(error.value) or "HTTP 403" in str(error.value)
    assert wrong not in str(error.value) and KEY not in str(error.value)
    with pytest.raises(RelayAdminError, match="ConnectError"):
        await asyncio.to_thread(
            HttpRelayAdmin(base_url=lambda owner: "http://127.0.0.1:9/api/v1").shards, OWNER, KEY
        )
