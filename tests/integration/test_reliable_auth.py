"""The resuming client with auth: fresh tokens across `token_expired`, no retry loop on 401."""

from __future__ import annotations

import time

import jwt
import pytest
from websockets.exceptions import InvalidStatus

from relay.reliable import ReliableClient

pytestmark = pytest.mark.integration

SECRET = "reliable-client-secret-of-32-bytes+"
SECURED = {"RELAY_AUTH": "jwt", "RELAY_JWT_SECRET": SECRET}


def token(lifetime: float) -> str:
    claims = {
        "sub": "player",
        "exp": int(time.time() + lifetime),
        "rooms": {"join": ["match:*"], "publish": ["match:*"]},
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_expired_session_reconnects_with_a_fresh_token_and_resumes(relay_factory) -> None:
    pod = relay_factory("a", env=SECURED)
    issued: list[float] = []

    def fresh_token() -> str:
        issued.append(time.monotonic())
        return token(2 if len(issued) == 1 else 3600)  # the first one expires soon

    client = ReliableClient([pod.url], token=fresh_token)
    publisher = ReliableClient([pod.url], token=lambda: token(3600))
    await client.start()
    await publisher.start()
    try:
        await client.join("match:1")
        await publisher.publish("match:1", "before")
        assert (await client.receive())["data"] == "before"
        while len(issued) < 2:  # the server ends the first session at its token's expiry
            await publisher.publish("match:1", "while expiring")
            assert (await client.receive())["data"] == "while expiring"
        await publisher.publish("match:1", "after")
        received = [await client.receive()]
        while received[-1].get("data") != "after":
            received.append(await client.receive())
        assert all(m["op"] == "event" for m in received)
        assert client.stats.duplicates == client.stats.gaps == 0
        assert client.stats.connects == 2
    finally:
        await client.close()
        await publisher.close()


async def test_fixed_credentials_refused_stop_the_client(relay_factory) -> None:
    pod = relay_factory("a", env=SECURED)
    client = ReliableClient([pod.url], token="not-a-token")
    with pytest.raises(InvalidStatus) as refused:
        await client.start()
    assert refused.value.response.status_code == 401
    await client.close()
