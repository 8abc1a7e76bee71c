"""Relay hardening (issue 12): each probe finding reproduced against real relay processes."""

from __future__ import annotations

import pytest

from relay.client import RelayClient
from support.processes import RedisProcess

pytestmark = pytest.mark.integration

MIXED = "mix:*"


async def test_publish_id_retried_on_a_pod_with_another_room_policy_is_acked_once(
    relay_factory, redis: RedisProcess
) -> None:
    """Finding 8: during a rolling update of RELAY_ROOMS a retry must not fail forever."""
    old = relay_factory(
        "old",
        redis_urls=[redis.url],
        env={"RELAY_ROOMS": '[{"match": "' + MIXED + '", "policy": "volatile"}]'},
    )
    new = relay_factory("new", redis_urls=[redis.url])  # every room durable
    async with (
        RelayClient(old.url) as publisher,
        RelayClient(new.url) as retrier,
        RelayClient(old.url) as watcher,  # volatile there: it gets both kinds
    ):
        await watcher.join("mix:1")
        first = await publisher.publish("mix:1", "once", id="m-1")
        assert first is not None and first["op"] == "ack" and first["offset"] is None
        assert (await watcher.receive(timeout=5))["data"] == "once"

        retried = await retrier.publish("mix:1", "once", id="m-1")
        assert retried is not None and retried["op"] == "ack", retried
        assert retried["offset"] is None  # it went out volatile: it has no position

        # The other way round: stored durable, retried where the room is volatile.
        stored = await retrier.publish("mix:1", "two", id="m-2")
        assert stored is not None and stored["offset"] == 1
        again = await publisher.publish("mix:1", "two", id="m-2")
        assert again is not None and again["op"] == "ack"
        assert [(await watcher.receive(timeout=5))["data"]] == ["two"]
        with pytest.raises(TimeoutError):  # neither retry was sent a second time
            await watcher.receive(timeout=0.5)
