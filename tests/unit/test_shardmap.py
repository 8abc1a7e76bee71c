"""The shard map's pure parts: parsing the hash, which rooms move, validation, in-flight
publishes (relay.broker.shardmap). The switch itself runs against real Redis and relay
processes in tests/integration/test_shard_map.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from relay.broker.keys import meta, presence, room_of_key
from relay.broker.shardmap import InFlight, MapState, ShardMap, ShardMapError, Watcher, validate

ROOMS = [f"room-{n}" for n in range(500)]


def test_a_stable_map_moves_nothing_and_places_by_names() -> None:
    state = MapState.parse({b"version": b"3", b"shards": b"a,b", b"phase": b"stable"})
    assert (state.active, state.switching) == (ShardMap(3, ("a", "b")), False)
    assert not any(state.moving(r) for r in ROOMS)
    assert {state.active.place(r) for r in ROOMS} == {"a", "b"}


def test_prepare_and_move_refuse_exactly_the_rooms_whose_shard_changes() -> None:
    prepare = MapState.parse(
        {"version": "1", "shards": "a,b", "phase": "prepare", "next": "a,b,c", "switch": "s1"}
    )
    assert prepare.new == ShardMap(2, ("a", "b", "c"))
    moving = {r for r in ROOMS if prepare.moving(r)}
    # Rendezvous hashing: only rooms whose best shard is the new one move, about 1/3.
    assert moving == {r for r in ROOMS if prepare.new.place(r) == "c"}
    assert 0.2 < len(moving) / len(ROOMS) < 0.45
    # After the flip the same rooms are refused until every relay has moved them.
    move = MapState.parse(
        {"version": "2", "shards": "a,b,c", "phase": "move", "previous": "a,b", "switch": "s1"}
    )
    assert move.old == ShardMap(1, ("a", "b")) and move.active == prepare.new
    assert {r for r in ROOMS if move.moving(r)} == moving


def test_a_switch_past_its_deadline_is_stalled() -> None:
    fields = {"version": "1", "shards": "a", "phase": "prepare", "next": "a,b", "deadline": "100"}
    state = MapState.parse(fields)
    assert state.stalled(101) and not state.stalled(99)
    assert state.describe()["next"] == ["a", "b"]


@pytest.mark.parametrize(
    "fields",
    [
        {"version": "x", "shards": "a"},
        {"version": "1", "shards": ""},
        {"version": "1", "shards": "a", "phase": "nope"},
        {"version": "1", "shards": "a", "phase": "prepare"},  # no next
    ],
)
def test_a_hash_that_is_not_a_map_is_a_clear_error(fields: dict[str, str]) -> None:
    with pytest.raises(ShardMapError, match="not a shard map"):
        MapState.parse(fields)


def test_every_map_keeps_the_control_shard_and_known_names() -> None:
    validate(["a", "b"], "a", ["a", "b", "c"])
    with pytest.raises(ShardMapError, match="control shard 'a'"):
        validate(["b"], "a")
    with pytest.raises(ShardMapError, match="'z' is not in RELAY_REDIS_URLS"):
        validate(["a", "z"], "a", ["a", "b"])
    with pytest.raises(ShardMapError, match="repeat"):
        validate(["a", "a"], "a")


def test_room_of_key_inverts_the_room_keys() -> None:
    for room in ("lobby", "match:1/x", "a.b-c_d"):
        assert room_of_key(meta(room)) == room_of_key(presence(room)) == room
    assert room_of_key("gamecluster:alive") is None


async def test_drain_waits_for_publishes_sent_before_it_only() -> None:
    inflight = InFlight()
    before = inflight.enter()
    drained = asyncio.create_task(inflight.drain(5))
    await asyncio.sleep(0)
    after = inflight.enter()  # sent after the drain began: not waited for
    await asyncio.sleep(0.01)
    assert not drained.done()
    inflight.exit(before)
    assert await drained is True
    inflight.exit(after)
    assert await inflight.drain(5) is True
    stuck = inflight.enter()
    assert await inflight.drain(0.05) is False
    inflight.exit(stuck)


async def test_the_publish_lease_is_ended_by_a_reap_after_the_read_and_not_revived() -> None:
    async def nothing(*_: object) -> Any:
        return True

    watcher = Watcher(
        "n1", Redis(), ["a"], dead_after=3.0, drain=nothing, apply=nothing, cleanup=nothing
    )
    assert not watcher.leased()  # nothing read yet
    now = time.monotonic()
    watcher._lease_until, watcher._granted = now + 2.0, now  # as a read at `now` grants
    # A renewal sent before that read was answered and found the node absent: it ran
    # before the read's own renewal (startup), which says nothing about the read.
    watcher.renewed(now - 0.1, present=False)
    assert watcher.leased()
    # Renewals while it holds extend it.
    watcher.renewed(now + 0.5, present=True)
    assert watcher._lease_until == pytest.approx(now + 2.5)
    # Absent after the read: reaped (or the control shard lost its data): it ends, and a
    # renewal alone cannot revive it (only a read of the map can).
    watcher.renewed(now + 0.6, present=False)
    assert not watcher.leased()
    watcher.renewed(now + 0.7, present=True)
    assert not watcher.leased()
