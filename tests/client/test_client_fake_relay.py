"""The Python client's state machine against a scripted fake relay (real sockets on
loopback; the fake does exactly what each test scripts)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator

import pytest

from gamecluster_client import (
    Backoff,
    BadRequestError,
    Client,
    ClientClosedError,
    ClientState,
    Connected,
    Disconnected,
    DisconnectedError,
    Event,
    ForbiddenError,
    HandshakeError,
    Lost,
    Member,
    PresenceChange,
    PublishTimeoutError,
    Recovered,
    Removed,
    Room,
    RoomClosedError,
    RoomState,
    StateChange,
    UnauthorizedError,
)
from support.fake_relay import FakeConnection, FakeRelay

pytestmark = pytest.mark.client

FAST = Backoff(min_delay=0.01, max_delay=0.05)
SLOW = Backoff(min_delay=60, max_delay=60)
"""A reconnect that must not wait for its backoff would time the test out with this."""


def jwt_with_exp(exp: float, tag: str = "") -> str:
    """An unsigned JWT-shaped token: the client only reads `exp` (the server verifies)."""

    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256'})}.{part({'exp': exp, 'sub': tag})}.sig"


@pytest.fixture
async def fake() -> AsyncIterator[FakeRelay]:
    async with FakeRelay() as relay:
        yield relay


async def connected(fake: FakeRelay, client: Client, node: str = "a") -> FakeConnection:
    starting = asyncio.create_task(client.connect(timeout=5))
    conn = await fake.accept()
    await conn.welcome(node)
    await starting
    return conn


async def joined_room(
    fake: FakeRelay, client: Client, name: str = "match:1"
) -> tuple[FakeConnection, Room]:
    conn = await connected(fake, client)
    room = client.room(name)
    joining = asyncio.create_task(room.join())
    await conn.join_ok(offset=0, epoch="e1")
    await joining
    return conn, room


async def test_join_returns_joined_and_events_arrive_typed(fake: FakeRelay) -> None:
    client = Client(fake.url, backoff=FAST)
    conn = await connected(fake, client)
    room = client.room("match:1")
    joining = asyncio.create_task(room.join())
    join = await conn.join_ok(offset=4, epoch="e1")
    joined = await joining
    assert (joined.room, joined.offset, joined.epoch, joined.recovered) == (
        "match:1",
        4,
        "e1",
        None,
    )
    assert "since" not in join and room.state is RoomState.JOINED
    await conn.send(
        {"op": "event", "room": "match:1", "offset": 5, "data": {"x": 1}, "ts": 7, "from": "p"}
    )
    assert await room.receive(5) == Event("match:1", {"x": 1}, 5, 7, "p")
    await client.close()


async def test_forbidden_join_raises_the_servers_error(fake: FakeRelay) -> None:
    client = Client(fake.url, backoff=FAST)
    conn = await connected(fake, client)
    room = client.room("secret")
    joining = asyncio.create_task(room.join())
    join = await conn.expect("join")
    await conn.send(
        {"op": "error", "code": "forbidden", "message": "no", "ref": join["ref"], "room": "secret"}
    )
    with pytest.raises(ForbiddenError) as refused:
        await joining
    assert refused.value.code == "forbidden" and refused.value.room == "secret"
    assert room.state is RoomState.IDLE
    # Not rejoined after a reconnect: the next connection sends no join.
    conn.abort()
    second = await fake.accept()
    await second.welcome()
    await room_publish_roundtrip(client, second)
    await client.close()


async def room_publish_roundtrip(client: Client, conn: FakeConnection) -> None:
    """The first thing the connection sees is this publish (no join before it)."""
    publishing = asyncio.create_task(client.room("other").publish("x", id="probe"))
    message = await conn.expect("publish")
    await conn.send({"op": "ack", "id": message["id"], "room": "other", "offset": 1})
    assert (await publishing).id == "probe"


async def test_reconnect_resumes_with_since_and_resends_unacked_in_order(fake: FakeRelay) -> None:
    client = Client([fake.url, fake.url], backoff=FAST)
    conn, room = await joined_room(fake, client)
    await conn.send(*({"op": "event", "room": "match:1", "offset": n, "data": n} for n in (1, 2)))
    publishes = [
        asyncio.create_task(client.room("match:1").publish({"n": n}, id=f"p{n}", timeout=None))
        for n in range(5)
    ]
    sent = [await conn.expect("publish") for _ in range(5)]
    assert [m["id"] for m in sent] == [f"p{n}" for n in range(5)]
    await conn.send({"op": "ack", "id": "p0", "room": "match:1", "offset": 3})
    assert (await publishes[0]).offset == 3
    conn.abort()  # p1..p4 are not acked

    second = await fake.accept()
    await second.welcome("b")
    join = await second.expect("join")
    assert join["since"] == {"epoch": "e1", "offset": 2}
    resent = [await second.recv() for _ in range(4)]
    assert [(m["op"], m["id"]) for m in resent] == [("publish", f"p{n}") for n in range(1, 5)]
    assert [m["data"] for m in resent] == [{"n": n} for n in range(1, 5)]
    await second.send(
        {"op": "joined", "room": "match:1", "offset": 3, "epoch": "e1", "recovered": True,
         "ref": join["ref"]},
        {"op": "event", "room": "match:1", "offset": 2, "data": 2},  # already seen
        {"op": "event", "room": "match:1", "offset": 3, "data": 3},
        *({"op": "ack", "id": f"p{n}", "room": "match:1", "offset": 3 + n} for n in range(1, 5)),
    )  # fmt: skip
    assert [(await p).offset for p in publishes[1:]] == [4, 5, 6, 7]
    messages = [await room.receive(5) for _ in range(4)]
    assert messages[:2] == [Event("match:1", 1, 1, None, None), Event("match:1", 2, 2, None, None)]
    assert messages[2] == Recovered("match:1", "e1", 3)
    assert messages[3] == Event("match:1", 3, 3, None, None)
    assert client.stats.duplicates == 1 and client.stats.resent == 4 and client.node == "b"
    await client.close()


async def test_not_recovered_rejoin_and_unsolicited_joined_signal_lost(fake: FakeRelay) -> None:
    client = Client(fake.url, backoff=FAST)
    conn, room = await joined_room(fake, client)
    await conn.send({"op": "event", "room": "match:1", "offset": 1, "data": "a"})
    await conn.send({"op": "joined", "room": "match:1", "offset": 40, "epoch": "e2",
                     "recovered": False})  # fmt: skip
    assert isinstance(await room.receive(5), Event)
    assert await room.receive(5) == Lost("match:1", "e2", 40)
    assert room.position is not None and room.position.offset == 40
    conn.abort()
    second = await fake.accept()
    await second.welcome()
    join = await second.join_ok(offset=90, epoch="e3", recovered=False)
    assert join["since"] == {"epoch": "e2", "offset": 40}
    assert await room.receive(5) == Lost("match:1", "e3", 90)
    assert client.stats.not_recovered == 2
    await client.close()


async def test_publish_in_flight_is_bounded_and_waiting_counts_toward_timeout(
    fake: FakeRelay,
) -> None:
    client = Client(fake.url, backoff=FAST, max_in_flight=3)
    conn = await connected(fake, client)
    tasks_before = len(asyncio.all_tasks())
    room = client.room("r")
    publishes = [
        asyncio.ensure_future(room.publish(n, id=f"m{n}", timeout=None)) for n in range(50)
    ]
    sent = [await conn.expect("publish") for _ in range(3)]
    with pytest.raises(TimeoutError):
        await conn.recv(timeout=0.3)  # the 4th waits for a slot: nothing more on the wire
    # The client spawned no task per publish: only the 50 the test made.
    assert len(asyncio.all_tasks()) == tasks_before + 50
    with pytest.raises(PublishTimeoutError):
        await room.publish("late", timeout=0.2)
    await conn.send({"op": "ack", "id": sent[0]["id"], "room": "r", "offset": 1})
    assert (await conn.expect("publish"))["id"] == "m3"  # a slot freed: the next one goes
    assert (await publishes[0]).offset == 1
    for task in publishes:
        task.cancel()
    await client.close()


async def test_retryable_publish_error_is_sent_again_with_the_same_id(fake: FakeRelay) -> None:
    client = Client(fake.url, backoff=FAST)
    conn = await connected(fake, client)
    publishing = asyncio.create_task(client.room("r").publish("x", id="once"))
    first = await conn.expect("publish")
    await conn.send({"op": "error", "code": "unavailable", "message": "redis", "id": "once"})
    again = await conn.expect("publish")
    assert again == first
    await conn.send({"op": "ack", "id": "once", "room": "r", "offset": 9})
    assert (await publishing).offset == 9
    await client.close()


async def test_a_401_gets_one_fresh_token_then_unauthorized_stops(fake: FakeRelay) -> None:
    issued: list[str] = []

    def token() -> str:
        issued.append(f"t{len(issued)}")
        return issued[-1]

    fake.refuse = lambda t: 401 if t in ("t0", "t2", "t3") else None
    client = Client(fake.url, token=token, backoff=FAST)
    starting = asyncio.create_task(client.connect(timeout=5))
    conn = await fake.accept()  # t0 refused, t1 (fresh) accepted
    assert conn.token == "t1" and fake.handshakes == ["t0", "t1"]
    await conn.welcome()
    await starting
    # The network cuts the session; the next token (t2) is refused, and so is the fresh
    # one asked for after that refusal (t3): the client stops instead of looping.
    conn.abort()
    with pytest.raises(UnauthorizedError) as refused:
        await client.room("r").join(timeout=5)
    assert refused.value.status == 401 and fake.handshakes == ["t0", "t1", "t2", "t3"]
    assert client.state is ClientState.CLOSED and client.error is refused.value
    await client.close()


async def test_a_token_fetched_after_token_expired_and_refused_stops(fake: FakeRelay) -> None:
    issued: list[str] = []

    def token() -> str:
        issued.append(f"t{len(issued)}")
        return issued[-1]

    fake.refuse = lambda t: 401 if t != "t0" else None
    client = Client(fake.url, token=token, backoff=SLOW)
    conn = await connected(fake, client)
    await conn.send({"op": "reconnect", "reason": "token_expired"})
    await conn.close(4001)
    with pytest.raises(UnauthorizedError):
        await client.room("r").join(timeout=5)
    assert fake.handshakes == ["t0", "t1"]  # t1 was the fresh token: refused, stop
    await client.close()


async def test_a_fixed_token_refused_stops_at_once(fake: FakeRelay) -> None:
    fake.refuse = lambda t: 401
    client = Client([fake.url, fake.url], token="fixed", backoff=FAST)
    with pytest.raises(UnauthorizedError):
        await client.connect(timeout=5)
    assert fake.handshakes == ["fixed"]
    await client.close()


async def test_origin_refusal_stops_with_handshake_error(fake: FakeRelay) -> None:
    fake.refuse = lambda t: 403
    client = Client(fake.url, backoff=FAST)
    with pytest.raises(HandshakeError) as refused:
        await client.connect(timeout=5)
    assert refused.value.status == 403 and not isinstance(refused.value, UnauthorizedError)
    await client.close()


async def test_token_expired_reconnects_at_once_with_a_new_token(fake: FakeRelay) -> None:
    tokens = iter(["first", "second"])
    client = Client(fake.url, token=lambda: next(tokens), backoff=SLOW)
    conn, room = await joined_room(fake, client)
    await conn.send({"op": "event", "room": "match:1", "offset": 1, "data": 1})
    assert (await room.receive(5)).offset == 1  # type: ignore[union-attr]
    await conn.send({"op": "reconnect", "reason": "token_expired"})
    await conn.close(4001)
    second = await fake.accept(timeout=5)  # SLOW backoff would take 60 s
    assert second.token == "second"
    await second.welcome()
    join = await second.join_ok(offset=1, epoch="e1", recovered=True)
    assert join["since"] == {"epoch": "e1", "offset": 1}
    await client.close()


async def test_token_is_refreshed_before_it_expires(fake: FakeRelay) -> None:
    issued: list[str] = []

    async def token() -> str:  # an async source works too
        issued.append(jwt_with_exp(time.time() + 1.0, tag=str(len(issued))))
        return issued[-1]

    changes: list[StateChange] = []
    client = Client(fake.url, token=token, backoff=SLOW, on_state=changes.append)
    conn = await connected(fake, client)
    # Halfway through the token's life the client fetches the next one and moves to a
    # new connection itself, before the server would cut it at `exp`.
    assert await conn.closed(timeout=3) == 1000
    second = await fake.accept(timeout=3)
    assert second.token == issued[1] != issued[0]
    await second.welcome()
    assert len(issued) == 2
    disconnects = [c for c in changes if isinstance(c, Disconnected)]
    assert disconnects[0].code == 1000 and disconnects[0].will_reconnect
    await client.close()


async def test_server_disconnect_4003_stops_without_reconnecting(fake: FakeRelay) -> None:
    changes: list[StateChange] = []
    client = Client([fake.url, fake.url], backoff=FAST, on_state=changes.append)
    conn = await connected(fake, client)
    room = client.room("r")
    publishing = asyncio.create_task(room.publish("x", timeout=None))
    await conn.expect("publish")
    await conn.send({"op": "disconnect", "reason": "banned", "reconnect": False})
    await conn.close(4003, "disconnected")
    with pytest.raises(DisconnectedError) as stopped:
        await publishing
    assert stopped.value.reason == "banned" and stopped.value.code == 4003
    assert client.state is ClientState.CLOSED
    assert client._task is not None and client._task.done()  # no loop left to reconnect
    assert fake.pending() == 0 and len(fake.handshakes) == 1
    assert isinstance(changes[-1], Disconnected) and not changes[-1].will_reconnect
    with pytest.raises(DisconnectedError):
        await room.join()
    await client.close()


async def test_presence_call_and_presence_changes(fake: FakeRelay) -> None:
    client = Client(fake.url, backoff=FAST)
    conn, room = await joined_room(fake, client, "lobby")
    asking = asyncio.create_task(room.presence())
    request = await conn.expect("presence")
    assert request["room"] == "lobby" and request["ref"]
    member = {"sub": "p1", "conn": "c1", "node": "a", "info": {"name": "Ann"}}
    await conn.send({"op": "members", "room": "lobby", "count": 1, "members": [member],
                     "ref": request["ref"]})  # fmt: skip
    members = await asking
    assert members.count == 1 and members.members == (Member("p1", "c1", "a", {"name": "Ann"}),)

    asking = asyncio.create_task(room.presence())
    request = await conn.expect("presence")
    await conn.send({"op": "members", "room": "lobby", "count": 5000, "ref": request["ref"]})
    assert (await asking).members is None  # counts only, over the server's listing limit

    asking = asyncio.create_task(client.room("quiet").presence())
    request = await conn.expect("presence")
    await conn.send({"op": "error", "code": "bad_request", "message": "no presence",
                     "ref": request["ref"], "room": "quiet"})  # fmt: skip
    with pytest.raises(BadRequestError):
        await asking

    await conn.send({"op": "presence", "room": "lobby", "joins": [member], "leaves": []})
    assert await room.receive(5) == PresenceChange(
        "lobby", (Member("p1", "c1", "a", {"name": "Ann"}),), ()
    )
    await client.close()


async def test_presence_request_cut_by_a_reconnect_is_sent_again(fake: FakeRelay) -> None:
    client = Client(fake.url, backoff=FAST)
    conn = await connected(fake, client)
    asking = asyncio.create_task(client.room("lobby").presence())
    await conn.expect("presence")
    conn.abort()
    second = await fake.accept()
    await second.welcome()
    request = await second.expect("presence")
    await second.send({"op": "members", "room": "lobby", "count": 0, "members": [],
                       "ref": request["ref"]})  # fmt: skip
    assert (await asking).count == 0
    await client.close()


async def test_removed_by_the_server_ends_the_stream_and_is_not_rejoined(fake: FakeRelay) -> None:
    client = Client(fake.url, backoff=FAST)
    conn, room = await joined_room(fake, client)
    await conn.send({"op": "left", "room": "match:1", "reason": "removed"})
    assert await room.receive(5) == Removed("match:1", "removed")
    assert [m async for m in room] == []  # the stream ended
    assert room.state is RoomState.IDLE
    conn.abort()
    second = await fake.accept()
    await second.welcome()
    await room_publish_roundtrip(client, second)  # no join came first
    await client.close()


async def test_leave_waits_for_left_and_ends_the_stream(fake: FakeRelay) -> None:
    client = Client(fake.url, backoff=FAST)
    conn, room = await joined_room(fake, client)
    leaving = asyncio.create_task(room.leave())
    request = await conn.expect("leave")
    assert not leaving.done()
    await conn.send({"op": "left", "room": "match:1", "ref": request["ref"]})
    await leaving
    assert [m async for m in room] == []
    await client.close()


async def test_join_before_connecting_is_sent_on_connect_and_close_fails_waiters(
    fake: FakeRelay,
) -> None:
    changes: list[StateChange] = []
    client = Client(fake.url, backoff=FAST, on_state=changes.append)
    room = client.room("r")
    joining = asyncio.create_task(room.join(timeout=5))
    await asyncio.sleep(0)
    starting = asyncio.create_task(client.connect())
    conn = await fake.accept()
    await conn.welcome("n1")
    await starting
    await conn.join_ok()
    await joining
    assert any(isinstance(c, Connected) and c.node == "n1" for c in changes)
    receiving = asyncio.create_task(room.receive())
    publishing = asyncio.create_task(room.publish(1, timeout=None))
    await conn.expect("publish")
    await client.close()
    with pytest.raises(ClientClosedError):
        await publishing
    with pytest.raises(RoomClosedError):
        await receiving


async def test_a_join_cut_by_a_reconnect_is_sent_again_and_resolves(fake: FakeRelay) -> None:
    client = Client([fake.url, fake.url], backoff=FAST)
    conn = await connected(fake, client)
    joining = asyncio.create_task(client.room("match:9").join())
    await conn.expect("join")
    conn.abort()  # before the server answered
    second = await fake.accept()
    await second.welcome()
    join = await second.join_ok(offset=12, epoch="e5")
    assert "since" not in join
    joined = await joining
    assert (joined.offset, joined.epoch) == (12, "e5")
    await client.close()
