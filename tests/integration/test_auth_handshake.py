"""Authentication, room permissions and origin checks on real relay processes (issue 8)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gamecluster_client import Connection as RelayClient
from gamecluster_client import ServerError as RelayError
from relay import auth
from support.metrics import metric_value
from support.processes import RedisProcess, RelayProcess

pytestmark = pytest.mark.integration

SECRET = "integration-secret-that-is-32-bytes+"
AUDIENCE = "gamecluster"
ORIGIN = "https://game.example"
SECURED = {
    "RELAY_AUTH": "jwt",
    "RELAY_JWT_SECRET": SECRET,
    "RELAY_JWT_AUDIENCE": AUDIENCE,
    "RELAY_ALLOWED_ORIGINS": ORIGIN,
}


def token(
    sub: str = "alice",
    *,
    join: list[str] | None = None,
    publish: list[str] | None = None,
    ttl: float = 300,
    secret: str = SECRET,
    audience: str | None = AUDIENCE,
) -> str:
    return auth.mint(
        secret,
        subject=sub,
        join=join if join is not None else ["*"],
        publish=publish if publish is not None else ["*"],
        ttl=ttl,
        audience=audience,
    )


async def handshake_status(
    url: str, *, token: str | None = None, origin: str | None = None, query: bool = False
) -> int:
    """The HTTP status the relay answers an upgrade with: 101, or the refusal's status."""
    headers = {"Authorization": f"Bearer {token}"} if token and not query else None
    if token and query:
        url = f"{url}?token={token}"
    try:
        async with connect(url, additional_headers=headers, origin=origin, open_timeout=5) as ws:
            await ws.ping()
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


async def test_bad_credentials_are_refused_at_the_handshake(relay_factory) -> None:
    pod = relay_factory("a", env=SECURED)
    expired = jwt.encode(
        {"sub": "a", "exp": int(time.time()) - 10, "aud": AUDIENCE}, SECRET, algorithm="HS256"
    )
    cases = {
        "no token": (None, None),
        "malformed token": ("this-is-not-a-jwt", None),
        "wrong signature": (token(secret="a-secret-the-relay-does-not-know!!!"), None),
        "expired token": (expired, None),
        "wrong audience": (token(audience="someone-else"), None),
        "no audience": (token(audience=None), None),
        "bad token, bad origin": ("this-is-not-a-jwt", "https://evil.example"),
    }
    for case, (credential, origin) in cases.items():
        status = await handshake_status(pod.url, token=credential, origin=origin)
        assert status == 401, f"{case}: HTTP {status}"
    assert await handshake_status(pod.url, token=token(), origin="https://evil.example") == 403

    # The server keeps serving everyone else, by header, by query string, with its origin.
    assert await handshake_status(pod.url, token=token()) == 101
    assert await handshake_status(pod.url, token=token(), query=True) == 101
    assert await handshake_status(pod.url, token=token(), origin=ORIGIN) == 101
    async with RelayClient(pod.url, token=token()) as client:
        assert (await client.ping())["op"] == "pong"
    assert metric_value(pod.metrics(), "relay_handshake_refusals_total", {"status": "401"}) == 7
    # A refusal is a complete answer, not a server error in the log.
    assert "ERROR" not in pod.tail(500)


async def test_tokens_bound_rooms_for_join_and_publish(relay_factory) -> None:
    pod = relay_factory("a", env=SECURED)
    one = token("alice", join=["match:1"], publish=["match:1"])
    watcher = token("bob", join=["match:1"], publish=[])
    async with RelayClient(pod.url, token=one) as alice, RelayClient(pod.url, token=watcher) as bob:
        for attempt in (alice.join("match:2"), alice.publish("match:2", "x", id="p2")):
            with pytest.raises(RelayError) as refused:
                await attempt
            assert refused.value.code == "forbidden" and refused.value.reply["room"] == "match:2"
        assert (await alice.join("match:1"))["op"] == "joined"
        assert (await bob.join("match:1"))["op"] == "joined"
        with pytest.raises(RelayError) as refused:
            await bob.publish("match:1", "from a watcher", id="b1")
        assert refused.value.code == "forbidden"

        await alice.publish("match:1", {"move": "e4"}, id="a1")
        event = await bob.receive(timeout=5)
        assert (event["op"], event["room"], event["data"]) == ("event", "match:1", {"move": "e4"})
        assert event["from"] == "alice"  # the token's subject, not anything the client said


async def test_events_carry_the_publisher_subject_across_nodes(
    relay_factory, redis: RedisProcess
) -> None:
    env = {k: v for k, v in SECURED.items() if k != "RELAY_ALLOWED_ORIGINS"}
    a = relay_factory("a", redis_urls=[redis.url], env=env)
    b = relay_factory("b", redis_urls=[redis.url], env=env)
    async with (
        RelayClient(a.url, token=token("carol")) as pub,
        RelayClient(b.url, token=token("dan")) as sub,
    ):
        await sub.join("match:9")
        await pub.publish("match:9", 1, id="c1")
        event = await sub.receive(timeout=5)
        assert (event["data"], event["from"]) == (1, "carol")


async def test_open_relay_events_have_no_from_and_the_start_warns(relay_factory) -> None:
    pod = relay_factory("a")  # RELAY_AUTH=none, as every other test runs
    async with RelayClient(pod.url) as client:
        await client.join("r")
        await client.publish("r", 1, id="1")
        assert "from" not in await client.receive(timeout=5)
    assert "authentication is OFF" in pod.tail(200)


# Property: a client never receives an event of a room its token does not allow.

ROOM_NAMES = st.text(alphabet="ab:", min_size=1, max_size=4)
JOIN_PATTERNS = st.lists(st.text(alphabet="ab:*?", min_size=1, max_size=4), max_size=3)


@pytest.fixture
def property_pod(relay_factory) -> RelayProcess:
    return relay_factory("p", env={**SECURED, "RELAY_PUBLISH_BURST": "10000"})


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],  # shrinking against a server takes minutes
)
@given(patterns=JOIN_PATTERNS, rooms=st.sets(ROOM_NAMES, min_size=1, max_size=6))
def test_no_event_of_a_room_the_token_does_not_allow(
    property_pod: RelayProcess, patterns: list[str], rooms: set[str]
) -> None:
    asyncio.run(_only_allowed_events(property_pod.url, patterns, sorted(rooms)))


async def _only_allowed_events(url: str, patterns: list[str], rooms: list[str]) -> None:
    allowed = auth.RoomPatterns(patterns)
    member = token("member", join=[*patterns, "done"], publish=[])
    async with RelayClient(url, token=member) as client, RelayClient(url, token=token()) as pub:
        for room in rooms:
            outcome = await _join_outcome(client, room)
            assert outcome == ("joined" if allowed.allows(room) else "forbidden"), (patterns, room)
        await client.join("done")
        # Every room gets an event, whether the member may see it or not. Ids are fresh per
        # example: the server remembers ids (publish dedupe) across examples.
        for room in rooms:
            await pub.publish(room, room, id=uuid.uuid4().hex)
        await pub.publish("done", None, id=uuid.uuid4().hex)
        seen = []
        while (event := await client.receive(timeout=5))["room"] != "done":
            seen.append(event["room"])
        assert seen == [room for room in rooms if allowed.allows(room)]


async def _join_outcome(client: RelayClient, room: str) -> str:
    try:
        return str((await client.join(room))["op"])
    except RelayError as refused:
        return refused.code


async def test_expired_token_gets_reconnect_then_close_4001(relay_factory) -> None:
    pod = relay_factory("a", env=SECURED)
    short = token("brief", ttl=2)
    expires = jwt.decode(short, options={"verify_signature": False})["exp"]
    async with RelayClient(pod.url, token=short, timeout=10) as client:
        await client.join("match:1")
        assert (await client.ping())["op"] == "pong"
        reconnect = await client.receive(timeout=10)
        assert reconnect == {"op": "reconnect", "reason": "token_expired"}
        assert time.time() >= expires - 0.05  # not before the token ran out
        closed = await client.receive(timeout=10)
        assert closed == {"op": "closed", "code": 4001}
    assert await handshake_status(pod.url, token=short) == 401  # and it cannot come back


async def test_rs256_and_hs256_tokens_both_work(relay_factory) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pod = relay_factory("a", env={**SECURED, "RELAY_JWT_PUBLIC_KEY": public.decode()})
    claims = {"sub": "rsa-user", "exp": int(time.time()) + 60, "aud": AUDIENCE,
              "rooms": {"join": ["r"], "publish": ["r"]}}  # fmt: skip
    rs256 = jwt.encode(claims, key, algorithm="RS256")
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert await handshake_status(pod.url, token=jwt.encode(claims, stranger, "RS256")) == 401
    async with RelayClient(pod.url, token=rs256) as r, RelayClient(pod.url, token=token()) as h:
        await r.join("r")
        await h.publish("r", "from hs256", id="h")
        assert (await r.receive(timeout=5))["from"] == "alice"
        await r.publish("r", "from rs256", id="r")
        assert (await r.receive(timeout=5))["from"] == "rsa-user"


async def test_relay_token_cli_output_is_accepted(relay_factory) -> None:
    pod = relay_factory("a", env=SECURED)
    env = {**os.environ, "RELAY_JWT_SECRET": SECRET, "RELAY_JWT_AUDIENCE": AUDIENCE}
    argv = [sys.executable, "-m", "relay.cli", "token", "--sub", "ops", "--join", "room:*",
            "--publish", "room:1", "room:2", "--ttl", "5m"]  # fmt: skip
    minting = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(minting.communicate(), 30)
    assert minting.returncode == 0, err.decode()
    cli_token = out.decode().strip()
    async with RelayClient(pod.url, token=cli_token) as client:
        await client.join("room:7")
        with pytest.raises(RelayError, match="forbidden"):
            await client.publish("room:7", 1, id="7")
        await client.join("room:2")
        await client.publish("room:2", 2, id="2")
        event = await client.receive(timeout=5)
        assert (event["room"], event["from"]) == ("room:2", "ops")

    # The CLI's own commands carry RELAY_TOKEN, and say why a handshake was refused.
    publish = [sys.executable, "-m", "relay.cli", "publish", "room:1", "1", "--url", pod.url]
    for credential, code, words in [(cli_token, 0, '"op":"ack"'), ("", 1, "HTTP 401")]:
        run = await asyncio.create_subprocess_exec(
            *publish,
            env={**env, "RELAY_TOKEN": credential},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(run.communicate(), 30)
        assert run.returncode == code and words in (out + err).decode(), (out, err)


def _serve_exit(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", "serve"],
        env={**base, "RELAY_PORT": "1", **env},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"RELAY_REDIS_URLS": "redis://127.0.0.1:1/0"}, "choose RELAY_AUTH=jwt"),
        ({"RELAY_AUTH": "jwt"}, "RELAY_JWT_SECRET"),
        ({"RELAY_AUTH": "jwt", "RELAY_JWT_SECRET": "short"}, "shorter than 32 bytes"),
    ],
)
def test_unsafe_or_incomplete_auth_settings_refuse_to_start(
    tmp_path: Path, env: dict[str, str], words: str
) -> None:
    result = _serve_exit(tmp_path, env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
