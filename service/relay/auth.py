"""Who may connect, and which rooms a connection may join and publish to (docs/security.md).

A connection is admitted at the HTTP handshake, before the WebSocket exists: its JWT
(`Authorization: Bearer`, or `?token=` for browsers, which cannot set headers on a
WebSocket) is verified, then its Origin header is checked. A refusal is an HTTP 401
(token) or 403 (origin) answer, so an unauthenticated client never holds a socket.

An admitted connection carries an `Identity`: the token's subject, its room patterns
(`rooms.join`, `rooms.publish`: globs, compiled once per connection into one regex each,
so the per-publish check is a single match) and its expiry, at which the session is
told to reconnect (`token_expired`) and closed with 4001.

With `RELAY_AUTH=none` every connection gets `ANONYMOUS`: no subject, every room.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.responses import PlainTextResponse

from relay.config import PublicKey, Settings, load_public_keys

log = logging.getLogger("relay.auth")

HS256: Final = "HS256"
QUERY_PARAMETER: Final = "token"
MAX_PATTERNS: Final = 1000
"""Room patterns one token may carry per op; a longer list is a malformed token."""
MAX_PATTERN_CHARS: Final = 256


class HandshakeRefused(Exception):
    """The upgrade is refused with an HTTP status (401: token, 403: origin)."""

    def __init__(self, status: int, reason: str, *, bearer_error: str | None = None) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.bearer_error = bearer_error

    def response(self) -> PlainTextResponse:
        """The HTTP answer; a 401 says how to authenticate (RFC 6750 section 3)."""
        headers = {}
        if self.status == 401:
            challenge = 'Bearer realm="relay"'
            if self.bearer_error is not None:
                challenge += f', error="{self.bearer_error}"'
            headers["WWW-Authenticate"] = challenge
        return PlainTextResponse(self.reason + "\n", status_code=self.status, headers=headers)


class RoomPatterns:
    """A list of glob patterns on room names, matched case-sensitively.

    `*` matches any run of characters (`:` and `/` included), `?` one character,
    `[abc]` one of a set; everything else matches itself. No pattern: no room.
    """

    __slots__ = ("_regex", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._regex = (
            re.compile("|".join(fnmatch.translate(p) for p in self.patterns))
            if self.patterns
            else None
        )

    def allows(self, room: str) -> bool:
        return self._regex is not None and self._regex.match(room) is not None

    def __repr__(self) -> str:
        return f"RoomPatterns({list(self.patterns)!r})"


ANY_ROOM: Final = RoomPatterns(["*"])


@dataclass(frozen=True, slots=True)
class Identity:
    """What one admitted connection may do."""

    subject: str | None
    """The token's `sub`: publish dedupe identity, sent to others as the event's `from`."""
    join: RoomPatterns
    publish: RoomPatterns
    expires: float | None
    """The token's `exp`, seconds since the Unix epoch; None when auth is off."""
    info: Any = None
    """The token's `info` claim (shown to others in presence rooms); only from the token."""

    def may_join(self, room: str) -> bool:
        return self.join.allows(room)

    def may_publish(self, room: str) -> bool:
        return self.publish.allows(room)

    def on_expiry(self, callback: Callable[[], None]) -> asyncio.TimerHandle | None:
        """Call `callback` on the running loop when the token expires (cancel the handle
        when the connection ends first). None when the identity never expires."""
        if self.expires is None:
            return None
        delay = max(0.0, self.expires - time.time())
        return asyncio.get_running_loop().call_later(delay, callback)


ANONYMOUS: Final = Identity(subject=None, join=ANY_ROOM, publish=ANY_ROOM, expires=None)


class Authenticator:
    """Admits or refuses connections at the handshake (see module docstring)."""

    def __init__(
        self,
        *,
        enabled: bool,
        secrets: Sequence[str] = (),
        public_keys: Sequence[PublicKey] = (),
        audience: str | None = None,
        issuer: str | None = None,
        allowed_origins: Iterable[str] = (),
    ) -> None:
        if enabled and not secrets and not public_keys:
            raise ValueError("token verification needs a secret or a public key")
        self.enabled = enabled
        self._keys: dict[str, list[Any]] = {}
        if secrets:
            self._keys[HS256] = [secret.encode() for secret in secrets]
        for key in public_keys:
            algorithm = "RS256" if isinstance(key, rsa.RSAPublicKey) else "ES256"
            self._keys.setdefault(algorithm, []).append(key)
        self._audience = audience
        self._issuer = issuer
        self._origins = frozenset(allowed_origins)
        self._required = (
            ["sub", "exp"] + (["aud"] if audience else []) + (["iss"] if issuer else [])
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        pem = settings.jwt_public_key
        return cls(
            enabled=settings.auth == "jwt",
            secrets=[secret.get_secret_value() for secret in settings.jwt_secret],
            public_keys=load_public_keys(pem) if pem else (),
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            allowed_origins=settings.allowed_origins,
        )

    @property
    def algorithms(self) -> list[str]:
        return sorted(self._keys) if self.enabled else []

    def announce(self) -> None:
        """Log at start how connections are admitted; loudly when anyone may connect."""
        origins = ", ".join(sorted(self._origins)) if self._origins else "any"
        if not self.enabled:
            log.warning(
                "authentication is OFF (RELAY_AUTH=none): anyone who can reach this relay "
                "can read and publish in every room; allowed origins: %s",
                origins,
            )
            return
        log.info(
            "authentication: JWT (%s), audience %s, issuer %s; allowed origins: %s",
            ", ".join(self.algorithms),
            self._audience or "none",
            self._issuer or "any",
            origins,
        )

    def admit(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Identity:
        """The identity of a connection asking to upgrade, or HandshakeRefused."""
        identity = self.verify(token_from(headers, query)) if self.enabled else ANONYMOUS
        origin = headers.get("origin")
        if self._origins and origin is not None and origin.rstrip("/").lower() not in self._origins:
            raise HandshakeRefused(403, f"origin {origin[:200]!r} is not allowed")
        return identity

    def verify(self, token: str | None) -> Identity:
        """Check a token's signature and claims; HandshakeRefused(401) says what is wrong."""
        if not token:
            raise HandshakeRefused(401, "missing token: send Authorization: Bearer <JWT>")
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError as exc:
            raise _invalid(f"malformed token: {exc}") from exc
        keys = self._keys.get(algorithm) if isinstance(algorithm, str) else None
        if not keys or not isinstance(algorithm, str):
            raise _invalid(f"algorithm {str(algorithm)[:16]!r} not accepted here")
        claims: dict[str, Any] | None = None
        failure: jwt.InvalidTokenError | None = None
        for key in keys:  # several during a rotation; only a bad signature tries the next
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[algorithm],
                    audience=self._audience,
                    issuer=self._issuer,
                    options={"require": self._required},
                )
                break
            except jwt.InvalidSignatureError as exc:
                failure = exc
            except jwt.ExpiredSignatureError as exc:
                raise _invalid("token expired") from exc
            except jwt.InvalidTokenError as exc:
                raise _invalid(f"invalid token: {exc}") from exc
        if claims is None:
            raise _invalid("invalid token: signature verification failed") from failure
        return _identity(claims)


def _invalid(reason: str) -> HandshakeRefused:
    return HandshakeRefused(401, reason, bearer_error="invalid_token")


def _identity(claims: Mapping[str, Any]) -> Identity:
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject:
        raise _invalid("invalid token: 'sub' must be a non-empty string")
    rooms = claims.get("rooms", {})
    if not isinstance(rooms, dict):
        raise _invalid("invalid token: 'rooms' must be an object with 'join' and 'publish' lists")
    return Identity(
        subject=subject,
        join=RoomPatterns(_patterns(rooms, "join")),
        publish=RoomPatterns(_patterns(rooms, "publish")),
        expires=float(claims["exp"]),
        info=claims.get("info"),
    )


def _patterns(rooms: Mapping[str, Any], op: str) -> list[str]:
    patterns = rooms.get(op, [])
    if (
        not isinstance(patterns, list)
        or len(patterns) > MAX_PATTERNS
        or not all(isinstance(p, str) and 0 < len(p) <= MAX_PATTERN_CHARS for p in patterns)
    ):
        raise _invalid(
            f"invalid token: 'rooms.{op}' must be a list of at most {MAX_PATTERNS} room "
            f"patterns of 1 to {MAX_PATTERN_CHARS} characters"
        )
    return patterns


def token_from(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The bearer token of a handshake: the Authorization header, else `?token=`."""
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            return credentials.strip() or None
        return None
    return query.get(QUERY_PARAMETER) or None


def mint(
    secret: str,
    *,
    subject: str,
    join: Sequence[str] = (),
    publish: Sequence[str] = (),
    ttl: float,
    audience: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
    info: Any = None,
    api: bool = False,
) -> str:
    """An HS256 token for `relay token` and tests (`api`: may call the server API)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": subject,
        "iat": issued,
        "exp": issued + max(1, round(ttl)),
        "rooms": {"join": list(join), "publish": list(publish)},
    }
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    if info is not None:
        claims["info"] = info
    if api:
        claims["api"] = True
    return jwt.encode(claims, secret, algorithm=HS256)


_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in `90`, `45s`, `30m`, `1h`, `1h30m` or `7d`; ValueError otherwise."""
    text = text.strip()
    if text.isdigit():
        seconds = int(text)
    elif text and _DURATION.sub("", text) == "":
        seconds = sum(int(n) * _UNITS[unit] for n, unit in _DURATION.findall(text))
    else:
        raise ValueError(f"{text!r} is not a duration like 90, 45s, 30m, 1h30m or 7d")
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be positive")
    return float(seconds)
