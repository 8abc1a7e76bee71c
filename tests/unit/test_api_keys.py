"""Who may call the server API (relay.api.keys): keys, rotation, api-claim JWTs, off."""

from __future__ import annotations

import time

import jwt
import pytest

from relay import auth
from relay.api.keys import ApiAuth, ApiRefused
from relay.config import Settings

pytestmark = pytest.mark.unit

NEW, OLD, SECRET = "n" * 40, "o" * 40, "s" * 40


def refused(api: ApiAuth, headers: dict[str, str]) -> int:
    with pytest.raises(ApiRefused) as exc:
        api.check(headers)
    return exc.value.status


def test_every_configured_key_is_accepted_and_nothing_else() -> None:
    api = ApiAuth.from_settings(Settings(api_keys=f"{NEW},{OLD}", auth="none"))  # type: ignore[arg-type]
    api.check({"x-api-key": NEW})
    api.check({"x-api-key": OLD})
    assert refused(api, {}) == 401
    assert refused(api, {"x-api-key": NEW[:-1]}) == 401
    assert refused(api, {"x-api-key": NEW + "x"}) == 401
    assert refused(api, {"authorization": f"Bearer {NEW}"}) == 401


def test_api_is_off_without_keys_unless_embedded_and_open() -> None:
    off = ApiAuth.from_settings(Settings(redis_urls="redis://r:6379", auth="none"))  # type: ignore[arg-type]
    assert refused(off, {"x-api-key": NEW}) == 404
    embedded_open = ApiAuth.from_settings(Settings(auth="none"))
    embedded_open.check({})
    embedded_jwt = ApiAuth.from_settings(Settings(auth="jwt", jwt_secret=SECRET))  # type: ignore[arg-type]
    assert refused(embedded_jwt, {}) == 401


def test_a_jwt_needs_the_api_claim_and_a_valid_signature() -> None:
    api = ApiAuth.from_settings(Settings(auth="jwt", jwt_secret=SECRET))  # type: ignore[arg-type]
    backend = auth.mint(SECRET, subject="matchmaker", ttl=60, api=True)
    api.check({"authorization": f"Bearer {backend}"})
    player = auth.mint(SECRET, subject="p1", join=["*"], ttl=60)
    assert refused(api, {"authorization": f"Bearer {player}"}) == 403  # valid, no api claim
    forged = auth.mint("f" * 40, subject="matchmaker", ttl=60, api=True)
    assert refused(api, {"authorization": f"Bearer {forged}"}) == 401
    expired = jwt.encode({"sub": "m", "exp": int(time.time()) - 10, "api": True}, SECRET)
    assert refused(api, {"authorization": f"Bearer {expired}"}) == 401
    assert refused(api, {"authorization": "Bearer not-a-jwt"}) == 401


def test_describe_never_shows_a_key() -> None:
    api = ApiAuth.from_settings(Settings(api_keys=NEW, auth="jwt", jwt_secret=SECRET))  # type: ignore[arg-type]
    text = api.describe()
    assert NEW not in text and SECRET not in text and "1 API key" in text
