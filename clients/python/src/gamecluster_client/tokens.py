"""Where tokens come from and when to fetch the next one.

The relay has no in-band refresh: a connection lives at most as long as its token
(docs/protocol.md). A callable token source is asked for a token before every
connection, and again shortly before the current token's `exp`, so the client can move to
a fresh connection before the server cuts the old one.
"""

from __future__ import annotations

import base64
import inspect
import json
import time
from collections.abc import Awaitable, Callable

TokenSource = Callable[[], str | Awaitable[str]]
"""A function (sync or async) that returns a fresh JWT; called per connection."""


async def fetch(source: str | TokenSource | None) -> str | None:
    if source is None or isinstance(source, str):
        return source
    token = source()
    return await token if inspect.isawaitable(token) else token


def expiry(token: str | None) -> float | None:
    """The token's `exp` (seconds since the Unix epoch), read without verifying the
    signature (the server verifies; the client only schedules). None when absent."""
    if not token or token.count(".") != 2:
        return None
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def refresh_delay(token: str | None, margin: float, now: float | None = None) -> float | None:
    """Seconds from now until the next token should be fetched: `margin` seconds before
    `exp`, but never later than halfway through what is left (a short-lived token still
    gets its refresh in time). None for a token without `exp`."""
    exp = expiry(token)
    if exp is None:
        return None
    left = exp - (time.time() if now is None else now)
    return max(0.0, left - min(margin, left / 2))
