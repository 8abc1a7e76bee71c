"""Presence coalescing and retries (relay.presence) on the in-process cluster state."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
import pytest

from relay import auth, control
from relay.broker import BrokerUnavailable
from relay.broker.memory import MemoryBroker
from relay.cluster import LocalState, Member
from relay.presence import MAX_INFO_BYTES, Presence, member_of
from relay.rooms import RoomPolicies, RoomPolicy

pytestmark = pytest.mark.unit


@dataclass(eq=False)
class Conn:
    id: str
    identity: auth.Identity
    got: list[dict[str, object]] = field(default_factory=list)

    def push(self, payload: bytes) -> None:
        self.got.append(orjson.loads(payload))


def person(conn: str, sub: str) -> Conn:
    identity = auth.Identity(sub, auth.ANY_ROOM, auth.ANY_ROOM, None, info={"n": sub})
    return Conn(conn, identity)


class FlakyState(LocalState):
    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def presence_apply(
        self, room: str, joins: list[Member], leaves: list[str], node_empty: bool
    ) -> None:
        if self.down:
            raise BrokerUnavailable("down")
        await super().presence_apply(room, joins, leaves, node_empty)


def make(state: LocalState) -> Presence:
    broker = MemoryBroker("n1")
    presence = Presence(
        "n1",
        state,
        broker,
        RoomPolicies([RoomPolicy(match="lobby*", presence=True)]),
        max_members=2,
        dead_after=15,
    )
    broker.set_control_listener(lambda raw: presence.deliver(control.parse(raw)))
    return presence


async def test_a_burst_is_one_message_and_a_join_then_leave_in_one_window_is_none() -> None:
    presence = make(LocalState())
    crowd = [person(f"c{n}", f"p{n}") for n in range(5)]
    for conn in crowd:
        presence.joined("lobby", conn)
    flicker = person("f", "flicker")
    presence.joined("lobby", flicker)
    presence.left("lobby", flicker)
    presence.joined("chat", person("x", "not-a-presence-room"))
    assert await presence.flush()
    for conn in crowd:
        [message] = conn.got
        assert message["op"] == "presence" and message["leaves"] == []
        assert [m["conn"] for m in message["joins"]] == [c.id for c in crowd]  # type: ignore[union-attr]
    assert crowd[0].got[0]["joins"][0] == {
        "sub": "p0",
        "conn": "c0",
        "node": "n1",
        "info": {"n": "p0"},
    }  # type: ignore[index]
    assert await presence.members("lobby") == (5, None)  # over max_members=2: counts only
    assert await presence.members("chat") == (0, [])


async def test_changes_a_failed_write_missed_are_written_by_the_next_flush() -> None:
    state = FlakyState()
    presence = make(state)
    ann, bob = person("a", "ann"), person("b", "bob")
    presence.joined("lobby", ann)
    state.down = True
    assert not await presence.flush()
    presence.joined("lobby", bob)
    state.down = False
    assert await presence.flush()
    assert (await presence.members("lobby"))[0] == 2
    # A leave that failed, then a rejoin of the same connection: both cancel out.
    state.down = True
    presence.left("lobby", bob)
    assert not await presence.flush()
    presence.joined("lobby", bob)
    state.down = False
    assert await presence.flush()
    assert (await presence.members("lobby"))[0] == 2


def test_an_info_claim_over_the_bound_is_left_out_of_the_member_entry() -> None:
    """A token's `info` is copied into every presence message and reply: at most
    MAX_INFO_BYTES encoded (docs/protocol.md, Tokens); a larger one is left out."""
    fits = {"name": "x" * (MAX_INFO_BYTES - 32)}
    too_big = {"name": "x" * MAX_INFO_BYTES}
    for info, expected in ((fits, fits), (too_big, None), (None, None)):
        identity = auth.Identity("ann", auth.ANY_ROOM, auth.ANY_ROOM, None, info=info)
        member = member_of("n1", Conn("c1", identity))
        assert member.get("info") == expected, len(orjson.dumps(info))
        assert (member["sub"], member["conn"], member["node"]) == ("ann", "c1", "n1")


async def test_members_rewritten_after_this_node_was_reaped_are_not_lost_to_a_refusal() -> None:
    """Declared dead while alive, a node writes its members again; the write refused then
    (the shard map's lease ends with that renewal until the map is read again) is retried
    by the next flush, not dropped: the members would be missing for good."""

    class Reaped(FlakyState):
        present = True

        async def alive(self, node: str) -> bool:
            return self.present

    state = Reaped()
    presence = make(state)
    ann = person("a", "ann")
    presence.joined("lobby", ann)
    assert await presence.flush()
    await presence.tick()  # registered
    # Reaped by another node meanwhile: its members removed (and their leaves announced).
    await state.presence_apply("lobby", [], ["a"], True)
    state.present, state.down = False, True
    await presence.tick()
    assert not await presence.flush()
    state.present, state.down = True, False
    assert await presence.flush()
    assert (await presence.members("lobby"))[0] == 1
