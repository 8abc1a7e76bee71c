"""The Python client (clients/python) against real relay processes on one real Redis:
resume across pods after a SIGKILL, typed refusals, token expiry (issue 16)."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

from gamecluster_client import (
    Backoff,
    Client,
    Event,
    ForbiddenError,
    Lost,
    Recovered,
    Room,
    RoomMessage,
    UnauthorizedError,
)

pytestmark = pytest.mark.integration

SECRET = "python-client-secret-of-32-bytes+"
SECURED = {"RELAY_AUTH": "jwt", "RELAY_JWT_SECRET": SECRET}
EVENTS = 400


def token(lifetime: float, sub: str = "player") -> str:
    claims = {
        "sub": sub,
        "exp": int(time.time() + lifetime),
        "rooms": {"join": ["match:*"], "publish": ["match:*"]},
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def read_events(room: Room, until: int, seen: list[RoomMessage]) -> list[Event]:
    """Every message until the event with data == until; the events among them."""
    while True:
        message = await room.receive(30)
        seen.append(message)
        if isinstance(message, Event) and message.data == until:
            return [m for m in seen if isinstance(m, Event)]


async def test_sigkill_of_the_clients_pod_resumes_on_the_other_exactly_once(
    redis, relay_factory
) -> None:
    pods = {n: relay_factory(n, redis_urls=[redis.url]) for n in "ab"}
    fast = Backoff(min_delay=0.05, max_delay=0.5)
    player = Client([pods["a"].url, pods["b"].url], backoff=fast)
    publisher = Client([pods["b"].url], backoff=fast)
    await player.connect()
    await publisher.connect()
    try:
        assert player.node == "a"
        room = player.room("match:kill")
        joined = await room.join()
        assert joined.recovered is None and joined.epoch is not None
        seen: list[RoomMessage] = []
        publish = publisher.room("match:kill").publish
        for n in range(EVENTS // 2):
            await publish(n)
        await read_events(room, EVENTS // 2 - 1, seen)
        # SIGKILL the player's pod (off the event loop: the client keeps running).
        await asyncio.to_thread(pods["a"].kill)
        for n in range(EVENTS // 2, EVENTS):
            await publish(n)  # stored while the player is away or resuming
        events = await read_events(room, EVENTS - 1, seen)
        assert player.node == "b"
        assert [e.data for e in events] == list(range(EVENTS))  # each once, in order
        assert [e.offset for e in events] == list(range(1, EVENTS + 1))
        recovered = [m for m in seen if isinstance(m, Recovered)]
        assert len(recovered) == 1 and recovered[0].epoch == joined.epoch
        assert not [m for m in seen if isinstance(m, Lost)]
        assert player.stats.duplicates == player.stats.gaps == player.stats.not_recovered == 0
        assert player.stats.connects == 2
    finally:
        await player.close()
        await publisher.close()


async def test_unacked_publishes_survive_the_publishers_pod_dying(redis, relay_factory) -> None:
    pods = {n: relay_factory(n, redis_urls=[redis.url]) for n in "ab"}
    fast = Backoff(min_delay=0.05, max_delay=0.5)
    publisher = Client([pods["a"].url, pods["b"].url], backoff=fast, publish_timeout=30)
    reader = Client([pods["b"].url], backoff=fast)
    await publisher.connect()
    await reader.connect()
    try:
        room = reader.room("match:acks")
        await room.join()
        sending = [
            asyncio.ensure_future(publisher.room("match:acks").publish(n, id=f"id-{n}"))
            for n in range(200)
        ]
        await asyncio.to_thread(pods["a"].kill)  # some acked, some sent, some not yet
        acks = await asyncio.gather(*sending)
        assert sorted(a.offset or 0 for a in acks) == list(range(1, 201))  # stored once each
        events = await read_events(room, 199, [])
        assert sorted(e.data for e in events) == list(range(200))
        assert len(events) == 200
    finally:
        await publisher.close()
        await reader.close()


async def test_forbidden_join_raises_and_the_connection_stays_usable(relay_factory) -> None:
    pod = relay_factory("a", env=SECURED)
    async with Client(pod.url, token=lambda: token(3600)) as client:
        with pytest.raises(ForbiddenError) as refused:
            await client.room("lobby:secret").join()
        assert refused.value.code == "forbidden" and refused.value.room == "lobby:secret"
        joined = await client.room("match:1").join()
        assert joined.room == "match:1"


async def test_a_refused_fixed_token_raises_unauthorized(relay_factory) -> None:
    pod = relay_factory("a", env=SECURED)
    client = Client(pod.url, token="not-a-token")
    with pytest.raises(UnauthorizedError) as refused:
        await client.connect()
    assert refused.value.status == 401
    await client.close()


@pytest.mark.parametrize("margin", [10.0, None], ids=["refresh-before-exp", "after-4001"])
async def test_expiring_token_is_replaced_and_the_room_resumes(
    relay_factory, margin: float | None
) -> None:
    pod = relay_factory("a", env=SECURED)
    issued: list[float] = []

    def fresh_token() -> str:
        issued.append(time.monotonic())
        return token(2 if len(issued) == 1 else 3600)  # the first one expires soon

    client = Client(pod.url, token=fresh_token, token_refresh_margin=margin)
    publisher = Client(pod.url, token=lambda: token(3600, "publisher"))
    await client.connect()
    await publisher.connect()
    try:
        room = client.room("match:1")
        await room.join()
        publish = publisher.room("match:1").publish
        sent = 0
        seen: list[RoomMessage] = []
        while len(issued) < 2:  # until the first token's session ended
            await publish(sent)
            await read_events(room, sent, seen)
            sent += 1
        await publish(sent)
        events = await read_events(room, sent, seen)
        assert [e.data for e in events] == list(range(sent + 1))
        assert client.stats.duplicates == client.stats.gaps == 0
        assert client.stats.connects == 2
        assert not [m for m in seen if isinstance(m, Lost)]
    finally:
        await client.close()
        await publisher.close()
