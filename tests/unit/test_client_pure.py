"""The Python client's pure parts: token expiry scheduling, backoff, wire parsing, errors."""

from __future__ import annotations

import base64
import json

import pytest

from gamecluster_client import (
    Backoff,
    Event,
    ForbiddenError,
    Members,
    ProtocolError,
    ServerError,
    UnavailableError,
    errors,
    messages,
    tokens,
)
from gamecluster_client.client import _safe

pytestmark = pytest.mark.unit


def jwt(claims: dict[str, object]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJIUzI1NiJ9.{body}.sig"


def test_refresh_is_margin_before_exp_but_never_past_half_of_what_is_left() -> None:
    token = jwt({"exp": 1000})
    assert tokens.expiry(token) == 1000
    assert tokens.refresh_delay(token, margin=10, now=0) == 990
    assert tokens.refresh_delay(token, margin=10, now=996) == 2  # 4 s left: at half
    assert tokens.refresh_delay(token, margin=10, now=2000) == 0  # already expired: now
    assert tokens.refresh_delay(jwt({"sub": "x"}), margin=10) is None
    assert tokens.refresh_delay("not.a-jwt", margin=10) is None
    assert tokens.refresh_delay(None, margin=10) is None


def test_backoff_is_full_jitter_under_a_growing_capped_bound() -> None:
    backoff = Backoff(min_delay=0.1, max_delay=1.0)
    for attempt, bound in [(0, 0.1), (1, 0.2), (3, 0.8), (4, 1.0), (500, 1.0)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= bound for d in delays)
        assert max(delays) > bound / 2 and min(delays) < bound / 2  # spread, not lockstep


def test_frames_split_on_newlines_and_parse_into_typed_messages() -> None:
    frame = '{"op":"event","room":"r","offset":3,"data":null,"ts":1,"from":"p"}\n{"op":"pong"}'
    first, second = messages.decode(frame)
    assert Event.parse(first) == Event("r", None, 3, 1, "p")
    assert second == {"op": "pong"}
    assert Members.parse({"op": "members", "room": "r", "count": 9}).members is None
    with pytest.raises(ProtocolError, match="not JSON"):
        messages.decode("{")
    with pytest.raises(ProtocolError, match="integer or null 'offset'"):
        Event.parse({"op": "event", "room": "r", "offset": 1.5})
    assert "\n" not in messages.encode({"op": "publish", "data": "a\nb"})


def test_error_codes_map_to_typed_exceptions() -> None:
    refused = errors.server_error(
        {"op": "error", "code": "forbidden", "message": "no", "room": "r"}
    )
    assert isinstance(refused, ForbiddenError) and refused.room == "r"
    assert str(refused) == "forbidden: no" and not refused.retryable
    assert isinstance(errors.server_error({"code": "unavailable"}), UnavailableError)
    assert errors.server_error({"code": "unavailable"}).retryable
    newer = errors.server_error({"code": "from_the_future", "message": "?"})
    assert type(newer) is ServerError and newer.code == "from_the_future"


def test_urls_in_log_lines_carry_no_token_or_password() -> None:
    assert _safe("wss://u:pw@relay.example:8443/ws?token=SECRET") == "wss://relay.example:8443/ws"
    assert _safe("ws://[::1]:80/ws?token=SECRET") == "ws://[::1]:80/ws"
