"""relay.auth and its settings: token verification, room patterns, origins (issue 8)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import cache

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from relay import auth, protocol
from relay.auth import Authenticator, HandshakeRefused, Identity, RoomPatterns
from relay.config import ConfigError, load_settings

pytestmark = pytest.mark.unit

SECRET = "unit-test-secret-of-at-least-32-bytes!"
OTHER_SECRET = "another-secret-also-32-bytes-long-ok"


@cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def claims(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "sub": "alice",
        # Built at collection time (parametrize): valid for longer than any test run.
        "exp": int(time.time()) + 3 * 3600,
        "rooms": {"join": ["match:1"], "publish": ["match:1"]},
    }
    return {k: v for k, v in (base | overrides).items() if v is not None}


def refusal(verify: Callable[[], object]) -> HandshakeRefused:
    with pytest.raises(HandshakeRefused) as refused:
        verify()
    return refused.value


# Room patterns, against an oracle that shares no code with them.


def glob_oracle(pattern: str, room: str) -> bool:
    """`*` any run, `?` one character, anything else itself (no character sets)."""
    if not pattern:
        return not room
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        return any(glob_oracle(rest, room[i:]) for i in range(len(room) + 1))
    return bool(room) and (head == "?" or head == room[0]) and glob_oracle(rest, room[1:])


PATTERNS = st.lists(st.text(alphabet="ab:*?", min_size=1, max_size=6), max_size=4)
ROOMS = st.text(alphabet="ab:", min_size=1, max_size=6)


@given(PATTERNS, ROOMS)
def test_room_patterns_match_like_globs(patterns: list[str], room: str) -> None:
    expected = any(glob_oracle(p, room) for p in patterns)
    assert RoomPatterns(patterns).allows(room) is expected


@given(PATTERNS, PATTERNS, st.lists(ROOMS, min_size=1, max_size=8))
def test_a_verified_token_allows_exactly_its_rooms(
    join: list[str], publish: list[str], rooms: list[str]
) -> None:
    token = auth.mint(SECRET, subject="p", join=join, publish=publish, ttl=60)
    identity = Authenticator(enabled=True, secrets=[SECRET]).verify(token)
    for room in rooms:
        assert identity.may_join(room) is any(glob_oracle(p, room) for p in join)
        assert identity.may_publish(room) is any(glob_oracle(p, room) for p in publish)


@pytest.mark.parametrize(
    ("patterns", "room", "allowed"),
    [
        (["match:1"], "match:1", True),
        (["match:1"], "match:10", False),
        (["match:1"], "Match:1", False),
        (["match:*"], "match:42/chat", True),
        (["match:?"], "match:12", False),
        (["lobby", "match:[12]"], "match:2", True),
        (["*"], "anything/at:all", True),
        ([], "lobby", False),
    ],
)
def test_room_pattern_examples(patterns: list[str], room: str, allowed: bool) -> None:
    assert RoomPatterns(patterns).allows(room) is allowed


# Token verification.


def test_a_good_token_gives_its_subject_rooms_and_expiry() -> None:
    exp = int(time.time()) + 60
    token = jwt.encode(claims(exp=exp), SECRET, algorithm="HS256")
    identity = Authenticator(enabled=True, secrets=[SECRET]).verify(token)
    assert identity.subject == "alice" and identity.expires == exp
    assert identity.may_join("match:1") and not identity.may_join("match:2")


@pytest.mark.parametrize(
    ("token", "words"),
    [
        (None, "missing token"),
        ("", "missing token"),
        ("not-a-jwt", "malformed"),
        ("a.b.c", "malformed"),
        (jwt.encode(claims(), OTHER_SECRET, algorithm="HS256"), "signature"),
        (jwt.encode(claims(exp=int(time.time()) - 5), SECRET, algorithm="HS256"), "expired"),
        (jwt.encode(claims(exp=None), SECRET, algorithm="HS256"), "exp"),
        (jwt.encode(claims(sub=None), SECRET, algorithm="HS256"), "sub"),
        (jwt.encode(claims(sub=""), SECRET, algorithm="HS256"), "sub"),
        (jwt.encode(claims(rooms=["match:1"]), SECRET, algorithm="HS256"), "rooms"),
        (jwt.encode(claims(rooms={"join": "match:1"}), SECRET, algorithm="HS256"), "rooms.join"),
        (jwt.encode(claims(rooms={"publish": [""]}), SECRET, algorithm="HS256"), "rooms.publish"),
        (jwt.encode(claims(), None, algorithm="none"), "algorithm 'none'"),
        (jwt.encode(claims(), SECRET.encode() * 2, algorithm="HS512"), "algorithm 'HS512'"),
    ],
    ids=lambda v: str(v)[:20],
)
def test_bad_tokens_are_refused_with_401(token: str | None, words: str) -> None:
    refused = refusal(lambda: Authenticator(enabled=True, secrets=[SECRET]).verify(token))
    assert refused.status == 401
    assert words in refused.reason


def test_audience_and_issuer_are_enforced_when_configured() -> None:
    strict = Authenticator(enabled=True, secrets=[SECRET], audience="gc", issuer="https://idp")
    good = jwt.encode(claims(aud="gc", iss="https://idp"), SECRET, algorithm="HS256")
    assert strict.verify(good).subject == "alice"
    for bad in (
        claims(aud="other", iss="https://idp"),
        claims(iss="https://idp"),
        claims(aud="gc"),
    ):
        token = jwt.encode(bad, SECRET, algorithm="HS256")
        assert refusal(lambda t=token: strict.verify(t)).status == 401  # type: ignore[misc]
    # Unconfigured audience: a token meant for another service is not accepted here.
    lax = Authenticator(enabled=True, secrets=[SECRET])
    assert refusal(lambda: lax.verify(good)).status == 401


def test_every_listed_secret_verifies_during_a_rotation() -> None:
    rotating = Authenticator(enabled=True, secrets=[SECRET, OTHER_SECRET])
    for secret in (SECRET, OTHER_SECRET):
        assert rotating.verify(jwt.encode(claims(), secret, algorithm="HS256")).subject == "alice"
    third = "a-third-secret-nobody-configured-here"
    refused = refusal(lambda: rotating.verify(jwt.encode(claims(), third, algorithm="HS256")))
    assert "signature" in refused.reason


def test_rs256_and_es256_verify_with_their_public_keys() -> None:
    keys = Authenticator(enabled=True, public_keys=[rsa_key().public_key(), ec_key().public_key()])
    assert keys.algorithms == ["ES256", "RS256"]
    assert keys.verify(jwt.encode(claims(), rsa_key(), algorithm="RS256")).subject == "alice"
    assert keys.verify(jwt.encode(claims(), ec_key(), algorithm="ES256")).subject == "alice"
    # No secret configured: HS256 is not accepted at all (no key confusion with the PEM).
    hs = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert "algorithm 'HS256'" in refusal(lambda: keys.verify(hs)).reason
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims(), stranger, algorithm="RS256")
    assert "signature" in refusal(lambda: keys.verify(forged)).reason


def test_an_enabled_authenticator_needs_a_key() -> None:
    with pytest.raises(ValueError, match="secret or a public key"):
        Authenticator(enabled=True)


# The handshake: where the token comes from, origins, auth off.


def test_token_from_header_first_then_query() -> None:
    assert auth.token_from({"authorization": "Bearer abc"}, {"token": "q"}) == "abc"
    assert auth.token_from({"authorization": "bearer  abc "}, {}) == "abc"
    assert auth.token_from({}, {"token": "q"}) == "q"
    assert auth.token_from({"authorization": "Basic dXNlcg=="}, {"token": "q"}) is None
    assert auth.token_from({}, {}) is None


def test_origins_are_checked_after_the_token() -> None:
    checker = Authenticator(
        enabled=True, secrets=[SECRET], allowed_origins=["https://game.example"]
    )
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    good = {"authorization": f"Bearer {token}"}
    assert checker.admit(good | {"origin": "https://game.example"}, {}).subject == "alice"
    assert checker.admit(good | {"origin": "HTTPS://Game.Example/"}, {}).subject == "alice"
    assert checker.admit(good, {}).subject == "alice"  # no Origin: not a browser
    assert (
        refusal(lambda: checker.admit(good | {"origin": "https://evil.example"}, {})).status == 403
    )
    assert refusal(lambda: checker.admit({"origin": "https://evil.example"}, {})).status == 401


def test_auth_off_admits_anyone_to_every_room_but_still_checks_origins() -> None:
    open_relay = Authenticator(enabled=False, allowed_origins=["https://game.example"])
    identity = open_relay.admit({}, {})
    assert identity is auth.ANONYMOUS
    assert identity.subject is None and identity.may_join("x") and identity.may_publish("y:z")
    assert refusal(lambda: open_relay.admit({"origin": "https://evil.example"}, {})).status == 403


def test_a_401_response_carries_a_bearer_challenge() -> None:
    response = auth.HandshakeRefused(401, "token expired", bearer_error="invalid_token").response()
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="relay", error="invalid_token"'
    assert auth.HandshakeRefused(403, "origin").response().headers.get("www-authenticate") is None


async def test_on_expiry_fires_when_the_token_expires_and_can_be_cancelled() -> None:
    fired = asyncio.Event()
    soon = Identity("a", auth.ANY_ROOM, auth.ANY_ROOM, expires=time.time() + 0.05)
    handle = soon.on_expiry(fired.set)
    assert handle is not None
    await asyncio.wait_for(fired.wait(), 5)
    assert time.time() >= soon.expires  # type: ignore[operator]
    never = auth.ANONYMOUS.on_expiry(fired.set)
    assert never is None
    cancelled = asyncio.Event()
    later = Identity("a", auth.ANY_ROOM, auth.ANY_ROOM, expires=time.time() + 0.05)
    handle = later.on_expiry(cancelled.set)
    assert handle is not None
    handle.cancel()
    assert handle.cancelled()


def test_mint_and_parse_duration() -> None:
    token = auth.mint(SECRET, subject="ops", join=["a:*"], ttl=90, audience="gc", issuer="me")
    body = jwt.decode(token, SECRET, algorithms=["HS256"], audience="gc", issuer="me")
    assert body["sub"] == "ops" and body["exp"] - body["iat"] == 90
    assert body["rooms"] == {"join": ["a:*"], "publish": []}
    assert [auth.parse_duration(t) for t in ("90", "45s", "30m", "1h30m", "7d")] == [
        90,
        45,
        1800,
        5400,
        604800,
    ]
    for bad in ("", "1x", "h", "0", "-5", "1.5h"):
        with pytest.raises(ValueError, match="duration"):
            auth.parse_duration(bad)


def test_events_carry_from_only_with_a_sender() -> None:
    with_sender = orjson.loads(protocol.event("r", 1, {"x": 1}, 5, "alice"))
    assert with_sender == {"op": "event", "room": "r", "offset": 1, "data": {"x": 1}, "ts": 5,
                           "from": "alice"}  # fmt: skip
    assert "from" not in orjson.loads(protocol.event("r", 1, None, 5))
    assert protocol.CloseCode.TOKEN_EXPIRED == 4001


# Settings.


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "RELAY_AUTH",
        "RELAY_REDIS_URLS",
        "RELAY_JWT_SECRET",
        "RELAY_JWT_PUBLIC_KEY",
        "RELAY_JWT_AUDIENCE",
        "RELAY_JWT_ISSUER",
        "RELAY_ALLOWED_ORIGINS",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_auth_defaults_off_only_without_redis(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.auth is None and not Authenticator.from_settings(settings).enabled
    clean_env.setenv("RELAY_REDIS_URLS", "redis://r:6379/0")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    message = str(refused.value)
    assert "RELAY_AUTH=jwt" in message and "RELAY_AUTH=none" in message and "\n" not in message
    clean_env.setenv("RELAY_AUTH", "none")
    assert load_settings().auth == "none"


def test_jwt_needs_a_key_and_never_prints_the_secret(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RELAY_AUTH", "jwt")
    with pytest.raises(ConfigError, match=r"RELAY_JWT_SECRET .* or RELAY_JWT_PUBLIC_KEY"):
        load_settings()
    clean_env.setenv("RELAY_JWT_SECRET", f"{SECRET},too-short-secret")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "secret #2 is shorter than 32 bytes" in str(refused.value)
    assert "too-short-secret" not in str(refused.value) and SECRET not in str(refused.value)
    clean_env.setenv("RELAY_JWT_SECRET", f" {SECRET} , {OTHER_SECRET} ")
    settings = load_settings()
    assert [s.get_secret_value() for s in settings.jwt_secret] == [SECRET, OTHER_SECRET]
    assert SECRET not in repr(settings)
    assert Authenticator.from_settings(settings).algorithms == ["HS256"]


def test_public_keys_are_checked_at_start(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RELAY_AUTH", "jwt")
    both = pem(rsa_key()) + pem(ec_key())
    clean_env.setenv("RELAY_JWT_PUBLIC_KEY", both.replace("\n", "\\n"))  # one-line env form
    assert Authenticator.from_settings(load_settings()).algorithms == ["ES256", "RS256"]
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    for bad, words in [
        ("not a key", "no PEM block"),
        (pem(small), "got RSA 1024 bits"),
        (pem(ec.generate_private_key(ec.SECP384R1())), "got EC secp384r1"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "not a public key"),
    ]:
        clean_env.setenv("RELAY_JWT_PUBLIC_KEY", bad)
        with pytest.raises(ConfigError) as refused:
            load_settings()
        assert words in str(refused.value) and "\n" not in str(refused.value)


def test_allowed_origins_are_normalised_and_checked(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RELAY_ALLOWED_ORIGINS", "https://Game.Example/, http://localhost:8080")
    assert load_settings().allowed_origins == ("https://game.example", "http://localhost:8080")
    clean_env.setenv("RELAY_ALLOWED_ORIGINS", "game.example")
    with pytest.raises(ConfigError, match=r"RELAY_ALLOWED_ORIGINS='game\.example'"):
        load_settings()
